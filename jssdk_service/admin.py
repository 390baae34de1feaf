"""The admin API: each account's credentials at a glance, and a refresh button.

    GET  /admin/apps                          per account: token and ticket age and seconds left,
                                              last refresh, last error, upstream calls today
    POST /admin/apps/{app}/refresh            a new jsapi_ticket from WeChat now, past the shared cache
    POST /admin/apps/{app}/refresh?token=1    a new access_token first, then the ticket
    POST /admin/apps/{app}/callback-check     WeChat's network check of the account's callback URL
    GET  /admin/apps/{app}/quota              WeChat's own quota of the token and ticket APIs, asked now
    POST /admin/apps/{app}/clear-quota        reset WeChat's daily quotas (clear_quota/v2), confirmed in the body
    GET  /admin/platforms/{c}/authorizers     a platform's authorizers, a page at a time
    POST /admin/platforms/{c}/authorizers     add one with its refresh token (kept only if WeChat takes it)
    DELETE /admin/platforms/{c}/authorizers/{appid}   stop signing for one, and forget its refresh token

A sub-application at /admin, mounted only when `JSSDK_ADMIN_TOKEN` is set. Every request needs
`Authorization: Bearer <token>`, compared in constant time; anything else is 401. Answers carry
ages, lifetimes, errors and counts, never a credential. The parent application's resources are
read through `request.config_dict`.

A forced stable token is `force_refresh: true`, which WeChat allows 20 times a day, 30 s apart
(WECHAT.md §1). Those limits are kept in the shared cache (`quotas.ForcedRefreshes`) so that a
fleet on Redis keeps them together: past either, the answer is 429 `refresh_limited` with the
time the next is allowed, and WeChat is not called. A classic token has no such limit.

WeChat's own quota (`openapi/quota/get`) counts every caller of the account, not only this service:
`/admin/apps/{app}/quota` asks it live and keeps the answer in the shared cache for 10 minutes, which
`/admin/apps` shows beside its own count, so that listing N accounts never calls WeChat N times. A
reset (`clear_quota/v2`, or `component/clear_quota/v2` for a platform's authorizer) is one of the 10
WeChat allows an account a month: it needs the account named again in the body, and the resets this
service made are counted per China month in the shared cache. WeCom has neither API.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import math
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from aiohttp import web

from jssdk_service.cache import SharedCache
from jssdk_service.clientip import client_ip
from jssdk_service.component import ComponentCredentials
from jssdk_service.config import Account, Secret
from jssdk_service.credentials import AccountCredentials
from jssdk_service.endpoint import Handler, flag, json_response
from jssdk_service.errors import (
    Conflict,
    HourlyLimited,
    InvalidRequest,
    RefreshLimited,
    TokenInvalid,
    Unauthorized,
    UnknownApp,
    UpstreamRejected,
    UpstreamUnavailable,
)
from jssdk_service.keys import (
    ADMIN_DIGEST,
    CACHE,
    CLOCK,
    PLATFORMS,
    QUOTA_RESETS,
    QUOTA_WATCHERS,
    STORE,
    WECHAT,
    find_account,
)
from jssdk_service.metrics import quota_reset, quota_used
from jssdk_service.quotas import (
    DAY,
    FORCED_REFRESH_SPACING,
    FORCED_REFRESHES_PER_DAY,
    QUOTA_WARNING,
    WECOM_APP_TICKETS_PER_HOUR,
    WECOM_CORP_TICKETS_PER_HOUR,
    ForcedRefreshes,
    QuotaWatcher,
    UpstreamUsage,
    china_month,
    next_china_midnight,
)
from jssdk_service.shapes import (
    AdminApp,
    AdminApps,
    AdminAuthorizer,
    AdminAuthorizers,
    AdminQuota,
    AdminRefresh,
    CallbackCheck,
    CallbackCheckRequest,
    ClearQuotaRequest,
    DnsResult,
    Lifetime,
    NewAuthorizer,
    PingResult,
    PlatformStatus,
    QuotaCleared,
    TicketFingerprint,
    WeChatQuota,
    decode_body,
)
from jssdk_service.tokens import AccessToken
from jssdk_service.wechat import Quota, WeChatClient

R = TypeVar("R")
_DIGITS = re.compile("[0-9]{1,19}")
ADMIN_CHUNK = 100
"""`/admin/apps` lets other requests in after this many accounts."""
QUOTA_KEPT = 600.0
"""How long `/admin/apps` shows what WeChat's quota/get last answered."""
RESETS_PER_MONTH = 10  # clear_quota and clear_quota/v2 share them (WECOM_PLATFORM.md C.3, B.5)
WECOM_HAS_NO_QUOTA_API = (
    "WeCom has no quota API (neither openapi/quota/get nor clear_quota): its limits are fixed (tickets: 400 an "
    "hour per corp, 100 per app), and /admin/apps counts them in ticketCallsLastHour"
)
log = logging.getLogger("jssdk_service.admin")


