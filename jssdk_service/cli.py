"""The `jssdk-service` command: serve, sign, check-config, doctor, wechat-ips, quota."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import stat
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import orjson

from jssdk_service import __version__
from jssdk_service.config import Account, Settings, TokenRedisKey, load_settings
from jssdk_service.errors import ConfigError, RequestError, TokenInvalid, UpstreamError
from jssdk_service.signing import sign_url

if TYPE_CHECKING:  # imported where used: `sign` and `check-config` start without them
    from jssdk_service.cache import SharedCache
    from jssdk_service.credentials import AccountCredentials
    from jssdk_service.shapes import AdminQuota
    from jssdk_service.wechat import WeChatClient


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jssdk-service", description=__doc__)
    parser.add_argument("--version", action="version", version=f"jssdk-service {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--config", help="TOML file with [[accounts]] (or JSSDK_CONFIG)")
    serve.add_argument("--host", help="listen address (or JSSDK_HOST; default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (or JSSDK_PORT; default 8080)")
    serve.add_argument("--workers", type=int, default=1, metavar="N",
                       help="N processes on one port; N > 1 needs JSSDK_CACHE_URL=redis://...")  # fmt: skip
    serve.add_argument("--sandbox", action="store_true", help="talk to an in-process WeChat emulator")
    serve.add_argument("--log-format", choices=("json", "text"), help="log lines (or JSSDK_LOG_FORMAT; default json)")
    serve.add_argument("--access-log", action="store_true", default=None,
                       help="log one line per request (or JSSDK_ACCESS_LOG=true; default off)")  # fmt: skip
    rehearsal = serve.add_argument_group("sandbox behaviour (each also as JSSDK_SANDBOX_<NAME>)")
    rehearsal.add_argument("--sandbox-expires-in", metavar="S", help="lifetime of tokens and tickets (default 7200)")
    rehearsal.add_argument("--sandbox-errors", metavar="CODE:RATE,...",
                           help="share of calls answered with each errcode, e.g. -1:0.3,45011:0.05")  # fmt: skip
    rehearsal.add_argument("--sandbox-http500-rate", metavar="R", help="share of calls answered with HTTP 500")
    rehearsal.add_argument("--sandbox-reset-rate", metavar="R", help="share of calls whose connection is reset")
    rehearsal.add_argument("--sandbox-delay", metavar="S", help="seconds every call waits before answering")
    rehearsal.add_argument("--sandbox-dead-base", action="store_const", const="1",
                           help="put an unreachable API base first, to rehearse failover")  # fmt: skip

    sign = commands.add_parser("sign", help="print the wx.config signature of a URL (offline)")
    sign.add_argument("--ticket", required=True)
    sign.add_argument("--nonce", required=True)
    sign.add_argument("--timestamp", required=True, type=int)
    sign.add_argument("url")

    check = commands.add_parser("check-config", help="validate the configuration and exit")
    check.add_argument("--config", help="TOML file with [[accounts]] (or JSSDK_CONFIG)")

    doctor = commands.add_parser("doctor", help="ask a running service why WeChat refused a wx.config")
    doctor.add_argument("url", help="the page's location.href")
    doctor.add_argument("--service", help="the service's base URL (default http://127.0.0.1:$JSSDK_PORT or :8080)")
    doctor.add_argument("--app-id", help="the appId passed to wx.config")
    doctor.add_argument("--signature", help="the signature passed to wx.config")
    doctor.add_argument("--nonce", help="the nonceStr passed to wx.config")
    doctor.add_argument("--timestamp", type=int, help="the timestamp passed to wx.config")
    doctor.add_argument("--landing-url", help="the URL the page load began at (single-page apps)")
    doctor.add_argument("--user-agent", help="the browser's navigator.userAgent")
    doctor.add_argument("--err-msg", help="what wx.error said, e.g. 'config:invalid signature'")
    doctor.add_argument("--json", action="store_true", help="print the service's answer as it is")

    ips = commands.add_parser("wechat-ips", help="print WeChat's current IP list (for allow lists and firewalls)")
    which = ips.add_mutually_exclusive_group(required=True)
    which.add_argument("--callback", dest="which", action="store_const", const="callback",
                       help="the addresses WeChat's pushes come from (getcallbackip)")  # fmt: skip
    which.add_argument("--api", dest="which", action="store_const", const="api",
                       help="the entry points of WeChat's API (get_api_domain_ip)")  # fmt: skip
    ips.add_argument("--format", choices=("plain", "nginx"), default="plain",
                     help="one entry a line (default), or nginx `allow` lines with a header")  # fmt: skip
    ips.add_argument("--app", help="the account whose token asks: its name or appId (default: the first)")
    ips.add_argument("--config", help="TOML file with [[accounts]] (or JSSDK_CONFIG)")
    ips.add_argument("--output", metavar="FILE",
                     help="write FILE atomically instead of printing; kept as it is if the fetch fails")  # fmt: skip

    quota = commands.add_parser("quota", help="print WeChat's own quota of an account's token and ticket APIs")
    quota.add_argument("--app", required=True, help="the account: its name or appId")
    quota.add_argument("--config", help="TOML file with [[accounts]] (or JSSDK_CONFIG)")
    quota.add_argument("--json", action="store_true", help="print the answer as JSON (as GET /admin/apps/{app}/quota)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    env = os.environ
    try:
        if args.command == "sign":
            print(sign_url(ticket=args.ticket, nonce=args.nonce, timestamp=args.timestamp, url=args.url))
        elif args.command == "doctor":
            return _doctor(args, env)
        elif args.command == "wechat-ips":
            return _wechat_ips(args, env, argv)
        elif args.command == "quota":
            return _quota(args, env)
        elif args.command == "check-config":
            settings = load_settings(env, args.config)
            platforms = f", {len(settings.platforms)} platform(s)" if settings.platforms else ""
            print(f"ok: {len(settings.accounts)} account(s){platforms}")
            for account in settings.accounts:
                print(f"  {account.describe()}")
            for platform in settings.platforms:
                print(f"  {platform.describe()}")
            for webhook in settings.webhooks:
                print(f"  notifications: {webhook!r}")
        else:
            return _serve(args, env)
    except ConfigError as exc:
        print(f"jssdk-service: config error: {exc.message}", file=sys.stderr)
        return 2
    return 0


def _serve(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from jssdk_service.server import run, sandbox_options

    if args.workers < 1:
        raise ConfigError("--workers", f"has value {args.workers}; expected 1 or more")
    # The flags win over the environment and the file; a flag not given (None) leaves them be.
    overrides = {"host": args.host, "port": args.port, "log_format": args.log_format, "access_log": args.access_log}
    sandbox = None
    if args.sandbox:
        names = ("expires_in", "errors", "http500_rate", "reset_rate", "delay", "dead_base")
        sandbox = sandbox_options({name: getattr(args, f"sandbox_{name}") for name in names}, env)
    run(env, args.config, overrides=overrides, sandbox=sandbox, workers=args.workers)
    return 0


def _doctor(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """POST the arguments to the service's /v1/doctor; print one line per finding.

    Exits 1 when a finding is an error, 2 when the service cannot be asked or refuses the question.
    """
    import aiohttp

    service = (args.service or f"http://127.0.0.1:{env.get('JSSDK_PORT') or 8080}").rstrip("/")
    fields = {"url": args.url, "appId": args.app_id, "signature": args.signature, "nonceStr": args.nonce,
              "timestamp": args.timestamp, "landingUrl": args.landing_url, "userAgent": args.user_agent,
              "errMsg": args.err_msg}  # fmt: skip

    async def ask() -> tuple[int, bytes]:
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            body = {key: value for key, value in fields.items() if value is not None}
            async with session.post(f"{service}/v1/doctor", json=body) as response:
                return response.status, await response.read()

    try:
        status, raw = asyncio.run(ask())
        answer = orjson.loads(raw)
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
        print(f"jssdk-service: cannot ask {service}/v1/doctor: {exc or type(exc).__name__}", file=sys.stderr)
        return 2
    if status != 200:
        error = answer.get("error", {}) if isinstance(answer, dict) else {}
        print(f"jssdk-service: {service} answered {status}: {error.get('message', raw.decode(errors='replace'))}",
              file=sys.stderr)  # fmt: skip
        return 2
    findings = answer["findings"]
    if args.json:
        print(raw.decode())
    else:
        for finding in findings:
            print(f"{finding['severity']:<8} {finding['code']}: {finding['message']}")
        if not findings:
            print("no findings: send the wx.config values (--signature, --nonce, --timestamp) to check a signature")
    return 1 if any(f["severity"] == "error" for f in findings) else 0


def _wechat_ips(args: argparse.Namespace, env: Mapping[str, str], argv: Sequence[str]) -> int:
    """Print (or write to --output) WeChat's IP list, asked with the account's token as the service has it.

    Exits 1 when WeChat (or the token) fails, or FILE cannot be written: FILE is then left as it was.
    """
    settings = load_settings(env, args.config)
    account = _chosen_account(settings, args.app)
    which: Literal["callback", "api"] = "api" if args.which == "api" else "callback"
    try:
        entries = asyncio.run(_fetch_ips(settings, account, which))
    except UpstreamError as exc:
        return _upstream_failure("wechat-ips", exc)
    if args.format == "nginx":
        text = _nginx_allow_list(entries, which=which, wecom=account.wecom, command=["jssdk-service", *argv])
    else:
        text = "".join(f"{entry}\n" for entry in entries)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        _replace_file(Path(args.output), text)
    except OSError as exc:
        print(f"jssdk-service: wechat-ips: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def _chosen_account(settings: Settings, app: str | None) -> Account:
    """The account `--app` names (its name or appId), or the first without it; a `ConfigError` naming --app."""
    account = settings.account(app) if app else next(iter(settings.accounts), None)
    if account is None:
        problem = f"has value {app!r}; no account has that name or appId" if app else "has no account"
        if not settings.accounts and settings.platforms:
            problem += (
                ": WeChat's lists are asked with an account's token, and a platform's authorizers are "
                "not asked; configure one [[accounts]] entry (any official account) for this command"
            )
        raise ConfigError("--app", problem)
    return account


def _upstream_failure(command: str, exc: UpstreamError) -> int:
    """Print one line saying how WeChat (or the token) failed and what to do; exit code 1."""
    fix = getattr(exc, "fix", "") or (
        "the service replaces a refused token at its next refresh: run this again in a minute"
        if isinstance(exc, TokenInvalid) else ""
    )  # fmt: skip
    print(f"jssdk-service: {command}: {exc.message}" + (f" ({fix})" if fix else ""), file=sys.stderr)
    return 1


@contextlib.asynccontextmanager
async def _as_the_service(
    settings: Settings, account: Account
) -> AsyncIterator[tuple[WeChatClient, SharedCache, AccountCredentials]]:
    """A WeChat client, the shared cache and the account's credentials as the running service has them: asked
    for a token, they hand out the one the service would use, the fleet's while it is fresh (so the fleet's is
    never replaced), else a new one under the fleet's lock, as the service gets one."""
    from jssdk_service.cache import RawKeys, open_cache
    from jssdk_service.credentials import AccountCredentials, RefreshRules
    from jssdk_service.quotas import HourlyLimits
    from jssdk_service.wechat import WeChatClient

    password = settings.redis_password.reveal() if settings.redis_password else None
    source = account.source
    source_keys = ({source.redis_url: RawKeys(source.redis_url or settings.cache_url, password=password)}
                   if isinstance(source, TokenRedisKey) else {})  # fmt: skip
    cache = open_cache(settings.cache_url, password=password)
    client = WeChatClient(settings.api_bases, wecom_bases=settings.wecom_api_bases)
    try:
        rules = RefreshRules(lock_lease=settings.lock_lease, request_wait=settings.request_wait,
                             source_keys=source_keys)  # fmt: skip
        yield client, cache, AccountCredentials(account, client, cache, rules, HourlyLimits(cache))
    finally:
        await client.aclose()
        await cache.close()
        for keys in source_keys.values():
            await keys.close()


