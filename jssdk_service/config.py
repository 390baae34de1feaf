"""Configuration: read once, from the environment and an optional TOML file, into immutable objects.

The file and the environment are merged into one document, which msgspec converts into the frozen
tables below: they declare every field's type, limits and default, once. A variable `JSSDK_<KEY>`
wins over the file's `[service]` key, and a command-line flag wins over both. What the tables cannot
say is checked here: JS secure domains, share rules, unique names and appIds, secrets.

Every problem is a `ConfigError` naming the field (`JSSDK_PORT`, `accounts[1].allowed_hosts`) and
what is wrong with its value. Secrets are never in the file itself: an account names the
environment variable (`secret_env`) or the file (`secret_file`) that holds its AppSecret, and a
webhook (`url_env`, `url_file`) its URL, which carries its key.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

import msgspec
import msgspec.inspect
from msgspec import Meta

from jssdk_service.errors import ConfigError, HostNotAllowed, InvalidShare, InvalidURL
from jssdk_service.msgcrypt import check_aes_key
from jssdk_service.pageurl import normalise_domain, parse_page_url
from jssdk_service.share import ShareFields, SharePolicy, ShareRule, check_link_domain, share_fields

TokenAPI = Literal["stable", "classic"]
AccountKind = Literal["official", "wecom"]
TokenSourceKind = Literal["secret", "external"]
LogFormat = Literal["json", "text"]
WebhookKind = Literal["json", "wecom_robot"]
NotifyEvent = Literal["failed", "recovered", "quota"]
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = ("failed", "recovered", "quota")
T = TypeVar("T")
FieldPath = tuple[str | int, ...]  # where a value is in the document: ("accounts", 1, "app_id")

Seconds = Annotated[float, Meta(gt=0, le=3600)]
HttpBase = Annotated[str, Meta(pattern=r"(?i)^https?://[^/?#]+")]
NonEmpty = Annotated[tuple[str, ...], Meta(min_length=1)]  # like every list: an array, or "a,b"


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


class Table(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a TOML table or a set of variables may say: an unknown key is an error. (A subclass
    says `frozen=True, kw_only=True` again: msgspec does not pass `kw_only` on, nor mypy `frozen`.)"""


class ServiceTable(Table, frozen=True, kw_only=True):
    """`[service]`; each key also has a variable, `JSSDK_<KEY>`."""

    api_bases: Annotated[tuple[HttpBase, ...], Meta(min_length=1)] = msgspec.field(
        default=("https://api.weixin.qq.com", "https://api2.weixin.qq.com"), name="wechat_api_base"
    )
    wecom_api_bases: Annotated[tuple[HttpBase, ...], Meta(min_length=1)] = msgspec.field(
        default=("https://qyapi.weixin.qq.com",), name="wecom_api_base"
    )
    cache_url: Annotated[str, Meta(pattern=r"(?i)^(memory|rediss?):")] = "memory://"
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=1, le=65535)] = 8080
    log_level: Annotated[str, Meta(pattern=r"(?i)^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$")] = "INFO"
    log_format: LogFormat = "json"
    access_log: bool = False
    # Longer than a whole refresh may take: token and ticket calls, and both again after a refused
    # token, each within its 15 s deadline.
    lock_lease: Seconds = 75.0
    upstream_concurrency: Annotated[int, Meta(ge=1, le=1024)] = 16
    request_wait: Seconds = 5.0
    drain_seconds: Annotated[float, Meta(ge=0, le=3600)] = 5.0
    keepalive_timeout: Seconds = 75.0
    metrics_dir: Annotated[str, Meta(min_length=1)] | None = None


# The variable of each [service] key: it wins over the file (and a flag wins over it).
_SERVICE_VARIABLES = {"wechat_api_base": "JSSDK_WECHAT_API_BASE", "wecom_api_base": "JSSDK_WECOM_API_BASE",
                      "cache_url": "JSSDK_CACHE_URL", "host": "JSSDK_HOST",
                      "port": "JSSDK_PORT", "log_level": "JSSDK_LOG_LEVEL", "log_format": "JSSDK_LOG_FORMAT",
                      "access_log": "JSSDK_ACCESS_LOG", "lock_lease": "JSSDK_LOCK_LEASE",
                      "upstream_concurrency": "JSSDK_UPSTREAM_CONCURRENCY", "request_wait": "JSSDK_REQUEST_WAIT",
                      "drain_seconds": "JSSDK_DRAIN_SECONDS", "keepalive_timeout": "JSSDK_KEEPALIVE_TIMEOUT",
                      "metrics_dir": "JSSDK_METRICS_DIR"}  # fmt: skip


