"""The admin API: each account's credentials at a glance, and a refresh button.

    GET  /admin/apps                          per account: token and ticket age and seconds left,
                                              last refresh, last error, upstream calls today
    POST /admin/apps/{app}/refresh            a new jsapi_ticket from WeChat now, past the shared cache
    POST /admin/apps/{app}/refresh?token=1    a new access_token first, then the ticket

Served only when `JSSDK_ADMIN_TOKEN` is set. Every request needs `Authorization: Bearer <token>`,
compared in constant time; anything else is 401. Answers carry ages, lifetimes, errors and counts,
never a credential.

A forced stable token is `force_refresh: true`, which WeChat allows 20 times a day, 30 s apart
(WECHAT.md §1). Those limits are kept here, in the shared cache so that a fleet on Redis keeps
them together: past either, the answer is 429 `refresh_limited` with the time the next is allowed,
and WeChat is not called. A classic token has no such limit (each call issues a new one).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from jssdk_service.cache import SharedCache
from jssdk_service.clientip import client_ip
from jssdk_service.config import Account, Secret, Settings
from jssdk_service.credentials import CredentialStore
from jssdk_service.errors import InvalidRequest, UnknownApp

log = logging.getLogger("jssdk_service.admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

FORCED_REFRESHES_PER_DAY = 20
FORCED_REFRESH_SPACING = 30.0
# WeChat's days, and so its daily limits, end at midnight China Standard Time.
_CHINA_UTC_OFFSET = 8 * 3600
_DAY = 86400
_HEADERS = {"Content-Type": "application/json; charset=utf-8", "Cache-Control": "no-store"}
_FLAGS = {"1": True, "true": True, "0": False, "false": False}


class AdminAPI:
    """The `/admin/*` handlers; the store and the cache are looked up per request, once they exist."""

    def __init__(
        self,
        token: Secret,
        *,
        settings: Settings,
        store: Callable[[], CredentialStore],
        cache: Callable[[], SharedCache],
        clock: Callable[[], float],
    ) -> None:
        # Digests of equal length make the comparison's time independent of the guess.
        self._digest = hashlib.sha256(token.reveal().encode()).digest()
        self._settings = settings
        self._store = store
        self._cache = cache
        self._clock = clock

    def __repr__(self) -> str:
        return "AdminAPI()"

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("GET", "/admin/apps", self._authorized(self.apps)),
            ("POST", "/admin/apps/{app}/refresh", self._authorized(self.refresh)),
        ]

    async def apps(self, request: web.Request) -> web.Response:
        """Every account's credentials: ages and seconds left, last refresh and error, calls today."""
        now = self._clock()
        entries = []
        for creds in self._store():
            status = creds.status()
            entries.append(
                {
                    "app": status.name,
                    "appId": status.app_id,
                    "tokenApi": creds.account.token_api,
                    "ready": status.ready,
                    "reason": status.reason,
                    "token": {"ageSeconds": status.token_age, "expiresIn": status.token_expires_in},
                    "ticket": {"ageSeconds": status.ticket_age, "expiresIn": status.ticket_expires_in},
                    "lastRefresh": _iso(status.last_refresh),
                    "lastError": status.last_error,
                    "errcode": status.errcode,
                    "fix": status.fix,
                    "upstreamCallsToday": await creds.calls_today(),
                    "forcedTokenRefreshesToday": await self._cache().counter(_forced_day_key(status.app_id, now)),
                }
            )
        return _json({"apps": entries})

    async def refresh(self, request: web.Request) -> web.Response:
        """A new ticket now (and first a new token with `?token=1`); 429 past WeChat's force_refresh limits."""
        account = self._account(request.match_info["app"])
        new_token = _flag(request.query.get("token", "0"), "token")
        if new_token and account.token_api == "stable":  # noqa: S105 (an API name, not a secret)
            next_allowed = await self._book_forced_refresh(account.app_id, self._clock())
            if next_allowed is not None:
                return _refresh_limited(next_allowed, self._clock())
        log.info(
            "admin: app=%s refresh of the %s requested",
            account.name,
            "access_token and jsapi_ticket" if new_token else "jsapi_ticket",
        )
        ticket = await self._store()[account.app_id].refresh(force=True, new_token=new_token)
        return _json(
            {
                "app": account.name,
                "appId": account.app_id,
                "tokenRefreshed": new_token,
                "ticket": {"fingerprint": ticket.fingerprint, "expiresIn": round(ticket.expires_at - self._clock(), 1)},
            }
        )

    def _authorized(self, handler: Handler) -> Handler:
        """`handler` behind the bearer token."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            digest = hashlib.sha256(given.strip().encode("utf-8", "surrogateescape")).digest()
            if not hmac.compare_digest(digest, self._digest) or scheme.lower() != "bearer":
                log.warning("admin: refused a request from %s without a valid bearer token", client_ip(request))
                return _json(
                    _error("unauthorized", "this endpoint needs Authorization: Bearer <admin token>"),
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="jssdk-service admin"'},
                )
            return await handler(request)

        return guarded

    def _account(self, key: str) -> Account:
        account = self._settings.account(key)
        if account is None:
            raise UnknownApp(f"no account is configured as {key!r}")
        return account

    async def _book_forced_refresh(self, app_id: str, now: float) -> float | None:
        """Take one of today's force_refresh calls for `app_id`: None when taken, else when the next is allowed."""
        cache = self._cache()
        last_key = f"{app_id}:forced-token:last"
        last = await cache.get(last_key)
        if last is not None and now < float(last.get("at", 0.0)) + FORCED_REFRESH_SPACING:
            return float(last["at"]) + FORCED_REFRESH_SPACING
        day_key = _forced_day_key(app_id, now)
        if await cache.counter(day_key) >= FORCED_REFRESHES_PER_DAY:
            return (_china_day(now) + 1) * _DAY - _CHINA_UTC_OFFSET
        await cache.set(last_key, {"at": now}, FORCED_REFRESH_SPACING)
        await cache.increment(day_key, 1, 2 * _DAY)
        return None


def _refresh_limited(next_allowed: float, now: float) -> web.Response:
    wait = max(1, math.ceil(next_allowed - now))
    message = (
        f"WeChat allows a forced stable_token refresh {FORCED_REFRESHES_PER_DAY} times a day, "
        f"{FORCED_REFRESH_SPACING:.0f} s apart: the next is allowed at {_iso(next_allowed)} (in {wait} s)"
    )
    return _json(_error("refresh_limited", message), status=429, headers={"Retry-After": str(wait)})


def _flag(value: str, name: str) -> bool:
    flag = _FLAGS.get(value.lower())
    if flag is None:
        raise InvalidRequest(f"{name} must be 1 or 0 (true or false)")
    return flag


def _china_day(now: float) -> int:
    return int((now + _CHINA_UTC_OFFSET) // _DAY)


def _forced_day_key(app_id: str, now: float) -> str:
    return f"{app_id}:forced-token:{_china_day(now)}"


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _json(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, headers={**_HEADERS, **(headers or {})})
