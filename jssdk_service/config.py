"""Configuration: read once, from the environment and an optional TOML file, into immutable objects.

Every problem is a `ConfigError` naming the field (`JSSDK_PORT`, `accounts[1].allowed_hosts`) and
what is wrong with its value. Secrets are never in the file itself: an account names the
environment variable (`secret_env`) or the file (`secret_file`) that holds its AppSecret.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from jssdk_service.errors import ConfigError, HostNotAllowed, InvalidShare, InvalidURL
from jssdk_service.pageurl import normalise_domain, parse_page_url
from jssdk_service.share import ShareFields, SharePolicy, ShareRule, check_link_domain, share_fields_from_mapping

TokenAPI = Literal["stable", "classic"]
LogFormat = Literal["json", "text"]

DEFAULT_API_BASES = ("https://api.weixin.qq.com", "https://api2.weixin.qq.com")
DEFAULT_JS_API_LIST = ("updateAppMessageShareData", "updateTimelineShareData")
_APP_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class Secret:
    """A secret value whose repr and str never show it; `reveal()` is the one way in."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Account:
    """One official account: its credentials, JS secure domains and share rules."""

    name: str
    app_id: str
    secret: Secret
    allowed_hosts: tuple[str, ...]
    token_api: TokenAPI = "stable"  # noqa: S105 (an API name, not a secret)
    js_api_list: tuple[str, ...] = DEFAULT_JS_API_LIST
    open_tag_list: tuple[str, ...] = ()
    share: SharePolicy = field(default_factory=SharePolicy)


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything the service reads at start-up."""

    accounts: tuple[Account, ...]
    api_bases: tuple[str, ...] = DEFAULT_API_BASES
    cache_url: str = "memory://"
    host: str = "127.0.0.1"
    port: int = 8080
    admin_token: Secret | None = None
    log_level: str = "INFO"
    log_format: LogFormat = "json"
    access_log: bool = False
    redis_password: Secret | None = None
    lock_lease: float = 75.0
    upstream_concurrency: int = 16
    request_wait: float = 5.0
    drain_seconds: float = 5.0
    keepalive_timeout: float = 75.0
    metrics_dir: str | None = None
    _by_key: dict[str, Account] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Names first, then appIds: a key is looked up in one step whatever the number of accounts.
        index = {account.app_id: account for account in self.accounts}
        index.update({account.name: account for account in self.accounts})
        object.__setattr__(self, "_by_key", index)

    def account(self, key: str | None) -> Account | None:
        """The account named `key` (its name or appId), or the only one when `key` is empty."""
        if not key:
            return self.accounts[0] if len(self.accounts) == 1 else None
        return self._by_key.get(key)


def load_settings(env: Mapping[str, str], config_path: str | None = None) -> Settings:
    """Settings from `env` and, when given (or `JSSDK_CONFIG` is set), a TOML file."""
    path = config_path or env.get("JSSDK_CONFIG") or None
    document = _read_toml(path) if path else {}
    service = _table(document, "service", "service")
    unknown = sorted(set(document) - {"service", "accounts"})
    if unknown:
        raise ConfigError(unknown[0], "unknown section (expected [service] and [[accounts]])")

    def pick(env_key: str, file_key: str) -> Any:
        return env[env_key] if env.get(env_key) else service.get(file_key)

    if "accounts" in document:
        if env.get("JSSDK_APP_ID"):
            raise ConfigError("JSSDK_APP_ID", "is set while the config file defines [[accounts]]; use one or the other")
        raw_accounts = document["accounts"]
        if not isinstance(raw_accounts, list) or not raw_accounts:
            raise ConfigError("accounts", "must be a non-empty array of tables ([[accounts]])")
        accounts = tuple(_account_from_table(entry, f"accounts[{i}]", env) for i, entry in enumerate(raw_accounts))
    else:
        accounts = (_account_from_env(env),)
    _check_unique(accounts)

    bases = pick("JSSDK_WECHAT_API_BASE", "wechat_api_base")
    return Settings(
        accounts=accounts,
        api_bases=_api_bases(bases, "JSSDK_WECHAT_API_BASE") if bases else DEFAULT_API_BASES,
        cache_url=_cache_url(pick("JSSDK_CACHE_URL", "cache_url") or "memory://"),
        host=str(pick("JSSDK_HOST", "host") or "127.0.0.1"),
        port=parse_port(pick("JSSDK_PORT", "port") or 8080, "JSSDK_PORT"),
        admin_token=Secret(env["JSSDK_ADMIN_TOKEN"]) if env.get("JSSDK_ADMIN_TOKEN") else None,
        log_level=_log_level(pick("JSSDK_LOG_LEVEL", "log_level") or "INFO"),
        log_format=_log_format(pick("JSSDK_LOG_FORMAT", "log_format") or "json"),
        access_log=_flag(pick("JSSDK_ACCESS_LOG", "access_log") or False, "JSSDK_ACCESS_LOG"),
        redis_password=Secret(env["JSSDK_REDIS_PASSWORD"]) if env.get("JSSDK_REDIS_PASSWORD") else None,
        lock_lease=_seconds(pick("JSSDK_LOCK_LEASE", "lock_lease") or 75.0, "JSSDK_LOCK_LEASE"),
        upstream_concurrency=_count(
            pick("JSSDK_UPSTREAM_CONCURRENCY", "upstream_concurrency") or 16, "JSSDK_UPSTREAM_CONCURRENCY", 1024
        ),
        request_wait=_seconds(pick("JSSDK_REQUEST_WAIT", "request_wait") or 5.0, "JSSDK_REQUEST_WAIT"),
        drain_seconds=_seconds(
            pick("JSSDK_DRAIN_SECONDS", "drain_seconds") or 5.0, "JSSDK_DRAIN_SECONDS", allow_zero=True
        ),
        keepalive_timeout=_seconds(
            pick("JSSDK_KEEPALIVE_TIMEOUT", "keepalive_timeout") or 75.0, "JSSDK_KEEPALIVE_TIMEOUT"
        ),
        metrics_dir=str(pick("JSSDK_METRICS_DIR", "metrics_dir") or "") or None,
    )


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError("JSSDK_CONFIG", f"cannot read {path!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("JSSDK_CONFIG", f"{path!r} is not valid TOML: {exc}") from None


def _table(parent: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = parent.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(where, "must be a table")
    return value


_ENV_FIELDS = {
    "name": "JSSDK_APP_ID",
    "app_id": "JSSDK_APP_ID",
    "secret": "JSSDK_APP_SECRET",
    "secret_file": "JSSDK_APP_SECRET_FILE",
    "allowed_hosts": "JSSDK_ALLOWED_HOSTS",
    "token_api": "JSSDK_TOKEN_API",
    "js_api_list": "JSSDK_JS_API_LIST",
    "open_tag_list": "JSSDK_OPEN_TAG_LIST",
    "share": "JSSDK_SHARE",
}
_SHARE_ENV = {"title": "JSSDK_SHARE_TITLE", "desc": "JSSDK_SHARE_DESC", "imgUrl": "JSSDK_SHARE_IMG_URL",
              "link": "JSSDK_SHARE_LINK"}  # fmt: skip
_ACCOUNT_KEYS = {"name", "app_id", "secret_env", "secret_file", "allowed_hosts", "token_api", "js_api_list",
                 "open_tag_list", "share"}  # fmt: skip


def _account_from_env(env: Mapping[str, str]) -> Account:
    """The single account of an environment-only setup."""
    app_id = env.get("JSSDK_APP_ID", "")
    if not app_id:
        raise ConfigError("JSSDK_APP_ID", "is required (or give a config file with [[accounts]])")
    raw: dict[str, Any] = {
        "app_id": app_id,
        "allowed_hosts": env.get("JSSDK_ALLOWED_HOSTS", ""),
        "token_api": env.get("JSSDK_TOKEN_API") or "stable",
        "js_api_list": env.get("JSSDK_JS_API_LIST") or list(DEFAULT_JS_API_LIST),
        "open_tag_list": env.get("JSSDK_OPEN_TAG_LIST") or [],
        "share": {key: env[var] for key, var in _SHARE_ENV.items() if env.get(var)},
    }
    secret = _secret(env.get("JSSDK_APP_SECRET"), env.get("JSSDK_APP_SECRET_FILE"), _ENV_FIELDS.__getitem__)
    return _build_account(raw, secret, _ENV_FIELDS.__getitem__)


def _account_from_table(entry: Any, where: str, env: Mapping[str, str]) -> Account:
    """One `[[accounts]]` table; fields are named `accounts[i].field` in errors."""
    if not isinstance(entry, dict):
        raise ConfigError(where, "must be a table")

    def name_of(key: str) -> str:
        return f"{where}.{key}"

    unknown = sorted(set(entry) - _ACCOUNT_KEYS)
    if "secret" in unknown:
        raise ConfigError(name_of("secret"), "secrets never go in the file; use secret_env or secret_file")
    if unknown:
        raise ConfigError(name_of(unknown[0]), "unknown field")
    secret_env = entry.get("secret_env")
    if secret_env is not None and not env.get(str(secret_env)):
        raise ConfigError(name_of("secret_env"), f"environment variable {secret_env!r} is not set")
    secret = _secret(env.get(str(secret_env)) if secret_env else None, entry.get("secret_file"), name_of)
    return _build_account(entry, secret, name_of)


def _build_account(raw: Mapping[str, Any], secret: Secret, name_of: Callable[[str], str]) -> Account:
    app_id = raw.get("app_id")
    if not isinstance(app_id, str) or not _APP_ID.fullmatch(app_id):
        raise ConfigError(name_of("app_id"), f"{app_id!r} is not an appId" if app_id else "is required")
    name = raw.get("name", app_id)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(name_of("name"), f"{name!r} is not a valid name (letters, digits, '.', '_', '-')")
    token_api = raw.get("token_api", "stable")
    if token_api not in ("stable", "classic"):
        raise ConfigError(name_of("token_api"), f"has value {token_api!r}; expected 'stable' or 'classic'")
    hosts = _allowed_hosts(raw.get("allowed_hosts"), name_of("allowed_hosts"))
    return Account(
        name=name,
        app_id=app_id,
        secret=secret,
        allowed_hosts=hosts,
        token_api=cast(TokenAPI, token_api),
        js_api_list=_string_list(
            raw.get("js_api_list", list(DEFAULT_JS_API_LIST)), name_of("js_api_list"), allow_empty=False
        ),
        open_tag_list=_string_list(raw.get("open_tag_list", []), name_of("open_tag_list")),
        share=_share_policy(_table(raw, "share", name_of("share")), name_of("share"), hosts),
    )


def _secret(value: str | None, file: Any, name_of: Callable[[str], str]) -> Secret:
    if file:
        try:
            value = Path(str(file)).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(name_of("secret_file"), f"cannot read {str(file)!r}: {exc.strerror}") from None
        if not value:
            raise ConfigError(name_of("secret_file"), f"{str(file)!r} is empty")
    if not value:
        raise ConfigError(name_of("secret"), "an AppSecret is required (set it, or point to a file that holds it)")
    return Secret(value)


def _allowed_hosts(value: Any, field_name: str) -> tuple[str, ...]:
    items = _string_list(value, field_name, allow_empty=False)
    hosts = []
    for item in items:
        host = normalise_domain(item)
        try:
            parsed = parse_page_url(f"http://{host}/")
        except InvalidURL:
            parsed = None
        if parsed is None or parsed.host != host or parsed.port is not None:
            raise ConfigError(field_name, f"{item!r} is not a host name (no scheme, port or path)")
        hosts.append(host)
    return tuple(hosts)


def _string_list(value: Any, field_name: str, *, allow_empty: bool = True) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        items = [item.strip() for item in value if item.strip()]
    else:
        raise ConfigError(field_name, "must be a list of strings (or a comma-separated string)")
    if not items and not allow_empty:
        raise ConfigError(field_name, "is required and must not be empty")
    return tuple(items)


def _share_policy(table: dict[str, Any], where: str, hosts: Sequence[str]) -> SharePolicy:
    rules_raw = table.get("rules", [])
    if not isinstance(rules_raw, list):
        raise ConfigError(f"{where}.rules", "must be an array of tables ([[...share.rules]])")
    defaults = _share_fields({k: v for k, v in table.items() if k != "rules"}, where, hosts)
    rules = []
    for i, rule in enumerate(rules_raw):
        rule_where = f"{where}.rules[{i}]"
        if not isinstance(rule, dict):
            raise ConfigError(rule_where, "must be a table")
        pattern = rule.get("path")
        if not isinstance(pattern, str) or not pattern.startswith("/"):
            raise ConfigError(f"{rule_where}.path", "is required and must start with '/'")
        fields = _share_fields({k: v for k, v in rule.items() if k != "path"}, rule_where, hosts)
        rules.append(ShareRule(pattern, fields))
    return SharePolicy(defaults=defaults, rules=tuple(rules))


def _share_fields(data: dict[str, Any], where: str, hosts: Sequence[str]) -> ShareFields:
    try:
        fields = share_fields_from_mapping(data, where=where)
        check_link_domain(fields, hosts, where=where)
    except (InvalidShare, HostNotAllowed, InvalidURL) as exc:
        raise ConfigError(where, exc.message) from None
    return fields


def _check_unique(accounts: Sequence[Account]) -> None:
    seen: dict[str, int] = {}
    for i, account in enumerate(accounts):
        for key in {account.name, account.app_id}:
            if key in seen and seen[key] != i:
                raise ConfigError(f"accounts[{i}]", f"name or app_id {key!r} is already used by accounts[{seen[key]}]")
            seen[key] = i


def _api_bases(value: Any, field_name: str) -> tuple[str, ...]:
    bases = _string_list(value, field_name, allow_empty=False)
    for base in bases:
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(field_name, f"{base!r} is not an http(s) base URL")
    return tuple(base.rstrip("/") for base in bases)


def _cache_url(value: Any) -> str:
    text = str(value)
    if urlsplit(text).scheme not in ("memory", "redis", "rediss"):
        raise ConfigError("JSSDK_CACHE_URL", f"has value {text!r}; expected memory:// or redis://host:port/db")
    return text


def _log_format(value: Any) -> LogFormat:
    text = str(value).lower()
    if text not in ("json", "text"):
        raise ConfigError("JSSDK_LOG_FORMAT", f"has value {value!r}; expected json or text")
    return cast(LogFormat, text)


def _flag(value: Any, field_name: str) -> bool:
    text = str(value).lower()
    if text not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ConfigError(field_name, f"has value {value!r}; expected true or false")
    return text in ("1", "true", "yes", "on")


def _log_level(value: Any) -> str:
    level = str(value).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError("JSSDK_LOG_LEVEL", f"has value {value!r}; expected DEBUG, INFO, WARNING or ERROR")
    return level


def _seconds(value: Any, field_name: str, *, allow_zero: bool = False) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    above_zero = seconds >= 0 if allow_zero else seconds > 0
    if not (above_zero and seconds <= 3600):
        lowest = "from 0" if allow_zero else "between 0"
        raise ConfigError(field_name, f"has value {value!r}; expected seconds {lowest} and 3600")
    return seconds


def _count(value: Any, field_name: str, upper: int) -> int:
    text = str(value)
    if not text.isdigit() or not 0 < int(text) <= upper:
        raise ConfigError(field_name, f"has value {text!r}; expected a whole number from 1 to {upper}")
    return int(text)


def parse_port(value: Any, field_name: str) -> int:
    """A TCP port number; `field_name` is named in the error."""
    text = str(value)
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(field_name, f"has value {text!r}; not a valid port (1-65535)")
    return int(text)