class ShareFieldsTable(Table, frozen=True, kw_only=True):
    """Share fields, any of them; `share.share_fields` checks their URLs."""

    title: str | None = None
    desc: str | None = None
    link: str | None = None
    img_url: str | None = msgspec.field(default=None, name="imgUrl")


class ShareRuleTable(ShareFieldsTable, frozen=True, kw_only=True):
    """`[[accounts.share.rules]]`: the share fields of the pages whose path matches `path`."""

    path: Annotated[str, Meta(pattern="^/")]


class ShareTable(ShareFieldsTable, frozen=True, kw_only=True):
    """`[accounts.share]`: the account's default share fields, and its rules."""

    rules: tuple[ShareRuleTable, ...] = ()


Identifier = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class AccountTable(Table, frozen=True, kw_only=True):
    """One `[[accounts]]` table, or the single account of the environment.

    `kind` says which fields it needs: an official account's `app_id`, or a WeCom app's `corp_id`
    and `agent_id`; `token_source` says where its access_token comes from: fetched with the secret,
    or read from a server that owns it (`token_url` or `token_redis_key`). `_account` checks the
    combinations.
    """

    kind: AccountKind = "official"
    app_id: Identifier | None = None
    corp_id: Identifier | None = None
    agent_id: Annotated[int, Meta(ge=0, le=2**63 - 1)] | Annotated[str, Meta(pattern=r"^[0-9]{1,19}$")] | None = None
    name: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] | None = None  # None: the app_id (or corp:agent)
    secret_env: str | None = None
    secret_file: str | None = None
    token_source: TokenSourceKind = "secret"  # noqa: S105 (a source's name, not a secret)
    token_url: HttpBase | None = None
    token_url_auth_env: str | None = None
    token_url_auth_file: str | None = None
    token_redis_key: Annotated[str, Meta(min_length=1, max_length=512)] | None = None
    token_redis_url: Annotated[str, Meta(pattern=r"(?i)^rediss?://")] | None = None
    allowed_hosts: NonEmpty
    token_api: TokenAPI | None = None  # official accounts with a secret; None: "stable"
    js_api_list: NonEmpty | None = None  # None: the share APIs of the kind
    open_tag_list: tuple[str, ...] = ()
    share: ShareTable = ShareTable()


class PlatformTable(Table, frozen=True, kw_only=True):
    """One `[[platforms]]` table: a third-party platform (open platform component) and its secrets'
    whereabouts. Its authorizers are learned at run time, from WeChat's pushes and the admin API."""

    component_appid: Identifier
    name: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] | None = None  # None: the component_appid
    secret_env: str | None = None
    secret_file: str | None = None
    token_env: str | None = None
    token_file: str | None = None
    aes_key_env: str | None = None
    aes_key_file: str | None = None
    previous_aes_key_env: str | None = None
    previous_aes_key_file: str | None = None
    web_domains: NonEmpty
    js_api_list: NonEmpty | None = None  # None: the official accounts' share APIs
    open_tag_list: tuple[str, ...] = ()


class WebhookTable(Table, frozen=True, kw_only=True):
    """One `[[webhooks]]` table: where notifications go. The URL is a secret (a WeCom robot's carries its
    key), so the table names the variable or the file that holds it, as an account does its AppSecret."""

    kind: WebhookKind = "json"
    name: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] | None = None  # None: kind@host
    url_env: str | None = None
    url_file: str | None = None
    events: Annotated[tuple[NotifyEvent, ...], Meta(min_length=1)] = NOTIFY_EVENTS
    # A WeCom group robot takes 20 messages a minute; beyond this, notices are folded into a summary.
    per_minute: Annotated[int, Meta(ge=1, le=600)] = 20


class Document(Table, frozen=True, kw_only=True):
    """The whole configuration, the environment merged in: what msgspec converts in one go."""

    service: ServiceTable = ServiceTable()
    accounts: tuple[AccountTable, ...] = ()
    platforms: tuple[PlatformTable, ...] = ()
    webhooks: tuple[WebhookTable, ...] = ()


