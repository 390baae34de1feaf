"""WeCom (企业微信) self-built apps in the sandbox (WECOM_PLATFORM.md A), mixed into `WeChatSandbox`.

What it emulates, on the sandbox's HTTP app, with WeCom's errcodes and errmsg shape
(`<text>, hint: [...], from ip: <ip>, more info at https://open.work.weixin.qq.com/devtool/query?e=<errcode>`):
- `GET /cgi-bin/gettoken?corpid=&corpsecret=` (api "gettoken"): tokens are per app, the secret names
  the app; every call mints a new token and the earlier ones keep working until their own expiry;
  41002/41004 missing corpid/secret, 40013 unknown corpid, 40001 a secret of no app of that corp,
  60020 a caller outside the app's IP whitelist;
- `GET /cgi-bin/get_jsapi_ticket?access_token=` (api "get_jsapi_ticket"): the corp ticket, which signs
  wx.config; at most `wecom_hourly_limits["corp"]` per corp and `["app"]` per app in any sliding hour;
- `GET /cgi-bin/ticket/get?access_token=&type=agent_config` (api "get_agent_ticket"): the app's agent
  ticket, which signs wx.agentConfig; at most `["app"]` per app in any sliding hour (40058 other types);
- both tickets: 41001 no token, 40014 unknown or knocked-out token, 42001 expired token, 45009 past a limit;
- `POST /sandbox/verify-agent`: what the WeCom client's wx.agentConfig reports (`verify_agent_config`).
Counts and tickets are kept per app key (`SandboxWeComApp.key`, "corpid:agentid").
"""

from __future__ import annotations

import secrets
from collections import defaultdict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import orjson
from aiohttp import web

if TYPE_CHECKING:
    from jssdk_service.sandbox import IssuedCredential, Kind

SignedWith = Literal["agent", "corp", "other_app_agent", "unknown"]
"""What a wx.agentConfig signature was made with: this app's agent ticket, a corp ticket of the corp,
another app's agent ticket, or nothing the emulator handed out."""

HOUR = 3600.0


@dataclass(slots=True)
class SandboxWeComApp:
    """A WeCom self-built app the emulator knows: its corp, its agentid and its own secret."""

    corp_id: str
    agent_id: str
    secret: str = field(repr=False)
    ip_whitelist: frozenset[str] | None = None

    @property
    def key(self) -> str:
        """What the emulator files the app's tokens, tickets and calls under."""
        return f"{self.corp_id}:{self.agent_id}"