def admin_app(token: Secret) -> web.Application:
    """The sub-application the `/admin/*` routes are installed in, holding the token's digest."""
    admin = web.Application()
    # Digests of equal length make the comparison's time independent of the guess.
    admin[ADMIN_DIGEST] = hashlib.sha256(token.reveal().encode()).digest()
    return admin


def authorized(handler: Handler) -> Handler:
    """`handler` behind the bearer token."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        digest = hashlib.sha256(given.strip().encode("utf-8", "surrogateescape")).digest()
        if not hmac.compare_digest(digest, request.app[ADMIN_DIGEST]) or scheme.lower() != "bearer":
            log.warning("admin: refused a request from %s without a valid bearer token", client_ip(request))
            raise Unauthorized("this endpoint needs Authorization: Bearer <admin token>")
        return await handler(request)

    return guarded


async def apps(request: web.Request) -> web.Response:
    """Every account's credentials: ages and seconds left, last refresh and error, calls today.

    A few cache reads per account (a WeCom app's hourly counts are 21): other requests are let in
    after every `ADMIN_CHUNK` accounts, as an in-memory cache never makes this wait."""
    config = request.config_dict
    now = config[CLOCK]()
    forced = ForcedRefreshes(config[CACHE])
    entries = []
    store = config[STORE]
    for index, creds in enumerate(list(store)):  # accounts may come and go while this waits
        if index and index % ADMIN_CHUNK == 0:
            await asyncio.sleep(0)
        status, account = creds.status(), creds.account
        entries.append(
            AdminApp(
                app=status.name,
                app_id=status.app_id,
                kind=account.kind,
                token_source=_token_source(account),
                token_api=account.token_api if _fetches_stable_or_classic(account) else None,
                ready=status.ready,
                reason=status.reason,
                token=Lifetime(age_seconds=status.token_age, expires_in=status.token_expires_in),
                ticket=Lifetime(age_seconds=status.ticket_age, expires_in=status.ticket_expires_in),
                agent_ticket=Lifetime(age_seconds=status.agent_ticket_age, expires_in=status.agent_ticket_expires_in)
                if account.wecom
                else None,
                ticket_calls_last_hour=await creds.ticket_calls_last_hour(),
                last_refresh=_iso(status.last_refresh),
                last_error=status.last_error,
                errcode=status.errcode,
                fix=status.fix,
                upstream_calls_today=await creds.calls_today(),
                forced_token_refreshes_today=await forced.today(status.app_id, now),
                wechat_quota=_quota_shown(await config[CACHE].get(_quota_key(account.key))),
            )
        )
    return json_response(AdminApps(apps=entries))


async def refresh(request: web.Request) -> web.Response:
    """A new ticket now (and first a new token with `?token=1`); 429 past WeChat's force_refresh limits."""
    config = request.config_dict
    clock = config[CLOCK]
    account = _account(find_account(config, request.match_info["app"]), request.match_info["app"])
    new_token = flag(request.query.get("token", "0"), "token")
    stable = _fetches_stable_or_classic(account) and account.token_api == "stable"  # noqa: S105
    if new_token and stable:
        next_allowed = await ForcedRefreshes(config[CACHE]).book(account.key, clock())
        if next_allowed is not None:
            raise _refresh_limited(next_allowed, clock())
    creds = config[STORE][account.key]
    spent = await creds.ticket_limits_spent()
    if spent is not None:  # before any call: a new token first would be a gettoken for nothing
        raise RefreshLimited(
            f"WeCom allows {WECOM_APP_TICKETS_PER_HOUR} calls of each ticket API an hour per app and "
            f"{WECOM_CORP_TICKETS_PER_HOUR} corp tickets per corp: the last hour used them",
            retry_after=max(1, math.ceil(spent)),
        )
    log.info(
        "admin: app=%s refresh of the %s requested",
        account.name,
        "access_token and jsapi_ticket" if new_token else "jsapi_ticket",
    )
    try:
        ticket = await creds.refresh(force=True, new_token=new_token)
    except HourlyLimited as exc:  # a forced refresh may not spend WeCom's hourly ticket limits either
        raise RefreshLimited(str(exc), retry_after=max(1, math.ceil(exc.retry_after or 1))) from None
    answer = AdminRefresh(
        app=account.name,
        app_id=account.key,
        token_refreshed=new_token,
        ticket=TicketFingerprint(fingerprint=ticket.fingerprint, expires_in=round(ticket.expires_at - clock(), 1)),
    )
    return json_response(answer)


def _fetches_stable_or_classic(account: Account) -> bool:
    """An official account that fetches its own token (stable_token or cgi-bin/token)."""
    return not account.wecom and account.source is None and account.platform is None


def _token_source(account: Account) -> Literal["secret", "external", "platform"]:
    return "platform" if account.platform is not None else "secret" if account.source is None else "external"


async def callback_check(request: web.Request) -> web.Response:
    """WeChat's network check (`callback/check`): how it resolves and reaches the account's callback URL."""
    config = request.config_dict
    account = _account(find_account(config, request.match_info["app"]), request.match_info["app"])
    creds = config[STORE][account.key]  # before any wait: an authorizer may be removed meanwhile
    asked = decode_body(await request.read(), CallbackCheckRequest)
    answer = await _with_token(creds, lambda token: config[WECHAT].check_callback(
        app_id=account.key, token=token, action=asked.action, operator=asked.check_operator))  # fmt: skip
    try:
        dns = [DnsResult(ip=str(d["ip"]), real_operator=str(d["real_operator"])) for d in answer.get("dns", [])]
        ping = [PingResult(ip=str(p["ip"]), from_operator=str(p["from_operator"]), package_loss=str(p["package_loss"]),
                           time=str(p["time"])) for p in answer.get("ping", [])]  # fmt: skip
    except (KeyError, TypeError) as exc:
        raise UpstreamUnavailable(f"WeChat's callback/check answer is not in the documented shape ({exc})",
                                  app_id=account.key) from None  # fmt: skip
    return json_response(CallbackCheck(app=account.name, dns=dns, ping=ping))


async def quota(request: web.Request) -> web.Response:
    """WeChat's own daily limit, used and remaining calls of the account's token and ticket APIs, asked now
    (and kept for `/admin/apps`), next to the calls the service counted today."""
    config = request.config_dict
    account = _account(find_account(config, request.match_info["app"]), request.match_info["app"])
    watchers: tuple[QuotaWatcher, ...] = config[QUOTA_WATCHERS]
    answer = await wechat_quota_now(config[WECHAT], config[STORE][account.key], config[CACHE], config[CLOCK](),
                                    watchers=watchers)  # fmt: skip
    return json_response(answer)


def quota_paths(account: Account) -> dict[str, str]:
    """The APIs whose WeChat quota the account spends, by the names `upstreamCallsToday` gives them, and their
    cgi paths (quota/get's `cgi_path`); `InvalidRequest` for a WeCom app, as WeCom has no quota API."""
    if account.wecom:
        raise InvalidRequest(WECOM_HAS_NO_QUOTA_API)
    ticket = {"getticket": "/cgi-bin/ticket/getticket"}
    if not _fetches_stable_or_classic(account):
        # An external source's token calls are its owner's; an authorizer's (api_authorizer_token) are the
        # platform's, counted against its component_access_token.
        return ticket
    if account.token_api == "classic":  # noqa: S105 (an API name, not a secret)
        return {"token": "/cgi-bin/token", **ticket}
    return {"stable_token": "/cgi-bin/stable_token", **ticket}


async def wechat_quota_now(
    client: WeChatClient, creds: AccountCredentials, cache: SharedCache, now: float,
    watchers: Sequence[QuotaWatcher] = (),
) -> AdminQuota:  # fmt: skip
    """WeChat's quota of each of the account's APIs, asked with the token the service uses (kept in the shared
    cache for `/admin/apps`), next to the fleet's own count of them today.

    WeChat's figures count every caller of the account, so they also feed `jssdk_quota_used_ratio` and, past
    80%, the `watchers` (notifications), as the fleet's own count does."""
    account = creds.account
    paths = quota_paths(account)
    quotas = await _quotas(client, creds, paths)
    midnight = next_china_midnight(now)
    for api, q in quotas.items():
        if q.daily_limit > 0:
            quota_used(account.name, api, "day", q.used / q.daily_limit, until=midnight)
        if q.daily_limit > 0 and q.used >= QUOTA_WARNING * q.daily_limit:
            for watcher in watchers:
                watcher(account.key, api, "day", q.used, q.daily_limit)
    record = {"asked_at": now, "apis": {api: {"daily_limit": q.daily_limit, "used": q.used, "remain": q.remain}
                                        for api, q in quotas.items()}}  # fmt: skip
    await cache.set(_quota_key(account.key), record, QUOTA_KEPT)
    ours = await UpstreamUsage(clock=lambda: now).today(cache, account.key, tuple(paths))
    return AdminQuota(app=account.name, app_id=account.key, wechat_quota=_quota_shown(record) or {},
                      upstream_calls_today=ours)  # fmt: skip


async def _with_token(creds: AccountCredentials, ask: Callable[[AccessToken], Awaitable[R]]) -> R:
    """`ask` an operations API with the token the service holds: once more when WeChat refuses it and the service
    holds another by then (a forced refresh replaced it on the way), else `UpstreamUnavailable` (never the
    `TokenInvalid`, which no status answers)."""
    token = await creds.access_token()
    for _ in range(2):
        try:
            return await ask(token)
        except TokenInvalid as exc:
            refused = exc
        newer = await creds.access_token()
        if newer.value == token.value:
            break
        token = newer
    raise UpstreamUnavailable(f"{refused.message}: the service replaces a refused token at its next refresh; ask "
                              "again in a minute", app_id=creds.account.key, api=refused.api)  # fmt: skip


async def _quotas(client: WeChatClient, creds: AccountCredentials, paths: dict[str, str]) -> dict[str, Quota]:
    """quota/get of each path, asked with the token the service holds."""
    key = creds.account.key

    async def ask(token: AccessToken) -> dict[str, Quota]:
        return {api: await client.fetch_quota(app_id=key, token=token, cgi_path=cgi_path)
                for api, cgi_path in paths.items()}  # fmt: skip

    return await _with_token(creds, ask)


async def clear_quota(request: web.Request) -> web.Response:
    """Reset WeChat's daily quotas of the account: one of the 10 resets a month, so only when the body names
    the account again, exactly as the path does."""
    config = request.config_dict
    named = request.match_info["app"]
    account = _account(find_account(config, named), named)
    if account.wecom:
        raise InvalidRequest(WECOM_HAS_NO_QUOTA_API)
    if account.source is not None:
        raise InvalidRequest(
            f"{account.name} reads its token from {account.source.where} and holds no AppSecret, which "
            "clear_quota/v2 needs: the token's owner must reset the quota (it spends the same quota)"
        )
    how = (f'send {{"confirm": "{named}"}} to reset WeChat\'s daily quotas of {account.name}: it uses one of the '
           f"{RESETS_PER_MONTH} resets WeChat allows an account a month")  # fmt: skip
    try:
        asked = decode_body(await request.read(), ClearQuotaRequest)
    except InvalidRequest as exc:
        raise InvalidRequest(f"{exc.message}; {how}") from None
    if asked.confirm != named:  # well formed, yet naming something else: the body contradicts the path
        raise Conflict(f"confirm does not name the account as the path does; {how}")
    cache = config[CACHE]
    async with _one_reset(cache, config[QUOTA_RESETS], account.key):
        wechat = config[WECHAT]
        if account.platform is not None:
            platform = config[PLATFORMS].named(account.platform).platform
            await wechat.clear_authorizer_quota(component_appid=platform.component_appid,
                                                secret=platform.secret.reveal(), app_id=account.key)  # fmt: skip
        else:
            await wechat.clear_quota(app_id=account.key, secret=account.reveal_secret())
    now = config[CLOCK]()
    # Only resets WeChat took are counted; a month is at most 31 days, so the counter outlives its own.
    resets = await cache.increment(f"{account.key}:quota-resets:{china_month(now)}", 1, 32 * DAY)
    # WeChat's figures from before the reset are wrong now: /admin/apps shows none until they are asked again,
    # and the ratios exported go (the fleet's own count, which the reset does not change, sets them again).
    await cache.set(_quota_key(account.key), {"cleared_at": now}, QUOTA_KEPT)
    quota_reset(account.name)
    creds = config[STORE].get(account.key)
    if creds is not None:
        creds.quota_reset()  # refreshes held back until midnight for a spent quota may run now (this process)
    made = "an unknown number (the shared cache does not answer)" if resets is None else str(resets)
    log.warning("admin: app=%s WeChat's daily quotas reset (%s); resets made by this service this month: %s of %d",
                account.name, "component/clear_quota/v2" if account.platform else "clear_quota/v2", made,
                RESETS_PER_MONTH)  # fmt: skip
    left = None if resets is None else max(0, RESETS_PER_MONTH - resets)
    answer = QuotaCleared(app=account.name, app_id=account.key, cleared=True, resets_this_month=resets,
                          resets_left_this_month=left)  # fmt: skip
    return json_response(answer)


RESET_LEASE = 60.0  # how long a reset whose outcome is unknown keeps others out


@contextlib.asynccontextmanager
async def _one_reset(cache: SharedCache, resets: dict[str, float], key: str) -> AsyncIterator[None]:
    """One reset of the account's quota at a time in the fleet (two at once would spend two of the month's
    10): a 409 while another is under way, or for a minute after one whose outcome is unknown. `resets` are
    this process's (`QUOTA_RESETS`: the memory cache has no lock); the fleet's lock covers the others."""
    owner = secrets.token_hex(8)
    lock = f"{key}:quota-reset-lock"
    now = time.monotonic()
    for done in [k for k, until in resets.items() if until <= now]:
        del resets[done]
    if key in resets or not await cache.acquire(lock, owner, RESET_LEASE):
        raise Conflict("a reset of this account's quota is under way (or its outcome is unknown): look at the "
                       "quota (GET …/quota) in a minute before asking again")  # fmt: skip
    resets[key] = math.inf
    unknown = False
    try:
        yield
    except UpstreamUnavailable:
        unknown = True  # whether WeChat took it: others are kept out until the lease ends, here and in the fleet
        raise
    finally:
        if unknown:
            resets[key] = time.monotonic() + RESET_LEASE
        else:
            del resets[key]
            await cache.release(lock, owner)


def _quota_key(key: str) -> str:
    return f"{key}:wechat-quota"


def _quota_shown(record: dict[str, Any] | None) -> dict[str, WeChatQuota] | None:
    """What quota/get answered last, as `/admin/apps` shows it; None when not asked lately (or reset since)."""
    apis = record.get("apis") if record is not None else None
    if not apis or record is None:
        return None
    try:
        asked_at = _iso(record["asked_at"]) or ""
        return {str(api): WeChatQuota(daily_limit=int(q["daily_limit"]), used=int(q["used"]), remain=int(q["remain"]),
                                      asked_at=asked_at) for api, q in apis.items()}  # fmt: skip
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, OSError):
        return None  # a record this version cannot read (the fleet shares it): not shown, as if not asked