# The defaults of Settings are the table's own.
_SERVICE = ServiceTable()
# The APIs a page gets permission for when the account does not list them: the share APIs of its client.
SHARE_APIS: dict[AccountKind, tuple[str, ...]] = {
    "official": ("updateAppMessageShareData", "updateTimelineShareData"),
    "wecom": ("onMenuShareAppMessage", "onMenuShareWechat", "onMenuShareTimeline"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenURL:
    """An external token source over HTTP: GET `url` (with `Authorization: Bearer <auth>` when set)."""

    url: str
    auth: Secret | None = None

    def __repr__(self) -> str:
        return f"TokenURL({self.where!r})"

    @property
    def where(self) -> str:
        """The URL for logs and errors: no credentials, no query."""
        return _USERINFO.sub("//", self.url.partition("?")[0])


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenRedisKey:
    """An external token source in Redis: a key another system writes."""

    key: str
    redis_url: str | None = None
    """None: the service's own Redis (`JSSDK_CACHE_URL`)."""

    def __repr__(self) -> str:
        redis = None if self.redis_url is None else _USERINFO.sub("//", self.redis_url)
        return f"TokenRedisKey(key={self.key!r}, redis_url={redis!r})"

    @property
    def where(self) -> str:
        return f"Redis key {self.key!r}"


TokenSource = TokenURL | TokenRedisKey


@dataclass(frozen=True, slots=True, kw_only=True)
class Account:
    """One account the service signs for: an official account or a WeCom app, and its token's source.

    `app_id` is the appId that `wx.config` names: the official account's, or the WeCom corp's
    corp_id. `key` is how the service knows the account (its cache keys, its metrics): the appId,
    or `corp_id:agent_id` for a WeCom app. With `source` set the access_token is read from a
    server that owns it, and no AppSecret is held.
    """

    name: str
    app_id: str
    secret: Secret | None
    allowed_hosts: tuple[str, ...]
    kind: AccountKind = "official"
    agent_id: str | None = None
    source: TokenSource | None = None
    token_api: TokenAPI = "stable"  # noqa: S105 (an API name, not a secret)
    js_api_list: tuple[str, ...] = SHARE_APIS["official"]
    open_tag_list: tuple[str, ...] = ()
    share: SharePolicy = field(default_factory=SharePolicy)
    platform: str | None = None
    """An authorizer's platform (its component_appid): its token comes from the platform's refresh token."""
    key: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", self.app_id if self.agent_id is None else f"{self.app_id}:{self.agent_id}")

    @property
    def wecom(self) -> bool:
        return self.kind == "wecom"

    def reveal_secret(self) -> str:
        """The AppSecret (or the WeCom app's secret); an external account holds none."""
        if self.secret is None:
            raise ValueError(f"account {self.name!r} reads its token from {self.source!r} and holds no secret")
        return self.secret.reveal()

    def describe(self) -> str:
        """The account for a person (check-config, start-up logs): name, kind, token source; never a secret."""
        what = f"WeCom app {self.app_id} agent {self.agent_id}" if self.wecom else f"official account {self.app_id}"
        source = self.source
        if self.platform is not None:
            return f"{self.name}: official account {self.app_id} authorized to platform {self.platform}"
        if isinstance(source, TokenURL):
            how = f"token read from {source.where}" + (" with a bearer token" if source.auth is not None else "")
        elif isinstance(source, TokenRedisKey):
            redis = "the service's Redis" if source.redis_url is None else _USERINFO.sub("//", source.redis_url)
            how = f"token read from {source.where} in {redis.partition('?')[0]}"
        else:
            api = "gettoken" if self.wecom else {"stable": "stable_token", "classic": "cgi-bin/token"}[self.token_api]
            how = f"token fetched with its secret ({api})"
        return f"{self.name}: {what}, {how}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Platform:
    """A third-party platform: its component_appid, secrets, and what its authorizers sign with.

    The secret (component_appsecret) fetches the component_access_token; the message token and the
    EncodingAESKey (and the one before it, while WeChat's pushes may still use it) check and open
    WeChat's pushes. Its authorizers' pages are on its `web_domains` (网页开发域名).
    """

    component_appid: str
    name: str
    secret: Secret
    token: Secret
    aes_key: Secret
    previous_aes_key: Secret | None = None
    web_domains: tuple[str, ...]
    js_api_list: tuple[str, ...] = SHARE_APIS["official"]
    open_tag_list: tuple[str, ...] = ()

    def authorizer(self, app_id: str) -> Account:
        """The account of an official account that authorized this platform: it signs with its own appId."""
        return Account(name=app_id, app_id=app_id, secret=None, allowed_hosts=self.web_domains,
                       js_api_list=self.js_api_list, open_tag_list=self.open_tag_list,
                       platform=self.component_appid)  # fmt: skip

    def describe(self) -> str:
        """The platform for a person (check-config, start-up logs); never a secret."""
        rotation = ", with the previous EncodingAESKey" if self.previous_aes_key is not None else ""
        return (f"{self.name}: third-party platform {self.component_appid} for pages on "
                f"{', '.join(self.web_domains)}{rotation}")  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class Webhook:
    """Where notifications go (`notify.py`): a JSON webhook or a WeCom group robot, the events it takes,
    and how many messages a minute. The URL is a secret: repr shows its host only."""

    name: str
    kind: WebhookKind
    url: Secret
    events: tuple[NotifyEvent, ...] = NOTIFY_EVENTS
    per_minute: int = 20

    def __repr__(self) -> str:
        return (f"Webhook(name={self.name!r}, kind={self.kind!r}, host={self.host!r}, events={self.events!r}, "
                f"per_minute={self.per_minute})")  # fmt: skip

    @property
    def host(self) -> str:
        """The URL's host, for logs and errors: no path, no query (the robot's key is there)."""
        return urlsplit(self.url.reveal()).hostname or ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything the service reads at start-up."""

    accounts: tuple[Account, ...]
    api_bases: tuple[str, ...] = _SERVICE.api_bases
    wecom_api_bases: tuple[str, ...] = _SERVICE.wecom_api_bases
    cache_url: str = _SERVICE.cache_url
    host: str = _SERVICE.host
    port: int = _SERVICE.port
    admin_token: Secret | None = None
    log_level: str = _SERVICE.log_level
    log_format: LogFormat = _SERVICE.log_format
    access_log: bool = _SERVICE.access_log
    redis_password: Secret | None = None
    lock_lease: float = _SERVICE.lock_lease
    upstream_concurrency: int = _SERVICE.upstream_concurrency
    request_wait: float = _SERVICE.request_wait
    drain_seconds: float = _SERVICE.drain_seconds
    keepalive_timeout: float = _SERVICE.keepalive_timeout
    metrics_dir: str | None = _SERVICE.metrics_dir
    platforms: tuple[Platform, ...] = ()
    webhooks: tuple[Webhook, ...] = ()
    _by_key: dict[str, Account] = field(init=False, repr=False, compare=False)
    _by_corp: dict[str, tuple[Account, ...]] = field(init=False, repr=False, compare=False)
    _by_platform: dict[str, Platform] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Names first, then keys (appIds, corp_id:agent_id): one step whatever the number of accounts.
        index = {account.key: account for account in self.accounts}
        index.update({account.name: account for account in self.accounts})
        object.__setattr__(self, "_by_key", index)
        corps: dict[str, list[Account]] = {}
        for account in self.accounts:
            if account.wecom:
                corps.setdefault(account.app_id, []).append(account)
        object.__setattr__(self, "_by_corp", {corp: tuple(apps) for corp, apps in corps.items()})
        object.__setattr__(self, "_by_platform", {p.component_appid: p for p in self.platforms})

    def account(self, key: str | None) -> Account | None:
        """The account named `key` (its name, appId or corp_id:agent_id), or the only one when `key` is empty."""
        if not key:
            return self.accounts[0] if len(self.accounts) == 1 else None
        return self._by_key.get(key)

    def platform(self, component_appid: str) -> Platform | None:
        return self._by_platform.get(component_appid)

    def corp_apps(self, corp_id: str) -> tuple[Account, ...]:
        """The WeCom apps of the corp `corp_id`, in configured order: what a WeCom page's wx.config appId names."""
        return self._by_corp.get(corp_id, ())


def load_settings(
    env: Mapping[str, str], config_path: str | None = None, *, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Settings from `env` and, when given (or `JSSDK_CONFIG` is set), a TOML file.

    `overrides` are `[service]` values from the command line (`{"port": 9000}`; None is no value):
    they win over the environment, which wins over the file.
    """
    path = config_path or env.get("JSSDK_CONFIG") or None
    document = _read_toml(path) if path else {}
    unknown = sorted(set(document) - {"service", "accounts", "platforms", "webhooks"})
    if unknown:
        raise ConfigError(
            unknown[0], "unknown section (expected [service], [[accounts]], [[platforms]] and [[webhooks]])"
        )
    file_service = document.get("service", {})
    if not isinstance(file_service, dict):
        raise ConfigError("service", "must be a table")
    service, service_names = layered(ServiceTable, _SERVICE_VARIABLES, env, file_service, overrides or {})

    # A file of platforms alone needs no account; the environment's single account joins them when set.
    from_env = "accounts" not in document and ("platforms" not in document or bool(env.get("JSSDK_APP_ID")))
    if "accounts" not in document and not from_env:
        entries: Any = []
    elif from_env:
        entries = [_env_account(env)]
    elif env.get("JSSDK_APP_ID"):
        raise ConfigError("JSSDK_APP_ID", "is set while the config file defines [[accounts]]; use one or the other")
    else:
        entries = document["accounts"]
        if isinstance(entries, list):
            entries = [_file_account(entry, i) for i, entry in enumerate(entries)]

    def name_of(path: FieldPath) -> str:
        if path[0] == "service" and len(path) > 1:
            return service_names.get(str(path[1]), _dotted(path))
        if from_env and path[0] == "accounts" and len(path) > 2:
            return _ENV_NAMES.get(str(path[2]), _dotted(path))
        return _dotted(path)

    platform_entries = document.get("platforms", [])
    if isinstance(platform_entries, list):
        platform_entries = [_split_lists(e, PlatformTable) if isinstance(e, dict) else e for e in platform_entries]
    webhook_entries = document.get("webhooks", [])
    if isinstance(webhook_entries, list):
        webhook_entries = [_file_webhook(entry, i) for i, entry in enumerate(webhook_entries)]
    tables = convert({"service": service, "accounts": entries, "platforms": platform_entries,
                      "webhooks": webhook_entries}, Document, name_of)  # fmt: skip
    shared_redis = tables.service.cache_url.lower().startswith("redis")
    accounts = tuple(_account(table, i, env, name_of, shared_redis) for i, table in enumerate(tables.accounts))
    platforms = tuple(_platform(table, i, env) for i, table in enumerate(tables.platforms))
    _check_unique(accounts, platforms)
    webhooks = tuple(_webhook(table, env, functools.partial(_indexed, "webhooks", i))
                     for i, table in enumerate(tables.webhooks)) + _env_webhook(env)  # fmt: skip
    values = msgspec.structs.asdict(tables.service)  # Settings has every field of ServiceTable
    values.update(
        api_bases=tuple(base.rstrip("/") for base in tables.service.api_bases),
        wecom_api_bases=tuple(base.rstrip("/") for base in tables.service.wecom_api_bases),
        log_level=tables.service.log_level.upper(),
    )
    return Settings(
        accounts=accounts,
        platforms=platforms,
        webhooks=webhooks,
        admin_token=Secret(env["JSSDK_ADMIN_TOKEN"]) if env.get("JSSDK_ADMIN_TOKEN") else None,
        redis_password=Secret(env["JSSDK_REDIS_PASSWORD"]) if env.get("JSSDK_REDIS_PASSWORD") else None,
        **values,
    )


def layered(
    table: type[msgspec.Struct],
    variables: Mapping[str, str],
    env: Mapping[str, str],
    file: Mapping[str, Any],
    flags: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, str]]:
    """The values for `table`, keyed as in the file, each from the first layer that sets it: `flags`
    (a None sets nothing), the key's variable in `env` (an empty one sets nothing), `file`.

    Also each key's name for errors: its flag (`--port`, `--sandbox-delay`) if a flag set it, else
    its variable (whichever layer set it, as the README names the settings by their variables).
    `variables` has a variable for every key of `table`.
    """
    names = {info.encode_name: variables[info.encode_name] for info in msgspec.structs.fields(table)}
    data = {**file, **{key: env[variable] for key, variable in names.items() if env.get(variable)}}
    for key, value in flags.items():
        if value is not None:
            data[key] = value
            names[key] = "--" + names[key].removeprefix("JSSDK_").lower().replace("_", "-")
    return _split_lists(data, table), names


def convert(data: Mapping[str, Any], table: type[T], name_of: Callable[[FieldPath], str]) -> T:
    """`data` as a `table`, strings (the environment's) made the numbers and flags it declares; a
    value it refuses is a `ConfigError` naming the field `name_of(path)`."""
    try:
        return msgspec.convert(data, table, strict=False)
    except msgspec.ValidationError as exc:
        where = _LOCATION.fullmatch(str(exc))
        assert where is not None  # the pattern matches any text
        path: FieldPath = tuple(int(index) if index else key for key, index in _PART.findall(where["at"] or ""))
        problem = where["problem"].replace("`", "")
        if about_key := _KEY_PROBLEM.fullmatch(problem):
            path, problem = (*path, about_key["key"]), "unknown field" if about_key["unknown"] else "is required"
        else:
            problem = problem[0].lower() + problem[1:]
            value: Any = data
            try:
                for part in path:  # msgspec does not say what it got: find it
                    value = value[part]
            except (KeyError, IndexError, TypeError):
                value = None
            if isinstance(value, str):
                value = _USERINFO.sub("//***@", value)  # a URL's password is not shown
            if problem.startswith("expected") and isinstance(value, str | int | float):
                problem = f"has value {value!r}; {problem}"
        raise ConfigError(name_of(path), problem) from None


_LOCATION = re.compile(r"(?P<problem>.*?)(?: - at `(?:key` in `)?\$(?P<at>[^`]*?)(?:\[\.\.\.\])?`)?", re.DOTALL)
# A URL's user and password: up to its last "@" before any query or fragment (a password may hold "/").
_USERINFO = re.compile(r"//[^?#]*@")
_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_KEY_PROBLEM = re.compile(r"Object (?:(?P<unknown>contains unknown)|missing required) field (?P<key>.+)")


def _dotted(path: FieldPath) -> str:
    """`("accounts", 1, "app_id")` as `accounts[1].app_id`."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path).removeprefix(".")


@functools.cache
def _list_keys(table: type[msgspec.Struct]) -> frozenset[str]:
    info = msgspec.inspect.type_info(table)
    assert isinstance(info, msgspec.inspect.StructType)
    return frozenset(f.encode_name for f in info.fields if isinstance(f.type, msgspec.inspect.VarTupleType))


def _split_lists(data: dict[str, Any], table: type[msgspec.Struct]) -> dict[str, Any]:
    """`data` with each comma-separated string given for a list of `table` split into its items."""
    lists = _list_keys(table)
    return {
        key: [item.strip() for item in value.split(",") if item.strip()]
        if key in lists and isinstance(value, str)
        else value
        for key, value in data.items()
    }


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError("JSSDK_CONFIG", f"cannot read {path!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("JSSDK_CONFIG", f"{path!r} is not valid TOML: {exc}") from None


# The single account of an environment-only setup: its fields and their variables, and how errors
# name its other fields (the share fields together, the secret by its variable).
_ENV_ACCOUNT = {"app_id": "JSSDK_APP_ID", "secret_file": "JSSDK_APP_SECRET_FILE",
                "allowed_hosts": "JSSDK_ALLOWED_HOSTS", "token_api": "JSSDK_TOKEN_API",
                "js_api_list": "JSSDK_JS_API_LIST", "open_tag_list": "JSSDK_OPEN_TAG_LIST"}  # fmt: skip
_ENV_SHARE = {"title": "JSSDK_SHARE_TITLE", "desc": "JSSDK_SHARE_DESC", "imgUrl": "JSSDK_SHARE_IMG_URL",
              "link": "JSSDK_SHARE_LINK"}  # fmt: skip
_ENV_NAMES = {**_ENV_ACCOUNT, "name": "JSSDK_APP_ID", "secret": "JSSDK_APP_SECRET", "secret_env": "JSSDK_APP_SECRET",
              "share": "JSSDK_SHARE"}  # fmt: skip


def _env_account(env: Mapping[str, str]) -> dict[str, Any]:
    """The environment's single account, as an `[[accounts]]` table would give it."""
    if not env.get("JSSDK_APP_ID"):
        raise ConfigError("JSSDK_APP_ID", "is required (or give a config file with [[accounts]])")
    entry: dict[str, Any] = {key: env[variable] for key, variable in _ENV_ACCOUNT.items() if env.get(variable)}
    entry["share"] = {key: env[variable] for key, variable in _ENV_SHARE.items() if env.get(variable)}
    if env.get("JSSDK_APP_SECRET"):
        entry["secret_env"] = "JSSDK_APP_SECRET"  # noqa: S105 (the variable's name): read as a file account's is
    return _split_lists(entry, AccountTable)


def _file_account(entry: Any, index: int) -> Any:
    """An `[[accounts]]` table, its lists split, for the conversion (which names any other problem)."""
    if not isinstance(entry, dict):
        return entry
    if "secret" in entry:
        raise ConfigError(f"accounts[{index}].secret", "secrets never go in the file; use secret_env or secret_file")
    return _split_lists(entry, AccountTable)


# Which fields each kind and source needs (all of them) and refuses (any of them).
_NEEDS: dict[str, tuple[str, ...]] = {"official": ("app_id",), "wecom": ("corp_id", "agent_id")}
_REFUSES: dict[str, tuple[str, ...]] = {
    "official": ("corp_id", "agent_id"),
    "wecom": ("app_id", "token_api"),
    "secret": ("token_url", "token_url_auth_env", "token_url_auth_file", "token_redis_key", "token_redis_url"),
    "external": ("secret_env", "secret_file", "token_api"),
}


def _account(
    table: AccountTable,
    index: int,
    env: Mapping[str, str],
    name_of: Callable[[FieldPath], str],
    shared_redis: bool,
) -> Account:
    def where(*path: str | int) -> str:
        return name_of(("accounts", index, *path))

    given = {name for name in _FIELD_NAMES if getattr(table, name) is not None}
    for key in _NEEDS[table.kind]:
        if key not in given:
            raise ConfigError(where(key), f'is required for kind = "{table.kind}"')
    for group in (table.kind, table.token_source):
        for key in _REFUSES[group]:
            if key in given:
                setting = "kind" if group == table.kind else "token_source"
                raise ConfigError(where(key), f'is not used with {setting} = "{group}"')
    hosts = _allowed_hosts(table.allowed_hosts, where("allowed_hosts"))
    external = table.token_source == "external"  # noqa: S105 (a source's name)
    app_id = table.app_id or table.corp_id
    assert app_id is not None  # _NEEDS
    agent_id = None if table.agent_id is None else str(table.agent_id)
    key = app_id if agent_id is None else f"{app_id}:{agent_id}"
    return Account(
        name=table.name or key,
        app_id=app_id,
        kind=table.kind,
        agent_id=agent_id,
        secret=None if external else _secret(table, env, where),
        source=_token_source(table, env, where, shared_redis) if external else None,
        allowed_hosts=hosts,
        token_api=table.token_api or "stable",
        js_api_list=table.js_api_list or SHARE_APIS[table.kind],
        open_tag_list=table.open_tag_list,
        share=_share_policy(table.share, where, hosts),
    )


_FIELD_NAMES = tuple(info.name for info in msgspec.structs.fields(AccountTable))


def _token_source(
    table: AccountTable, env: Mapping[str, str], where: Callable[[str], str], shared_redis: bool
) -> TokenSource:
    """Where an external account's access_token is read: exactly one of token_url and token_redis_key."""
    if (table.token_url is None) == (table.token_redis_key is None):
        raise ConfigError(where("token_source"), '"external" needs exactly one of token_url and token_redis_key')
    if table.token_url is not None:
        if table.token_url_auth_env and table.token_url_auth_file:
            raise ConfigError(where("token_url_auth_env"), "give token_url_auth_env or token_url_auth_file, not both")
        auth = _read_secret(env, table.token_url_auth_env, table.token_url_auth_file,
                            where("token_url_auth_env"), where("token_url_auth_file"))  # fmt: skip
        return TokenURL(url=table.token_url, auth=auth)
    if table.token_redis_url is None and not shared_redis:
        raise ConfigError(
            where("token_redis_key"), "needs a Redis: set token_redis_url, or JSSDK_CACHE_URL to redis://"
        )
    assert table.token_redis_key is not None
    return TokenRedisKey(key=table.token_redis_key, redis_url=table.token_redis_url)


def _secret(table: AccountTable, env: Mapping[str, str], where: Callable[[str], str]) -> Secret:
    found = _read_secret(env, table.secret_env, table.secret_file, where("secret_env"), where("secret_file"))
    if found is None:
        raise ConfigError(where("secret"), "an AppSecret is required (set it, or point to a file that holds it)")
    return found


def _read_secret(
    env: Mapping[str, str], variable: str | None, path: str | None, variable_field: str, path_field: str
) -> Secret | None:
    """The secret in environment `variable` or, winning over it, in the file at `path`; None if neither is named."""
    value = env.get(variable) if variable else None
    if variable and not value:
        raise ConfigError(variable_field, f"environment variable {variable!r} is not set")
    if path:
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(path_field, f"cannot read {path!r}: {exc.strerror}") from None
        if not value:
            raise ConfigError(path_field, f"{path!r} is empty")
    return Secret(value) if value else None


def _allowed_hosts(items: Sequence[str], field_name: str) -> tuple[str, ...]:
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


def _share_policy(table: ShareTable, where: Callable[..., str], hosts: Sequence[str]) -> SharePolicy:
    rules = (
        ShareRule(rule.path, _share_fields(rule, where("share", "rules", i), hosts))
        for i, rule in enumerate(table.rules)
    )
    return SharePolicy(defaults=_share_fields(table, where("share"), hosts), rules=tuple(rules))


def _share_fields(table: ShareFieldsTable, where: str, hosts: Sequence[str]) -> ShareFields:
    try:
        fields = share_fields(title=table.title, desc=table.desc, link=table.link, img_url=table.img_url, where=where)
        check_link_domain(fields, hosts, where=where)
    except (InvalidShare, HostNotAllowed, InvalidURL) as exc:
        raise ConfigError(where, exc.message) from None
    return fields


def _platform(table: PlatformTable, index: int, env: Mapping[str, str]) -> Platform:
    def where(name: str) -> str:
        return f"platforms[{index}].{name}"

    def required(kind: str, what: str) -> Secret:
        found = _read_secret(env, getattr(table, f"{kind}_env"), getattr(table, f"{kind}_file"),
                             where(f"{kind}_env"), where(f"{kind}_file"))  # fmt: skip
        if found is None:
            raise ConfigError(where(kind), f"{what} is required (set {kind}_env or {kind}_file)")
        return found

    secret = required("secret", "the component_appsecret")
    token = required("token", "the message token (消息校验Token)")
    aes_key = required("aes_key", "the EncodingAESKey (消息加解密Key)")
    previous = _read_secret(env, table.previous_aes_key_env, table.previous_aes_key_file,
                            where("previous_aes_key_env"), where("previous_aes_key_file"))  # fmt: skip
    for name, key in (("aes_key", aes_key), ("previous_aes_key", previous)):
        if key is not None:
            try:
                check_aes_key(key.reveal())
            except ValueError as exc:
                raise ConfigError(where(name), str(exc)) from None
    return Platform(
        component_appid=table.component_appid,
        name=table.name or table.component_appid,
        secret=secret,
        token=token,
        aes_key=aes_key,
        previous_aes_key=previous,
        web_domains=_allowed_hosts(table.web_domains, where("web_domains")),
        js_api_list=table.js_api_list or SHARE_APIS["official"],
        open_tag_list=table.open_tag_list,
    )


def _indexed(section: str, index: int, name: str) -> str:
    return f"{section}[{index}].{name}"


def _file_webhook(entry: Any, index: int) -> Any:
    """A `[[webhooks]]` table, its lists split, for the conversion (which names any other problem)."""
    if not isinstance(entry, dict):
        return entry
    if "url" in entry:
        raise ConfigError(f"webhooks[{index}].url", "a webhook's URL is a secret: it never goes in the file; "
                          "use url_env or url_file")  # fmt: skip
    return _split_lists(entry, WebhookTable)


# The single webhook of the environment: its fields' variables.
_ENV_WEBHOOK = {"kind": "JSSDK_WEBHOOK_KIND", "url_env": "JSSDK_WEBHOOK_URL", "url_file": "JSSDK_WEBHOOK_URL_FILE"}


def _env_webhook(env: Mapping[str, str]) -> tuple[Webhook, ...]:
    """The webhook `JSSDK_WEBHOOK_URL` (or `_FILE`) names, of `JSSDK_WEBHOOK_KIND`; none when neither is set."""
    if not env.get("JSSDK_WEBHOOK_URL") and not env.get("JSSDK_WEBHOOK_URL_FILE"):
        if env.get("JSSDK_WEBHOOK_KIND"):
            raise ConfigError("JSSDK_WEBHOOK_KIND", "is set, but neither JSSDK_WEBHOOK_URL nor JSSDK_WEBHOOK_URL_FILE")
        return ()
    entry = {
        "kind": env.get("JSSDK_WEBHOOK_KIND") or "json",
        "url_env": "JSSDK_WEBHOOK_URL" if env.get("JSSDK_WEBHOOK_URL") else None,
        "url_file": env.get("JSSDK_WEBHOOK_URL_FILE") or None,
    }
    table = convert(entry, WebhookTable, lambda path: _ENV_WEBHOOK.get(str(path[-1]), "JSSDK_WEBHOOK_URL"))
    return (_webhook(table, env, _ENV_WEBHOOK.__getitem__),)


def _webhook(table: WebhookTable, env: Mapping[str, str], where: Callable[[str], str]) -> Webhook:
    """A webhook from its table; `where` names its fields in errors. The URL is never in an error."""
    if table.url_env and table.url_file:
        raise ConfigError(where("url_env"), "give url_env or url_file, not both")
    url = _read_secret(env, table.url_env, table.url_file, where("url_env"), where("url_file"))
    if url is None:
        raise ConfigError(where("url_env"), "the webhook's URL is required (set url_env or url_file)")
    field_name = where("url_file" if table.url_file else "url_env")
    try:
        parts = urlsplit(url.reveal())
        host = parts.hostname
    except ValueError:
        host = None
    if host is None or parts.scheme.lower() not in ("http", "https"):
        raise ConfigError(field_name, "does not hold an http(s) URL (the URL is not shown: it is a secret)")
    return Webhook(name=table.name or f"{table.kind}@{host}", kind=table.kind, url=url, events=table.events,
                   per_minute=table.per_minute)  # fmt: skip


def _check_unique(accounts: Sequence[Account], platforms: Sequence[Platform]) -> None:
    if not accounts and not platforms:
        raise ConfigError("accounts", "at least one [[accounts]] or [[platforms]] is required")
    seen: dict[str, str] = {}
    named = [(f"accounts[{i}]", (a.name, a.key)) for i, a in enumerate(accounts)]
    named += [(f"platforms[{i}]", (p.name, p.component_appid)) for i, p in enumerate(platforms)]
    for where, keys in named:
        for key in set(keys):
            if key in seen and seen[key] != where:
                raise ConfigError(where, f"name or app_id {key!r} is already used by {seen[key]}")
            seen[key] = where