async def _fetch_ips(settings: Settings, account: Account, which: Literal["callback", "api"]) -> list[str]:
    """The IP list, asked with the token the running service would use."""
    async with _as_the_service(settings, account) as (client, _, creds):
        token = await creds.access_token()
        return await client.fetch_ip_list(app_id=account.key, token=token, which=which, wecom=account.wecom)


def _quota(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Print WeChat's daily limit, used and remaining calls of the account's token and ticket APIs, beside the
    fleet's own count today (the answer is kept for /admin/apps, as GET /admin/apps/{app}/quota keeps it).

    Exits 1 when WeChat (or the token) fails, 2 for a configuration error (a WeCom app: WeCom has no quota API).
    """
    from jssdk_service.admin import quota_paths
    from jssdk_service.shapes import encode

    settings = load_settings(env, args.config)
    account = _chosen_account(settings, args.app)
    try:
        quota_paths(account)
    except RequestError as exc:
        raise ConfigError("--app", f"names {account.name}, a WeCom app: {exc.message}") from None
    try:
        answer = asyncio.run(_ask_quota(settings, account))
    except UpstreamError as exc:
        return _upstream_failure("quota", exc)
    if args.json:
        print(encode(answer).decode())
        return 0
    asked = next(iter(answer.wechat_quota.values())).asked_at if answer.wechat_quota else "-"
    print(f"{answer.app} ({answer.app_id}), asked at {asked}: WeChat's count of every caller of the account, "
          "and jssdk-service's own count today (China time)")  # fmt: skip
    print(f"{'api':<14} {'daily_limit':>12} {'used':>10} {'remain':>10} {'ours_today':>11}")
    for api, quota in answer.wechat_quota.items():
        ours = answer.upstream_calls_today.get(api, 0)
        print(f"{api:<14} {quota.daily_limit:>12} {quota.used:>10} {quota.remain:>10} {ours:>11}")
    return 0


async def _ask_quota(settings: Settings, account: Account) -> AdminQuota:
    from jssdk_service.admin import wechat_quota_now

    async with _as_the_service(settings, account) as (client, cache, creds):
        return await wechat_quota_now(client, creds, cache, time.time())


def _nginx_allow_list(
    entries: Sequence[str], *, which: Literal["callback", "api"], wecom: bool, command: Sequence[str]
) -> str:
    """`entries` as nginx `allow` lines, under a header saying what they are, how and when they were made."""
    owner = "WeCom" if wecom else "WeChat"
    if which == "callback":
        what = (
            f"# {owner}'s callback IPs, as nginx allow lines: the addresses its pushes come from (getcallbackip).\n"
            "# Included by the jssdk nginx template's location for /v1/platform/<component_appid>/events\n"
            '# (deploy/README.md, "WeChat\'s pushes: the callback allow list"), which denies everyone else.\n'
        )
    else:
        what = (
            f"# {owner}'s API entry IPs, as nginx allow lines (get_api_domain_ip): for a firewall's list.\n"
            "# Reach the API by its name, never by these addresses: they change.\n"
        )
    fetched = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f"{what}"
        f"# Made by: {shlex.join(command)}\n"
        f"# Fetched: {fetched} (UTC), {len(entries)} entries.\n"
        f"# {owner} changes the list without notice: refresh daily (deploy/systemd/jssdk-wechat-ips.timer).\n"
        + "".join(f"allow {entry};\n" for entry in entries)
    )


def _replace_file(path: Path, text: str) -> None:
    """Write `text` to `path` atomically: a temporary file in the same directory, renamed over it, so a
    reader (nginx reloading) sees the old file or the new one, never half of one."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o644  # an allow list is no secret; nginx's master (root) and workers may read it
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