def _component(request: web.Request) -> ComponentCredentials:
    return request.config_dict[PLATFORMS].named(request.match_info["component_appid"])


async def authorizers(request: web.Request) -> web.Response:
    """A page of a platform's authorizers (from its table in the shared cache), with their credentials."""
    config = request.config_dict
    component = _component(request)
    cursor, count = request.query.get("cursor") or "0", request.query.get("count") or "500"
    if not _DIGITS.fullmatch(cursor) or int(cursor) >= 2**63:
        raise InvalidRequest("cursor must be a nextCursor of an earlier page")
    if not _DIGITS.fullmatch(count) or not 1 <= int(count) <= 1000:
        raise InvalidRequest("count must be a number from 1 to 1000")
    page = await config[CACHE].entries(component.authorizers_key, int(cursor), int(count))
    if page is None:
        raise UpstreamUnavailable("the shared cache does not answer: the authorizers cannot be listed now")
    next_cursor, entries = page
    store = config[STORE]
    listed = []
    for app_id, entry in entries.items():
        since, via = entry.get("since"), entry.get("via")
        listed.append(_authorizer(app_id, store.get(app_id), since if isinstance(since, int | float) else None,
                                  str(via) if via is not None else None))  # fmt: skip
    platforms = config[PLATFORMS]
    answer = AdminAuthorizers(platform=component.platform.component_appid, status=PlatformStatus(**component.status()),
                              total=platforms.authorizer_count(component.platform.component_appid),
                              authorizers=listed, next_cursor=next_cursor)  # fmt: skip
    return json_response(answer)