class WeComSandbox:
    """The WeCom half of `WeChatSandbox`: its state here, the shared ledger and `_serve` there."""

    if TYPE_CHECKING:  # provided by WeChatSandbox
        token_expires_in: int
        ticket_expires_in: int
        _clock: Callable[[], float]
        issued: dict[str, IssuedCredential]

        async def _serve(
            self, request: web.Request, api: str, app_id: str, handle: Callable[[], dict[str, Any]],
            *, error: Callable[[int], dict[str, Any]] | None = None,
        ) -> web.StreamResponse: ...  # fmt: skip

        def _mint(self, app_id: str, kind: Kind, now: float, life: float) -> IssuedCredential: ...

        def _issued_as(self, app_id: str, kind: Kind) -> list[IssuedCredential]: ...

        def _signer(
            self, tickets: Sequence[IssuedCredential], *, url: str, nonce: str, timestamp: int, signature: str
        ) -> IssuedCredential | None: ...

    def __init__(self, *, wecom_apps: Sequence[SandboxWeComApp], wecom_hourly_limits: Mapping[str, int] | None) -> None:
        self.wecom_apps: dict[str, SandboxWeComApp] = {}
        """key -> app."""
        self.wecom_hourly_limits: dict[str, int] = {"corp": 400, "app": 100, **(wecom_hourly_limits or {})}
        self._corps: defaultdict[str, list[SandboxWeComApp]] = defaultdict(list)
        self._by_secret: dict[tuple[str, str], SandboxWeComApp] = {}
        # (scope, corpid or app key) -> when each successful ticket call of the last hour was made.
        self._hourly: defaultdict[tuple[str, str], deque[float]] = defaultdict(deque)
        for app in wecom_apps:
            self.add_wecom_app(app)

    def add_wecom_app(self, app: SandboxWeComApp) -> None:
        """Make `app` known (its secret may not be another app's of the same corp)."""
        self.wecom_apps[app.key] = app
        self._corps[app.corp_id].append(app)
        self._by_secret[(app.corp_id, app.secret)] = app

    def is_corp(self, corp_id: str) -> bool:
        """Whether `corp_id` is the corpid of a WeCom app the emulator knows."""
        return corp_id in self._corps

    def corp_tickets(self, key: str) -> list[IssuedCredential]:
        """Every corp ticket handed out to the WeCom app `key`, oldest first."""
        return list(self._issued_as(key, "corp_ticket"))

    def agent_tickets(self, key: str) -> list[IssuedCredential]:
        """Every agent ticket handed out to the WeCom app `key`, oldest first."""
        return list(self._issued_as(key, "agent_ticket"))

    def verify_agent_config(
        self, *, corp_id: str, agent_id: str, url: str, nonce: str, timestamp: int, signature: str
    ) -> dict[str, Any]:
        """What `wx.agentConfig` reports (`errMsg`, `errCode` on failure), and `signedWith` what made the signature.

        Only a live agent ticket of the app `corp_id:agent_id` passes.
        """
        if not self.is_corp(corp_id):
            return {"errMsg": "agentConfig:invalid corpId", "errCode": 40013, "signedWith": "unknown"}
        key = f"{corp_id}:{agent_id}"

        def signer(tickets: Sequence[IssuedCredential]) -> IssuedCredential | None:
            return self._signer(tickets, url=url, nonce=nonce, timestamp=timestamp, signature=signature)

        signed_with: SignedWith = "unknown"
        mine = signer(self._issued_as(key, "agent_ticket"))
        if mine is not None:
            if mine.expires_at > self._clock():
                return {"errMsg": "agentConfig:ok", "signedWith": "agent"}
            signed_with = "agent"  # but expired
        elif signer(self._corp_tickets_of(corp_id)) is not None:
            signed_with = "corp"
        elif signer([t for app in self._corps[corp_id] if app.key != key
                     for t in self._issued_as(app.key, "agent_ticket")]) is not None:  # fmt: skip
            signed_with = "other_app_agent"
        return {"errMsg": "agentConfig:invalid signature", "errCode": 40093, "signedWith": signed_with}

    def _corp_tickets_of(self, corp_id: str) -> list[IssuedCredential]:
        return [t for app in self._corps.get(corp_id, ()) for t in self._issued_as(app.key, "corp_ticket")]

    # -- HTTP ----------------------------------------------------------------------------------

    def _add_wecom_routes(self, app: web.Application) -> None:
        app.router.add_get("/cgi-bin/gettoken", self._gettoken)
        app.router.add_get("/cgi-bin/get_jsapi_ticket", self._get_jsapi_ticket)
        app.router.add_get("/cgi-bin/ticket/get", self._get_agent_ticket)
        app.router.add_post("/sandbox/verify-agent", self._verify_agent)

    async def _gettoken(self, request: web.Request) -> web.StreamResponse:
        corp_id, secret = request.query.get("corpid", ""), request.query.get("corpsecret", "")
        app = self._by_secret.get((corp_id, secret))
        return await self._serve(request, "gettoken", app.key if app else "",
                                 lambda: self._issue_wecom_token(request, corp_id, secret, app),
                                 error=lambda errcode: self._wecom_error(request, errcode))  # fmt: skip

    async def _get_jsapi_ticket(self, request: web.Request) -> web.StreamResponse:
        value = request.query.get("access_token", "")
        token = self._wecom_token(value)
        return await self._serve(request, "get_jsapi_ticket", token.app_id if token else "",
                                 lambda: self._issue_wecom_ticket(request, value, token, "corp_ticket"),
                                 error=lambda errcode: self._wecom_error(request, errcode))  # fmt: skip

    async def _get_agent_ticket(self, request: web.Request) -> web.StreamResponse:
        value = request.query.get("access_token", "")
        token = self._wecom_token(value)
        agent_config = request.query.get("type") == "agent_config"
        return await self._serve(request, "get_agent_ticket", token.app_id if token else "",
                                 lambda: self._issue_wecom_ticket(request, value, token, "agent_ticket",
                                                                  type_ok=agent_config),
                                 error=lambda errcode: self._wecom_error(request, errcode))  # fmt: skip

    def _wecom_token(self, value: str) -> IssuedCredential | None:
        token = self.issued.get(value)
        return token if token is not None and token.kind == "wecom_token" else None

    def _issue_wecom_token(
        self, request: web.Request, corp_id: str, secret: str, app: SandboxWeComApp | None
    ) -> dict[str, Any]:
        if not corp_id:
            return self._wecom_error(request, 41002)
        if not secret:
            return self._wecom_error(request, 41004)
        if not self.is_corp(corp_id):
            return self._wecom_error(request, 40013)
        if app is None:
            return self._wecom_error(request, 40001)
        if app.ip_whitelist is not None and (request.remote or "") not in app.ip_whitelist:
            return self._wecom_error(request, 60020)
        token = self._mint(app.key, "wecom_token", self._clock(), self.token_expires_in)
        return {"errcode": 0, "errmsg": "ok", "access_token": token.value, "expires_in": self.token_expires_in}

    def _issue_wecom_ticket(
        self, request: web.Request, value: str, token: IssuedCredential | None,
        kind: Literal["corp_ticket", "agent_ticket"], *, type_ok: bool = True,
    ) -> dict[str, Any]:  # fmt: skip
        if not value:
            return self._wecom_error(request, 41001)
        if token is None:
            return self._wecom_error(request, 40014)
        now = self._clock()
        if token.expires_at <= now:
            # Expired on its own: 42001; knocked out before its time: 40014.
            natural = token.expires_at >= token.issued_at + self.token_expires_in
            return self._wecom_error(request, 42001 if natural else 40014)
        if not type_ok:
            return self._wecom_error(request, 40058)
        app = self.wecom_apps[token.app_id]
        limits = self.wecom_hourly_limits
        # Corp ticket: 400 per corp and 100 per app an hour; agent ticket: 100 per app an hour (A.1).
        windows = ([(("corp", app.corp_id), limits["corp"]), (("app", app.key), limits["app"])]
                   if kind == "corp_ticket" else [(("agent", app.key), limits["app"])])  # fmt: skip
        if not self._within_hourly_limits(windows, now):
            return self._wecom_error(request, 45009)
        ticket = self._mint(app.key, kind, now, self.ticket_expires_in)
        return {"errcode": 0, "errmsg": "ok", "ticket": ticket.value, "expires_in": self.ticket_expires_in}

    def _within_hourly_limits(self, windows: list[tuple[tuple[str, str], int]], now: float) -> bool:
        """Whether one more call fits every sliding-hour window; if so it is counted in each."""
        calls = []
        for window, limit in windows:
            made = self._hourly[window]
            while made and made[0] <= now - HOUR:
                made.popleft()
            if len(made) >= limit:
                return False
            calls.append(made)
        for made in calls:
            made.append(now)
        return True

    def _wecom_error(self, request: web.Request, errcode: int) -> dict[str, Any]:
        hint = f"{int(self._clock())}_{secrets.randbelow(100)}_{secrets.token_hex(16)}"
        text = _WECOM_ERRMSG.get(errcode, "error")
        where = f"from ip: {request.remote or ''}, more info at {_MORE_INFO}{errcode}"
        return {"errcode": errcode, "errmsg": f"{text}, hint: [{hint}], {where}"}

    async def _verify_agent(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
            answer = self.verify_agent_config(
                corp_id=str(body["corpid"]), agent_id=str(body["agentid"]), url=str(body["url"]),
                nonce=str(body["nonceStr"]), timestamp=int(body["timestamp"]), signature=str(body["signature"]),
            )  # fmt: skip
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            answer = {"errMsg": "agentConfig:invalid arguments", "signedWith": "unknown"}
        return web.Response(body=orjson.dumps(answer), content_type="application/json")


_MORE_INFO = "https://open.work.weixin.qq.com/devtool/query?e="
_WECOM_ERRMSG = {
    -1: "system busy",
    40001: "invalid credential",
    40013: "invalid corpid",
    40014: "invalid access_token",
    40058: "invalid parameter",
    41001: "access_token missing",
    41002: "corpid missing",
    41004: "corpsecret missing",
    42001: "access_token expired",
    45009: "api freq out of limit",
    60020: "not allow to access from your ip",
}
