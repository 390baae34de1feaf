"""The sandbox: a faithful emulator of the WeChat endpoints jssdk-service uses (WECHAT.md §1-2, §5).

It is a peer of the real WeChat: the client cannot tell them apart. What it emulates, for official
accounts (api.weixin.qq.com):
- `GET /cgi-bin/token`: every call issues a new classic token; the earlier ones keep working for
  `classic_overlap` seconds (5 minutes upstream) and then die;
- `POST /cgi-bin/stable_token`: the same token for every caller while it is valid; a new one in
  the last `stable_renew_before` seconds; `force_refresh` invalidates the old one (20 a day, 30 s apart);
- `GET /cgi-bin/ticket/getticket?type=jsapi`: needs a live token (40001 unknown, 42001 expired);
- appid and secret checks with the real errcodes, an optional IP whitelist (40164), daily quotas
  (45009) and WeChat's own view of them (WECOM_PLATFORM.md C.3): `POST /cgi-bin/openapi/quota/get` with
  any account's token (an authorizer's too; 76021 for a cgi_path it does not know), and the resets
  `POST /cgi-bin/clear_quota/v2` (appid and appsecret in a JSON body or the query: the docs conflict, the
  SDKs use the query) and `POST /cgi-bin/component/clear_quota/v2` (a platform's, for an authorizer),
  `clear_quota_monthly_limit` (10) an account per China month between them, 48006 past it;
- injectable faults: errcode -1 (or any errcode) at a rate, HTTP 500 at a rate, connection resets,
  a delay, and a script of exact outcomes for the next calls.
For WeCom self-built apps (qyapi.weixin.qq.com, WECOM_PLATFORM.md A; `sandbox_wecom.py`), on the same
HTTP app: `GET /cgi-bin/gettoken`, the corp ticket `GET /cgi-bin/get_jsapi_ticket` and the agent
ticket `GET /cgi-bin/ticket/get?type=agent_config`, with WeCom's errcodes, IP whitelist (60020) and
hourly ticket limits (45009); the same faults apply.
For third-party platforms (开放平台 component, WECOM_PLATFORM.md B; `sandbox_platform.py`): pushes of
component_verify_tickets and authorization events to each platform's callback URL, sealed as WeChat
seals them, and `api_component_token`, `api_query_auth`, `api_authorizer_token`; an authorizer's token
fetches jsapi tickets like an official account's. And the operations APIs (C.1, C.2):
`GET /cgi-bin/getcallbackip`, `GET /cgi-bin/get_api_domain_ip`, `POST /cgi-bin/callback/check`.
Under `/sandbox/` it also answers what WeChat's client would: `POST /sandbox/verify` checks a
wx.config the way the WeChat client does (appId may be a WeCom corpid: signed with a corp ticket),
`POST /sandbox/verify-agent` a WeCom wx.agentConfig. `GET /sandbox/stats` (read-only) tells what it has seen:

    {"calls": {"<api>": {"ok": n, "failed": n}},      # per emulated API, as `count()` counts
     "inFlight": n, "peakInFlight": n,                # calls being served now (the delay included), the most at once
     "ticketsIssuedPerSecond": {"<epoch second>": n}} # tickets handed out (jsapi, corp, agent), by the second of issue

A central token server that owns the tokens (one whitelisted host; the service only reads from it)
is `sandbox_central.CentralTokenServer`: it mints through `issue_owned_token()`, counted as "central".

It stays cheap with many accounts: what it issues is indexed per (appId or WeCom app key, kind) and
calls are counted per (api, appId, outcome), so no call scans the whole history.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import socket
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import orjson
from aiohttp import web

from jssdk_service.sandbox_answers import answer as _answer
from jssdk_service.sandbox_answers import error as _error
from jssdk_service.sandbox_answers import json_body as _json_body
from jssdk_service.sandbox_platform import PLATFORM_APIS, PlatformSandbox, SandboxPlatform
from jssdk_service.sandbox_platform import PushResult as PushResult  # public here, with the rest
from jssdk_service.sandbox_webhooks import install_webhook_receiver
from jssdk_service.sandbox_wecom import SandboxWeComApp as SandboxWeComApp  # public here, with the rest
from jssdk_service.sandbox_wecom import WeComSandbox
from jssdk_service.signing import sign_url

if TYPE_CHECKING:
    from jssdk_service.sandbox_central import CentralTokenServer

Fault = int | Literal["http500", "reset"]
Kind = Literal[
    "classic", "stable", "ticket", "wecom_token", "corp_ticket", "agent_ticket", "authorizer_token", "component_token"
]
"""What a credential is: an official account's token (classic or stable) or jsapi ticket; a WeCom
app's token, corp ticket (signs wx.config) or agent ticket (signs wx.agentConfig); an authorizer's
access token (an official account's, obtained by a platform) or a platform's component_access_token."""
OFFICIAL_TOKENS = ("classic", "stable")
# What fetches an official account's jsapi ticket: its own token, or a platform's on its behalf (B.3).
ACCOUNT_TOKENS = (*OFFICIAL_TOKENS, "authorizer_token")

DEMO_APP_ID = "wxd0000000000000de"


@dataclass(slots=True, kw_only=True)
class SandboxAccount:
    """An official account the emulator knows."""

    app_id: str
    secret: str
    ip_whitelist: frozenset[str] | None = None


@dataclass(slots=True, kw_only=True)
class Faults:
    """What goes wrong, and how often; change it at any time."""

    error_rates: dict[int, float] = field(default_factory=dict)
    """errcode -> share of calls answered with it (e.g. {-1: 0.3, 45011: 0.05})."""
    http500_rate: float = 0.0
    reset_rate: float = 0.0
    delay: float = 0.0
    script: deque[Fault] = field(default_factory=deque)


@dataclass(slots=True, kw_only=True)
class IssuedCredential:
    """A token or ticket the emulator handed out."""

    app_id: str
    """The official account's appId, or the WeCom app's key ("corpid:agentid")."""
    kind: Kind
    value: str
    issued_at: float
    expires_at: float


@dataclass(slots=True, kw_only=True)
class Call:
    """One call that reached the emulator."""

    api: str
    app_id: str
    errcode: int
    at: float


class WeChatSandbox(WeComSandbox, PlatformSandbox):
    """The emulator's state and behaviour; `app()` serves it over HTTP.

    `accounts` are official accounts; `wecom_apps` WeCom self-built apps, whose ticket calls are limited
    per sliding hour by `wecom_hourly_limits` ("corp": per corp, "app": per app; 400 and 100 upstream);
    `platforms` third-party platforms, whose verify tickets are good for `verify_ticket_valid_for`
    seconds and, with `push_every`, pushed on a schedule while a `SandboxServer` serves the emulator.
    `callback_ips` and `api_ips` are what getcallbackip and get_api_domain_ip answer.
    """

    def __init__(
        self,
        accounts: Sequence[SandboxAccount] = (),
        *,
        wecom_apps: Sequence[SandboxWeComApp] = (),
        wecom_hourly_limits: Mapping[str, int] | None = None,
        token_expires_in: int = 7200,
        ticket_expires_in: int = 7200,
        classic_overlap: float = 300.0,
        stable_renew_before: float | None = None,
        force_refresh_interval: float = 30.0,
        daily_quota: dict[str, int] | None = None,
        platforms: Sequence[SandboxPlatform] = (),
        verify_ticket_valid_for: float = 43200.0,
        callback_ips: Sequence[str] | None = None,
        api_ips: Sequence[str] | None = None,
        push_every: float | None = None,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        WeComSandbox.__init__(self, wecom_apps=wecom_apps, wecom_hourly_limits=wecom_hourly_limits)
        PlatformSandbox.__init__(self, platforms=platforms, verify_ticket_valid_for=verify_ticket_valid_for,
                                 callback_ips=callback_ips, api_ips=api_ips, push_every=push_every)  # fmt: skip
        self.accounts = {a.app_id: a for a in accounts}
        self.token_expires_in = token_expires_in
        self.ticket_expires_in = ticket_expires_in
        self.classic_overlap = classic_overlap
        self.renew_before = stable_renew_before
        self.force_refresh_interval = force_refresh_interval
        self.daily_quota = {"token": 2000, "stable_token": 500_000, "getticket": 2000, **(daily_quota or {})}
        self.clear_quota_reads: Literal["either", "query", "body"] = "either"
        """Where clear_quota/v2 reads appid and appsecret: WeChat's docs disagree, so tests try each."""
        self.clear_quota_monthly_limit = 10
        """Resets of an account's daily quotas WeChat takes per China month (clear_quota and its v2s share them)."""
        self.faults = Faults()
        self.calls: list[Call] = []
        """Every call in order (append-only: `count()` reads counters kept alongside)."""
        self.issued: dict[str, IssuedCredential] = {}
        """value -> credential, for every token and ticket ever handed out."""
        self.in_flight = 0
        """Calls to the emulated APIs being served right now, the injected delay included."""
        self.peak_in_flight = 0
        """The most calls ever served at once."""
        self._issued_by: defaultdict[tuple[str, Kind], list[IssuedCredential]] = defaultdict(list)
        self._call_counts: Counter[tuple[str, str, bool]] = Counter()  # (api, app_id, ok)
        self._api_counts: Counter[tuple[str, bool]] = Counter()  # (api, ok)
        self._tickets_per_second: Counter[int] = Counter()
        self._used: Counter[tuple[str, str]] = Counter()
        self._forced: dict[str, list[float]] = {}
        self._resets: Counter[tuple[str, str]] = Counter()  # (app_id, China month)
        self._random = random.Random(seed)
        self._clock = clock

    @property
    def stable_renew_before(self) -> float:
        """How long before expiry stable_token hands out the next token (300 s upstream)."""
        return min(300.0, self.token_expires_in / 5) if self.renew_before is None else self.renew_before

    def now(self) -> float:
        """The emulator's clock: what every expiry it hands out is measured against."""
        return self._clock()

    # -- what tests and operators read ---------------------------------------------------------

    def count(self, api: str, app_id: str | None = None, *, ok_only: bool = False) -> int:
        """How many calls reached `api` (for `app_id`, or a WeCom app's key), or only the successful ones."""
        if app_id is None:
            ok, failed = self._api_counts[(api, True)], self._api_counts[(api, False)]
        else:
            ok, failed = self._call_counts[(api, app_id, True)], self._call_counts[(api, app_id, False)]
        return ok if ok_only else ok + failed

    def tickets(self, app_id: str) -> list[IssuedCredential]:
        """Every ticket handed out for `app_id`, oldest first."""
        return list(self._issued_by.get((app_id, "ticket"), ()))

    def ticket_that_signed(
        self, app_id: str, *, url: str, nonce: str, timestamp: int, signature: str
    ) -> IssuedCredential | None:
        """The ticket of `app_id` whose signature this is, if any (for a WeCom corpid: a corp ticket of its apps)."""
        tickets = self._corp_tickets_of(app_id) if self.is_corp(app_id) else self.tickets(app_id)
        return self._signer(tickets, url=url, nonce=nonce, timestamp=timestamp, signature=signature)

    def knock_out_tokens(self, app_id: str) -> None:
        """Kill every live token of `app_id` (an appId, an authorizer's or a platform's, or a WeCom app key) now,
        as another party's refresh does."""
        now = self._clock()
        kinds: tuple[Kind, ...] = ("classic", "stable", "wecom_token", "authorizer_token", "component_token")
        for kind in kinds:
            for cred in self._issued_by.get((app_id, kind), ()):
                cred.expires_at = min(cred.expires_at, now - 1)

    def knock_out_token(self, value: str) -> None:
        """Kill this one token now (a central server rotating or losing it); unknown values are ignored."""
        cred = self.issued.get(value)
        if cred is not None and cred.kind in (*ACCOUNT_TOKENS, "wecom_token", "component_token"):
            cred.expires_at = min(cred.expires_at, self._clock() - 1)

    def issue_owned_token(self, app: str) -> IssuedCredential:
        """A new token for `app` (appId or WeCom app key) as its central token server obtains it.

        The server is the one whitelisted caller, so no secret, IP or quota check applies; the call
        counts as api "central" and the token is accepted like any other. KeyError for an unknown app.
        """
        if app in self.accounts:
            kind: Kind = "classic"
        elif app in self.wecom_apps:
            kind = "wecom_token"
        else:
            raise KeyError(app)
        self._record("central", app, 0)
        return self._mint(app, kind, self._clock(), self.token_expires_in)

    def stats(self) -> dict[str, Any]:
        """What `GET /sandbox/stats` answers (see the module docstring); WeCom's APIs once it knows a WeCom app,
        the platforms' and operations APIs once it knows a platform."""
        wecom = ("gettoken", "get_jsapi_ticket", "get_agent_ticket") if self.wecom_apps else ()
        platform = PLATFORM_APIS if self.platforms else ()
        apis = sorted({"token", "stable_token", "getticket", *wecom, *platform, *(api for api, _ in self._api_counts)})
        return {
            "calls": {api: {"ok": self._api_counts[(api, True)], "failed": self._api_counts[(api, False)]}
                      for api in apis},
            "peakInFlight": self.peak_in_flight,
            "inFlight": self.in_flight,
            "ticketsIssuedPerSecond": {str(second): n for second, n in sorted(self._tickets_per_second.items())},
        }  # fmt: skip

    def verify_config(self, app_id: str, *, url: str, nonce: str, timestamp: int, signature: str) -> str:
        """What `wx.config` reports: `config:ok`, or the error WeChat's client gives.

        For a WeCom corpid only a live corp ticket of one of the corp's apps signs (an agent ticket does not).
        """
        ticket = self.ticket_that_signed(app_id, url=url, nonce=nonce, timestamp=timestamp, signature=signature)
        if ticket is None or ticket.expires_at <= self._clock():
            return "config:invalid signature"
        return "config:ok"

    # -- HTTP ----------------------------------------------------------------------------------

    def app(self, *, central: CentralTokenServer | None = None) -> web.Application:
        """The emulator as an aiohttp app; with `central`, that central token server's routes too."""
        app = web.Application()
        app.router.add_route("*", "/cgi-bin/token", self._token)
        app.router.add_route("*", "/cgi-bin/stable_token", self._stable_token)
        app.router.add_get("/cgi-bin/ticket/getticket", self._getticket)
        app.router.add_post("/cgi-bin/clear_quota/v2", self._clear_quota)
        app.router.add_post("/cgi-bin/component/clear_quota/v2", self._component_clear_quota)
        app.router.add_post("/cgi-bin/openapi/quota/get", self._quota_get)
        app.router.add_post("/sandbox/verify", self._verify)
        app.router.add_get("/sandbox/stats", self._stats)
        self._add_wecom_routes(app)
        self._add_platform_routes(app)
        self.webhooks = install_webhook_receiver(app, self)  # POST /sandbox/webhook/{json,robot}: notifications
        if central is not None:
            central.install(app)
        return app

    async def _token(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        return await self._serve(request, "token", q.get("appid", ""), lambda: self._issue_token(
            request, "classic", q.get("grant_type"), q.get("appid"), q.get("secret"), force=False))  # fmt: skip

    async def _stable_token(self, request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return _answer(43002, "require POST method")
        body = await _json_body(request)
        app_id = str(body.get("appid", ""))
        return await self._serve(request, "stable_token", app_id, lambda: self._issue_token(
            request, "stable", body.get("grant_type"), body.get("appid"), body.get("secret"),
            force=bool(body.get("force_refresh", False))))  # fmt: skip

    async def _getticket(self, request: web.Request) -> web.StreamResponse:
        token_value = request.query.get("access_token", "")
        token = self.issued.get(token_value)
        app_id = token.app_id if token is not None and token.kind in ACCOUNT_TOKENS else ""
        return await self._serve(request, "getticket", app_id, lambda: self._issue_ticket(
            token, token_value, request.query.get("type", "")))  # fmt: skip

    async def _serve(
        self, request: web.Request, api: str, app_id: str, handle: Callable[[], dict[str, Any]],
        *, error: Callable[[int], dict[str, Any]] | None = None,
    ) -> web.StreamResponse:  # fmt: skip
        """Answer one call to an emulated API: faults first, then `handle`; `error` renders an injected errcode."""
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await self._serve_one(request, api, app_id, handle, error or _error)
        finally:
            self.in_flight -= 1

    async def _serve_one(
        self, request: web.Request, api: str, app_id: str, handle: Callable[[], dict[str, Any]],
        error: Callable[[int], dict[str, Any]],
    ) -> web.StreamResponse:  # fmt: skip
        faults = self.faults
        if faults.delay:
            await asyncio.sleep(faults.delay)
        fault = self._pick_fault()
        if fault == "reset":
            self._record(api, app_id, -2)
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=500)
        if fault == "http500":
            self._record(api, app_id, 500)
            return web.Response(status=500, text="<html>500 Internal Server Error</html>")
        answer = error(fault) if fault is not None else handle()
        self._record(api, app_id, int(answer.get("errcode", 0)))
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    def _pick_fault(self) -> Fault | None:
        faults = self.faults
        if faults.script:
            return faults.script.popleft()
        roll = self._random.random()
        if roll < faults.reset_rate:
            return "reset"
        roll -= faults.reset_rate
        if roll < faults.http500_rate:
            return "http500"
        roll -= faults.http500_rate
        for errcode, rate in faults.error_rates.items():
            if roll < rate:
                return errcode
            roll -= rate
        return None

    def _record(self, api: str, app_id: str, errcode: int) -> None:
        self.calls.append(Call(api=api, app_id=app_id, errcode=errcode, at=self._clock()))
        ok = errcode == 0
        self._call_counts[(api, app_id, ok)] += 1
        self._api_counts[(api, ok)] += 1

    def _issue_token(
        self, request: web.Request, kind: Literal["classic", "stable"], grant_type: Any, app_id: Any, secret: Any,
        *, force: bool,
    ) -> dict[str, Any]:  # fmt: skip
        if grant_type != "client_credential":
            return _error(40002)
        if not app_id:
            return _error(41002)
        if not secret:
            return _error(41004)
        account = self.accounts.get(str(app_id))
        if account is None:
            return _error(40013)
        if account.secret != secret:
            # The classic /token says 40001 for a wrong AppSecret; stable_token says 40125.
            return _error(40001 if kind == "classic" else 40125)
        ip = request.remote or ""
        if account.ip_whitelist is not None and ip not in account.ip_whitelist:
            return _error(40164, f"invalid ip {ip} ipv6 ::ffff:{ip}, not in whitelist")
        api = "token" if kind == "classic" else "stable_token"
        if not self._spend_quota(account.app_id, api):
            return _error(45009)
        now = self._clock()
        if kind == "classic":
            return self._new_classic_token(account.app_id, now)
        return self._stable(account.app_id, now, force)

    def _new_classic_token(self, app_id: str, now: float) -> dict[str, Any]:
        for cred in self._live(app_id, "classic", now):
            # A new classic token leaves the older ones working for the overlap only.
            cred.expires_at = min(cred.expires_at, now + self.classic_overlap)
        token = self._mint(app_id, "classic", now, self.token_expires_in)
        return {"access_token": token.value, "expires_in": self.token_expires_in}

    def _stable(self, app_id: str, now: float, force: bool) -> dict[str, Any]:
        live = self._live(app_id, "stable", now)
        current = max(live, key=lambda c: c.issued_at) if live else None
        if force and current is not None and self._may_force(app_id, now):
            for cred in live:
                cred.expires_at = now
            current = None
        # A stable token handed out always has a whole second left at least (upstream: 300 s).
        if current is None or current.expires_at - now <= max(1.0, self.stable_renew_before):
            current = self._mint(app_id, "stable", now, self.token_expires_in)
        return {"access_token": current.value, "expires_in": int(current.expires_at - now)}

    def _may_force(self, app_id: str, now: float) -> bool:
        today = [t for t in self._forced.get(app_id, []) if t > now - 86400]
        if len(today) >= 20 or (today and now - today[-1] < self.force_refresh_interval):
            return False
        self._forced[app_id] = [*today, now]
        return True

    def _issue_ticket(self, token: IssuedCredential | None, token_value: str, kind: str) -> dict[str, Any]:
        if not token_value:
            return _error(41001)
        if token is None or token.kind not in ACCOUNT_TOKENS:
            return _error(40001)
        if token.expires_at <= self._clock():
            # Expired on its own: 42001; replaced by a newer token and past the overlap (or an
            # authorizer's, unauthorized): 40001.
            return _error(42001 if token.expires_at >= token.issued_at + self.token_expires_in else 40001)
        if kind != "jsapi":
            return _error(40097, "invalid args")
        if not self._spend_quota(token.app_id, "getticket"):
            return _error(45009)
        ticket = self._mint(token.app_id, "ticket", self._clock(), self.ticket_expires_in)
        return {"errcode": 0, "errmsg": "ok", "ticket": ticket.value, "expires_in": self.ticket_expires_in}

    def _live(self, app_id: str, kind: Kind, now: float) -> list[IssuedCredential]:
        return [c for c in self._issued_by.get((app_id, kind), ()) if c.expires_at > now]

    def _issued_as(self, app_id: str, kind: Kind) -> list[IssuedCredential]:
        return self._issued_by.get((app_id, kind), [])

    def _signer(
        self, tickets: Sequence[IssuedCredential], *, url: str, nonce: str, timestamp: int, signature: str
    ) -> IssuedCredential | None:
        """The ticket among `tickets` that made `signature`, if any."""
        for ticket in tickets:
            if sign_url(ticket=ticket.value, nonce=nonce, timestamp=timestamp, url=url) == signature:
                return ticket
        return None

    def _mint(self, app_id: str, kind: Kind, now: float, life: float) -> IssuedCredential:
        is_ticket = kind in ("ticket", "corp_ticket", "agent_ticket")
        prefix = "sandbox_ticket_" if is_ticket else "sandbox_token_"
        cred = IssuedCredential(app_id=app_id, kind=kind, value=prefix + secrets.token_urlsafe(48),
                                issued_at=now, expires_at=now + life)  # fmt: skip
        self.issued[cred.value] = cred
        self._issued_by[(app_id, kind)].append(cred)
        if is_ticket:
            self._tickets_per_second[int(now)] += 1
        return cred

    def _spend_quota(self, app_id: str, api: str) -> bool:
        key = (app_id, api)
        if self._used[key] >= self.daily_quota[api]:
            return False
        self._used[key] += 1
        return True

    async def _clear_quota(self, request: web.Request) -> web.StreamResponse:
        # The query's parameters (what the SDKs send) or the JSON body's (what the newer docs list); one of
        # them alone when `clear_quota_reads` says so (WeChat's may read one).
        body = await _json_body(request)
        reads = self.clear_quota_reads
        fields: dict[str, Any] = {**(request.query if reads != "body" else {}), **(body if reads != "query" else {})}
        app_id, secret = str(fields.get("appid") or ""), str(fields.get("appsecret") or "")

        def handle() -> dict[str, Any]:
            if not app_id:
                return _error(41002)
            if not secret:
                return _error(41004)
            account = self.accounts.get(app_id)
            if account is None:
                return _error(40013)
            if account.secret != secret:
                return _error(40125)
            return self._reset_quota(app_id)

        return await self._serve(request, "clear_quota", app_id, handle)

    async def _component_clear_quota(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        component_appid, secret = str(body.get("component_appid") or ""), str(body.get("appsecret") or "")
        app_id = str(body.get("appid") or "")

        def handle() -> dict[str, Any]:
            if not component_appid:
                return _error(41018)
            platform = self.platforms.get(component_appid)
            if platform is None:
                return _error(61011)
            if not secret:
                return _error(41004)
            if platform.secret != secret:
                return _error(40125)
            if not app_id:
                return _error(41002)
            if (component_appid, app_id) not in self._authorizations:
                return _error(61003)
            return self._reset_quota(app_id)

        return await self._serve(request, "component_clear_quota", app_id, handle)

    def _reset_quota(self, app_id: str) -> dict[str, Any]:
        """Zero every daily count of `app_id`, as one of its resets this China month (48006 past the limit)."""
        month = time.strftime("%Y-%m", time.gmtime(self._clock() + 8 * 3600))
        if self._resets[(app_id, month)] >= self.clear_quota_monthly_limit:
            return _error(48006, "forbid to clear quota because of reaching the limit")
        self._resets[(app_id, month)] += 1
        for key in [k for k in self._used if k[0] == app_id]:
            del self._used[key]
        return {"errcode": 0, "errmsg": "ok"}

    async def _quota_get(self, request: web.Request) -> web.StreamResponse:
        token_value = request.query.get("access_token", "")
        token = self.issued.get(token_value)
        cgi_path = str((await _json_body(request)).get("cgi_path", ""))
        app_id = token.app_id if token is not None and token.kind in ACCOUNT_TOKENS else ""

        def handle() -> dict[str, Any]:
            if not token_value:
                return _error(41001)
            if token is None or token.kind not in ACCOUNT_TOKENS or token.expires_at <= self._clock():
                return _error(40001)
            api = {"/cgi-bin/token": "token", "/cgi-bin/stable_token": "stable_token",
                   "/cgi-bin/ticket/getticket": "getticket"}.get(cgi_path)  # fmt: skip
            if api is None:
                return _error(76021, "cgi_path not found")
            used = self._used[(token.app_id, api)]
            limit = self.daily_quota[api]
            quota = {"daily_limit": limit, "used": used, "remain": max(0, limit - used)}
            return {"errcode": 0, "errmsg": "ok", "quota": quota}

        return await self._serve(request, "quota_get", app_id, handle)

    async def _stats(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.stats()), content_type="application/json")

    async def _verify(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        try:
            err_msg = self.verify_config(
                str(body["appId"]), url=str(body["url"]), nonce=str(body["nonceStr"]),
                timestamp=int(body["timestamp"]), signature=str(body["signature"]),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError):
            err_msg = "config:invalid arguments"
        return web.Response(body=orjson.dumps({"errMsg": err_msg}), content_type="application/json")


class SandboxServer:
    """Serves a `WeChatSandbox` over real HTTP on loopback; `base_url` is what the client is given.

    With `central`, that central token server's routes are served too, and it is started before the
    server answers and stopped before the server closes. With the sandbox's `push_every`, a verify
    ticket is pushed to every platform with a callback URL once the server answers, then on that schedule.
    """

    def __init__(
        self, sandbox: WeChatSandbox, *, central: CentralTokenServer | None = None, host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:  # fmt: skip
        self.sandbox = sandbox
        self.central = central
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self._pusher: asyncio.Task[None] | None = None
        self.base_url = ""

    async def start(self) -> str:
        if self.central is not None:
            await self.central.start()
        self._runner = web.AppRunner(self.sandbox.app(central=self.central), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"
        every = self.sandbox.push_every
        if every is not None and self._pusher is None:
            self._pusher = asyncio.get_running_loop().create_task(self.sandbox.push_tickets_every(every))
        return self.base_url

    async def stop(self) -> None:
        if self._pusher is not None:
            self._pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pusher
            self._pusher = None
        if self.central is not None:
            await self.central.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def closed_port_url(host: str = "127.0.0.1") -> str:
    """An http base URL on a loopback port nothing listens on: a dead entry domain."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    return f"http://{host}:{port}"