async def add_authorizer(request: web.Request) -> web.Response:
    """Add an authorizer with its refresh token: kept only once WeChat gave a token for it (201)."""
    config = request.config_dict
    component = _component(request)
    new = decode_body(await request.read(), NewAuthorizer)
    platforms = config[PLATFORMS]
    if platforms.conflicts(component, new.appid):
        raise Conflict(
            f"{new.appid!r} is a configured account (or another platform's authorizer): it is signed for as that"
        )
    try:
        refresh_token, token = await component.verify_refresh_token(new.appid, new.refresh_token)
    except UpstreamRejected as exc:
        if exc.api != "api_authorizer_token":  # the platform's own token: not the caller's fault
            raise
        raise InvalidRequest(f"WeChat refused the refresh token: {exc}; {exc.fix}".rstrip("; ")) from None
    await platforms.add(component, new.appid, refresh_token, via="admin", token=token)
    log.info("admin: platform=%s authorizer %s added", component.platform.component_appid, new.appid)
    answer = _authorizer(new.appid, config[STORE].get(new.appid), config[CLOCK](), "admin")
    return json_response(answer, status=201)


def _authorizer(app_id: str, creds: AccountCredentials | None, since: float | None, via: str | None) -> AdminAuthorizer:
    """An authorizer as the admin API shows it: what the table keeps, and this process's credentials."""
    if creds is None:
        empty = Lifetime(age_seconds=None, expires_in=None)
        return AdminAuthorizer(app_id=app_id, ready=False, reason="not held by this process yet", token=empty,
                               ticket=empty, since=_iso(since), via=via, last_error=None, fix=None)  # fmt: skip
    status = creds.status()
    return AdminAuthorizer(
        app_id=app_id,
        ready=status.ready,
        reason=status.reason,
        token=Lifetime(age_seconds=status.token_age, expires_in=status.token_expires_in),
        ticket=Lifetime(age_seconds=status.ticket_age, expires_in=status.ticket_expires_in),
        since=_iso(since),
        via=via,
        last_error=status.last_error,
        fix=status.fix,
    )


async def remove_authorizer(request: web.Request) -> web.Response:
    """Stop signing for an authorizer and forget its refresh token (204); 404 when it is not known."""
    config = request.config_dict
    component = _component(request)
    app_id = request.match_info["appid"]
    if not await config[PLATFORMS].remove(component, app_id, via="admin"):
        raise UnknownApp(f"platform {component.platform.component_appid} has no authorizer {app_id!r}")
    return web.Response(status=204)


def _account(account: Account | None, key: str) -> Account:
    if account is None:
        raise UnknownApp(f"no account is configured as {key!r}")
    return account


def _refresh_limited(next_allowed: float, now: float) -> RefreshLimited:
    wait = max(1, math.ceil(next_allowed - now))
    message = (
        f"WeChat allows a forced stable_token refresh {FORCED_REFRESHES_PER_DAY} times a day, "
        f"{FORCED_REFRESH_SPACING:.0f} s apart: the next is allowed at {_iso(next_allowed)} (in {wait} s)"
    )
    return RefreshLimited(message, retry_after=wait)


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
