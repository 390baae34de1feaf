"""The admin API: each account's credentials at a glance, and a refresh button.

    GET  /admin/apps                          per account: token and ticket age and seconds left,
                                              last refresh, last error, upstream calls today
    POST /admin/apps/{app}/refresh            a new jsapi_ticket from WeChat now, past the shared cache
    POST /admin/apps/{app}/refresh?token=1    a new access_token first, then the ticket

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

from aiohttp import web

from jssdk_service.clientip import client_ip
from jssdk_service.config import Account, Secret
from jssdk_service.endpoint import Handler, flag, json_response
from jssdk_service.errors import HourlyLimited, RefreshLimited, Unauthorized, UnknownApp
from jssdk_service.keys import ADMIN_DIGEST, CACHE, CLOCK, SETTINGS, STORE
from jssdk_service.quotas import (
    FORCED_REFRESH_SPACING,
    FORCED_REFRESHES_PER_DAY,
    WECOM_APP_TICKETS_PER_HOUR,
    WECOM_CORP_TICKETS_PER_HOUR,
    ForcedRefreshes,
)
from jssdk_service.shapes import AdminApp, AdminApps, AdminRefresh, Lifetime, TicketFingerprint

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
                token_source="secret" if account.source is None else "external",
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
    account = _account(config[SETTINGS].account(request.match_info["app"]), request.match_info["app"])
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
    return not account.wecom and account.source is None


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
