"""The admin API: each account's credentials at a glance, and a refresh button.

    GET  /admin/apps                          per account: token and ticket age and seconds left,
                                              last refresh, last error, upstream calls today
    POST /admin/apps/{app}/refresh            a new jsapi_ticket from WeChat now, past the shared cache
    POST /admin/apps/{app}/refresh?token=1    a new access_token first, then the ticket
    POST /admin/apps/{app}/callback-check     WeChat's network check of the account's callback URL
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
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
from datetime import UTC, datetime
from typing import Literal

from aiohttp import web

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
    Unauthorized,
    UnknownApp,
    UpstreamRejected,
    UpstreamUnavailable,
)
from jssdk_service.keys import ADMIN_DIGEST, CACHE, CLOCK, PLATFORMS, STORE, WECHAT, find_account
from jssdk_service.quotas import (
    FORCED_REFRESH_SPACING,
    FORCED_REFRESHES_PER_DAY,
    WECOM_APP_TICKETS_PER_HOUR,
    WECOM_CORP_TICKETS_PER_HOUR,
    ForcedRefreshes,
)
from jssdk_service.shapes import (
    AdminApp,
    AdminApps,
    AdminAuthorizer,
    AdminAuthorizers,
    AdminRefresh,
    CallbackCheck,
    CallbackCheckRequest,
    DnsResult,
    Lifetime,
    NewAuthorizer,
    PingResult,
    PlatformStatus,
    TicketFingerprint,
    decode_body,
)

ADMIN_CHUNK = 100
"""`/admin/apps` lets other requests in after this many accounts."""
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
    for index, creds in enumerate(store):
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
    asked = decode_body(await request.read(), CallbackCheckRequest)
    creds = config[STORE][account.key]
    answer = await config[WECHAT].check_callback(app_id=account.key, token=await creds.access_token(),
                                                 action=asked.action, operator=asked.check_operator)  # fmt: skip
    try:
        dns = [DnsResult(ip=str(d["ip"]), real_operator=str(d["real_operator"])) for d in answer.get("dns", [])]
        ping = [PingResult(ip=str(p["ip"]), from_operator=str(p["from_operator"]), package_loss=str(p["package_loss"]),
                           time=str(p["time"])) for p in answer.get("ping", [])]  # fmt: skip
    except (KeyError, TypeError) as exc:
        raise UpstreamUnavailable(f"WeChat's callback/check answer is not in the documented shape ({exc})",
                                  app_id=account.key) from None  # fmt: skip
    return json_response(CallbackCheck(app=account.name, dns=dns, ping=ping))


def _component(request: web.Request) -> ComponentCredentials:
    return request.config_dict[PLATFORMS].named(request.match_info["component_appid"])


async def authorizers(request: web.Request) -> web.Response:
    """A page of a platform's authorizers (from its table in the shared cache), with their credentials."""
    config = request.config_dict
    component = _component(request)
    cursor = int(request.query.get("cursor") or 0)
    count = request.query.get("count") or "500"
    if not count.isdigit() or not 1 <= int(count) <= 1000:
        raise InvalidRequest("count must be a number from 1 to 1000")
    page = await config[CACHE].entries(component.authorizers_key, cursor, int(count))
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
    if platforms.conflicts(new.appid):
        raise Conflict(f"{new.appid!r} is a configured account: it signs with its own configuration")
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
