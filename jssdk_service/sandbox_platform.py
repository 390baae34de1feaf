"""Third-party platforms (开放平台 component) in the sandbox (WECOM_PLATFORM.md B, C), mixed into `WeChatSandbox`.

What WeChat does to a platform, the sandbox does over real HTTP: it POSTs pushes to the platform's
授权事件接收URL (`callback_url`), sealed with `MessageCrypt(token, aes_key, receive_id=component_appid)`,
at `?timestamp=&nonce=&encrypt_type=aes&msg_signature=`, and records what the receiver answered
(`pushes`, each a `PushResult`):
- `push_verify_ticket`: a new component_verify_ticket each push; every ticket pushed stays good for
  `verify_ticket_valid_for` seconds (12 hours upstream) from its own push;
- `authorize` / `unauthorize`: the `authorized` (or `updateauthorized`) push with an AuthorizationCode
  (600 s, single use) and the `unauthorized` push. Each (re-)authorization issues a new refresh token
  and the previous one dies; an unauthorization kills the refresh token and the access tokens it gave
  (the tickets they fetched live on until their expiry, as upstream). `grant` authorizes with no push;
- with `push_every`, `SandboxServer` pushes a ticket to every platform with a callback URL on a schedule.

The APIs it answers, through the sandbox's `_serve` (faults, delay and counts apply), with WeChat's errcodes:
- `POST /cgi-bin/component/api_component_token` (api "api_component_token", counted per component_appid):
  41018 no component_appid, 61011 unknown platform, 41004 no secret, 40125 wrong secret, 61004 a caller
  outside `ip_whitelist`, 61006 a ticket never pushed, 61005 one older than `verify_ticket_valid_for`;
  every call mints a new token and the earlier ones keep working until their own expiry;
- `POST /cgi-bin/component/api_query_auth` (per component_appid) and `api_authorizer_token` (per
  authorizer appid), with `?component_access_token=` (or `?access_token=`): 41001/40001/42001 for a
  missing/unknown/expired component token, 61009 an unknown or used code, 61010 an expired one,
  61003 an authorizer not (or no longer) authorized, 61023 a refresh token not the current one.
  An authorizer's access token works like an official account's: `getticket` mints its jsapi tickets
  under the authorizer's appid, so `/sandbox/verify` checks configs signed for it;
- `GET /cgi-bin/getcallbackip` and `GET /cgi-bin/get_api_domain_ip` (`callback_ips`, `api_ips`) and
  `POST /cgi-bin/callback/check` (40202 bad action, 40203 bad check_operator), with any live token:
  an official account's, an authorizer's, a platform's or a WeCom app's (41001 none, 40001 unknown or dead).
  callback/check resolves no names: it reports the platform's callback_url host when that is an
  address, else 127.0.0.1, always reachable.
Control routes for tests and the demo answer `{"status", "body"}` of the push (404 for an unknown platform):
`POST /sandbox/platform/{component_appid}/push-ticket`, `.../authorize` with `{"appid", "update"}`,
`.../unauthorize` with `{"appid"}`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp import web

from jssdk_service.msgcrypt import MessageCrypt
from jssdk_service.sandbox_answers import error as _error
from jssdk_service.sandbox_answers import json_body as _json_body

if TYPE_CHECKING:
    import random

    from jssdk_service.sandbox import IssuedCredential, Kind

log = logging.getLogger("jssdk_service.sandbox")

PLATFORM_APIS = ("api_component_token", "api_query_auth", "api_authorizer_token", "getcallbackip",
                 "get_api_domain_ip", "callback_check")  # fmt: skip
"""The APIs `stats()` lists once the sandbox knows a platform."""
AUTHORIZATION_CODE_LIFE = 600.0
PUSH_TIMEOUT = 5.0  # WeChat gives up on a receiver after 5 seconds
# The 2021-04-12 notice's four Shanghai ranges, and single addresses standing for the rest of the list.
DEFAULT_CALLBACK_IPS = ("81.69.103.0/24", "81.69.101.0/24", "175.24.211.0/24", "101.226.103.0/24",
                        "101.226.62.77", "183.192.196.10")  # fmt: skip
DEFAULT_API_IPS = ("101.89.47.18", "101.91.34.103", "183.47.101.192")  # the first one is the docs' example
FUNC_SCOPES = (1, 2, 3, 4, 6, 7, 11, 15)  # permission sets an authorization grants (1: 消息管理, ...)
# Tokens that may call the operations APIs (IP lists, callback/check).
OPS_TOKENS: tuple[Kind, ...] = ("classic", "stable", "authorizer_token", "component_token", "wecom_token")
CHECK_ACTIONS = ("dns", "ping", "all")
CHECK_OPERATORS = ("CHINANET", "UNICOM", "CAP", "DEFAULT")
SANDBOX_OPERATOR = "CAP"  # what the sandbox's own addresses belong to (CAP: Tencent's network)


@dataclass(slots=True)
class SandboxPlatform:
    """A third-party platform the emulator knows: its appid, secret, message token and key, and where it is pushed."""

    component_appid: str
    secret: str = field(repr=False)
    """The component_appsecret."""
    token: str = field(repr=False)
    """The message token (消息校验Token)."""
    aes_key: str = field(repr=False)
    """The EncodingAESKey (43 characters); change it to rotate: the next push is sealed with the new one."""
    callback_url: str | None = None
    """The 授权事件接收URL: where pushes are POSTed (None: pushes reach nobody)."""
    ip_whitelist: frozenset[str] | None = None
    """Callers of api_component_token from any other address get 61004."""


@dataclass(frozen=True, slots=True)
class PushResult:
    """One push and what its receiver answered."""

    status: int
    """The HTTP status answered (0 when the receiver could not be reached or was too slow)."""
    body: str
    """The answer's body, at most 200 characters."""
    fields: dict[str, str] = field(repr=False)  # holds the ticket or the authorization code
    """What was pushed, before sealing."""


@dataclass(slots=True)
class _Authorization:
    """An authorizer's authorization of one platform."""

    refresh_token: str
    tokens: list[IssuedCredential] = field(default_factory=list)
    """The authorizer's access tokens obtained through it, which die with it."""


@dataclass(frozen=True, slots=True)
class _AuthorizationCode:
    component_appid: str
    authorizer_appid: str
    expires_at: float


class PlatformSandbox:
    """The open-platform half of `WeChatSandbox`: its state here, the shared ledger and `_serve` there."""

    if TYPE_CHECKING:  # provided by WeChatSandbox
        token_expires_in: int
        _clock: Callable[[], float]
        _random: random.Random
        issued: dict[str, IssuedCredential]

        async def _serve(
            self, request: web.Request, api: str, app_id: str, handle: Callable[[], dict[str, Any]],
            *, error: Callable[[int], dict[str, Any]] | None = None,
        ) -> web.StreamResponse: ...  # fmt: skip

        def _mint(self, app_id: str, kind: Kind, now: float, life: float) -> IssuedCredential: ...

    def __init__(
        self, *, platforms: Sequence[SandboxPlatform], verify_ticket_valid_for: float,
        callback_ips: Sequence[str] | None, api_ips: Sequence[str] | None, push_every: float | None,
    ) -> None:  # fmt: skip
        self.platforms: dict[str, SandboxPlatform] = {p.component_appid: p for p in platforms}
        """component_appid -> platform."""
        self.verify_ticket_valid_for = verify_ticket_valid_for
        self.callback_ips: list[str] = list(DEFAULT_CALLBACK_IPS if callback_ips is None else callback_ips)
        """What getcallbackip answers: single addresses or CIDR ranges."""
        self.api_ips: list[str] = list(DEFAULT_API_IPS if api_ips is None else api_ips)
        """What get_api_domain_ip answers."""
        self.push_every = push_every
        """When set, `SandboxServer` pushes a ticket to every platform with a callback URL this often."""
        self.push_timeout = PUSH_TIMEOUT
        self.pushes: list[PushResult] = []
        """Every push, in order."""
        # component_appid -> ticket -> when it was pushed (in order: the last is the current one).
        self._verify_tickets: dict[str, dict[str, float]] = {}
        self._authorizations: dict[tuple[str, str], _Authorization] = {}  # (component_appid, authorizer_appid)
        self._codes: dict[str, _AuthorizationCode] = {}

    # -- what WeChat does to a platform ----------------------------------------------------------

    def current_verify_ticket(self, component_appid: str) -> str | None:
        """The ticket pushed last to `component_appid`, if any."""
        tickets = self._verify_tickets.get(component_appid)
        return next(reversed(tickets)) if tickets else None

    async def push_verify_ticket(self, component_appid: str) -> PushResult:
        """Push a new component_verify_ticket (KeyError for an unknown platform); the earlier ones stay good."""
        platform = self.platforms[component_appid]
        now = self._clock()
        ticket = "ticket@@@" + secrets.token_urlsafe(48)
        # Good from its push, whether or not the receiver took it: WeChat does not know.
        self._verify_tickets.setdefault(component_appid, {})[ticket] = now
        return await self._push(platform, {"AppId": component_appid, "CreateTime": str(int(now)),
                                           "InfoType": "component_verify_ticket",
                                           "ComponentVerifyTicket": ticket})  # fmt: skip

    def grant(self, component_appid: str, authorizer_appid: str) -> str:
        """Authorize `component_appid` for `authorizer_appid` with no push; its new refresh token.

        An earlier authorization's refresh token dies (61023); its access tokens live on until their expiry.
        """
        if component_appid not in self.platforms:
            raise KeyError(component_appid)
        refresh_token = "refreshtoken@@@" + secrets.token_urlsafe(32)
        authorization = self._authorizations.get((component_appid, authorizer_appid))
        if authorization is None:
            self._authorizations[(component_appid, authorizer_appid)] = _Authorization(refresh_token)
        else:
            authorization.refresh_token = refresh_token
        return refresh_token

    async def authorize(self, component_appid: str, authorizer_appid: str, *, update: bool = False) -> PushResult:
        """Authorize (`grant`) and push `authorized` (`updateauthorized` with `update`) with a new code."""
        platform = self.platforms[component_appid]
        self.grant(component_appid, authorizer_appid)
        now = self._clock()
        code = "queryauthcode@@@" + secrets.token_urlsafe(48)
        expires_at = now + AUTHORIZATION_CODE_LIFE
        self._codes[code] = _AuthorizationCode(component_appid, authorizer_appid, expires_at)
        return await self._push(platform, {
            "AppId": component_appid, "CreateTime": str(int(now)),
            "InfoType": "updateauthorized" if update else "authorized", "AuthorizerAppid": authorizer_appid,
            "AuthorizationCode": code, "AuthorizationCodeExpiredTime": str(int(expires_at)),
            "PreAuthCode": "preauthcode@@@" + secrets.token_urlsafe(24),
        })  # fmt: skip

    async def unauthorize(self, component_appid: str, authorizer_appid: str) -> PushResult:
        """Withdraw the authorization (its refresh token and access tokens die) and push `unauthorized`."""
        platform = self.platforms[component_appid]
        now = self._clock()
        authorization = self._authorizations.pop((component_appid, authorizer_appid), None)
        for token in authorization.tokens if authorization is not None else ():
            token.expires_at = min(token.expires_at, now - 1)
        return await self._push(platform, {"AppId": component_appid, "CreateTime": str(int(now)),
                                           "InfoType": "unauthorized",
                                           "AuthorizerAppid": authorizer_appid})  # fmt: skip

    async def push_tickets_every(self, every: float) -> None:
        """Push a ticket to every platform with a callback URL now and then every `every` seconds, until cancelled."""
        while True:
            targets = [p.component_appid for p in self.platforms.values() if p.callback_url]
            results = await asyncio.gather(*(self.push_verify_ticket(appid) for appid in targets),
                                           return_exceptions=True)  # one broken platform stops no other  # fmt: skip
            for appid, result in zip(targets, results, strict=True):
                if isinstance(result, BaseException):
                    log.warning("sandbox: no ticket pushed to platform %s (%s)", appid, type(result).__name__)
            await asyncio.sleep(every)

    async def _push(self, platform: SandboxPlatform, fields: dict[str, str]) -> PushResult:
        crypt = MessageCrypt(token=platform.token, aes_key=platform.aes_key, receive_id=platform.component_appid)
        timestamp = str(int(self._clock()))
        nonce = str(secrets.randbelow(10**10))
        body, signature = crypt.seal_push(fields, timestamp=timestamp, nonce=nonce)
        status, answer = 0, ""
        if platform.callback_url:
            query = {"timestamp": timestamp, "nonce": nonce, "encrypt_type": "aes", "msg_signature": signature}
            status, answer = await self._post(platform.callback_url, query, body)
        result = PushResult(status=status, body=answer, fields=fields)
        self.pushes.append(result)
        return result

    async def _post(self, url: str, query: dict[str, str], body: bytes) -> tuple[int, str]:
        timeout = aiohttp.ClientTimeout(total=self.push_timeout)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as http, http.post(
                url, params=query, data=body, headers={"Content-Type": "text/xml"}
            ) as response:  # fmt: skip
                text = (await response.content.read(800)).decode("utf-8", "replace")
                return response.status, text[:200]
        except (aiohttp.ClientError, TimeoutError, ValueError):  # unreachable, refused, too slow, or no URL
            return 0, ""

    # -- HTTP ----------------------------------------------------------------------------------

    def _add_platform_routes(self, app: web.Application) -> None:
        app.router.add_post("/cgi-bin/component/api_component_token", self._api_component_token)
        app.router.add_post("/cgi-bin/component/api_query_auth", self._api_query_auth)
        app.router.add_post("/cgi-bin/component/api_authorizer_token", self._api_authorizer_token)
        app.router.add_get("/cgi-bin/getcallbackip", self._getcallbackip)
        app.router.add_get("/cgi-bin/get_api_domain_ip", self._get_api_domain_ip)
        app.router.add_post("/cgi-bin/callback/check", self._callback_check)
        app.router.add_post("/sandbox/platform/{component_appid}/push-ticket", self._push_ticket_route)
        app.router.add_post("/sandbox/platform/{component_appid}/authorize", self._authorize_route)
        app.router.add_post("/sandbox/platform/{component_appid}/unauthorize", self._unauthorize_route)

    async def _api_component_token(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        return await self._serve(request, "api_component_token", str(body.get("component_appid") or ""),
                                 lambda: self._issue_component_token(request, body), error=_error)  # fmt: skip

    async def _api_query_auth(self, request: web.Request) -> web.StreamResponse:
        value, token = self._component_token(request)
        body = await _json_body(request)
        app_id = str(body.get("component_appid") or (token.app_id if token else ""))
        return await self._serve(request, "api_query_auth", app_id, lambda: self._query_auth(value, token, body),
                                 error=_error)  # fmt: skip

    async def _api_authorizer_token(self, request: web.Request) -> web.StreamResponse:
        value, token = self._component_token(request)
        body = await _json_body(request)
        return await self._serve(request, "api_authorizer_token", str(body.get("authorizer_appid") or ""),
                                 lambda: self._refresh_authorizer(value, token, body), error=_error)  # fmt: skip

    async def _getcallbackip(self, request: web.Request) -> web.StreamResponse:
        return await self._serve_ip_list(request, "getcallbackip")

    async def _get_api_domain_ip(self, request: web.Request) -> web.StreamResponse:
        return await self._serve_ip_list(request, "get_api_domain_ip")

    async def _serve_ip_list(
        self, request: web.Request, api: Literal["getcallbackip", "get_api_domain_ip"]
    ) -> web.StreamResponse:
        value = request.query.get("access_token", "")
        token = self._ops_token(value)

        def handle() -> dict[str, Any]:
            live = self._live_ops_token(value, token)
            if isinstance(live, dict):
                return live
            return {"ip_list": list(self.callback_ips if api == "getcallbackip" else self.api_ips)}

        return await self._serve(request, api, token.app_id if token else "", handle, error=_error)

    async def _callback_check(self, request: web.Request) -> web.StreamResponse:
        value = request.query.get("access_token", "")
        token = self._ops_token(value)
        body = await _json_body(request)
        return await self._serve(request, "callback_check", token.app_id if token else "",
                                 lambda: self._check_callback(value, token, body), error=_error)  # fmt: skip

    # -- answers -----------------------------------------------------------------------------

    def _issue_component_token(self, request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        appid = body.get("component_appid")
        if not appid:
            return _error(41018)
        platform = self.platforms.get(str(appid))
        if platform is None:
            return _error(61011)
        secret = body.get("component_appsecret")
        if not secret:
            return _error(41004)
        if secret != platform.secret:
            return _error(40125)
        ip = request.remote or ""
        if platform.ip_whitelist is not None and ip not in platform.ip_whitelist:
            return _error(61004, f"access clientip is not registered requestIP: {ip}")
        pushed_at = self._verify_tickets.get(platform.component_appid, {}).get(str(body.get("component_verify_ticket")))
        if pushed_at is None:
            return _error(61006)
        now = self._clock()
        if now - pushed_at >= self.verify_ticket_valid_for:
            return _error(61005)
        token = self._mint(platform.component_appid, "component_token", now, self.token_expires_in)
        return {"component_access_token": token.value, "expires_in": self.token_expires_in}

    def _query_auth(self, value: str, named: IssuedCredential | None, body: dict[str, Any]) -> dict[str, Any]:
        token = self._live_component_token(value, named, body)
        if isinstance(token, dict):
            return token
        code_value = str(body.get("authorization_code") or "")
        code = self._codes.get(code_value)
        if code is None or code.component_appid != token.app_id:
            return _error(61009)
        del self._codes[code_value]  # single use, expired or not
        now = self._clock()
        if code.expires_at <= now:
            return _error(61010)
        authorization = self._authorizations.get((code.component_appid, code.authorizer_appid))
        if authorization is None:  # withdrawn since the code was pushed
            return _error(61003)
        access = self._authorizer_token(authorization, code.authorizer_appid, now)
        return {"authorization_info": {
            "authorizer_appid": code.authorizer_appid, "authorizer_access_token": access.value,
            "expires_in": self.token_expires_in, "authorizer_refresh_token": authorization.refresh_token,
            "func_info": [{"funcscope_category": {"id": scope}} for scope in FUNC_SCOPES],
        }}  # fmt: skip

    def _refresh_authorizer(self, value: str, named: IssuedCredential | None, body: dict[str, Any]) -> dict[str, Any]:
        token = self._live_component_token(value, named, body)
        if isinstance(token, dict):
            return token
        authorizer_appid = str(body.get("authorizer_appid") or "")
        authorization = self._authorizations.get((token.app_id, authorizer_appid))
        if authorization is None:
            return _error(61003)
        if body.get("authorizer_refresh_token") != authorization.refresh_token:
            return _error(61023)
        access = self._authorizer_token(authorization, authorizer_appid, self._clock())
        # The same refresh token comes back: it changes only with a re-authorization (B.2, staff).
        return {"authorizer_access_token": access.value, "expires_in": self.token_expires_in,
                "authorizer_refresh_token": authorization.refresh_token}  # fmt: skip

    def _authorizer_token(self, authorization: _Authorization, authorizer_appid: str, now: float) -> IssuedCredential:
        access = self._mint(authorizer_appid, "authorizer_token", now, self.token_expires_in)
        authorization.tokens = [t for t in authorization.tokens if t.expires_at > now]
        authorization.tokens.append(access)
        return access

    def _check_callback(self, value: str, named: IssuedCredential | None, body: dict[str, Any]) -> dict[str, Any]:
        token = self._live_ops_token(value, named)
        if isinstance(token, dict):
            return token
        action, operator = body.get("action"), body.get("check_operator")
        if action not in CHECK_ACTIONS:
            return _error(40202)
        if operator not in CHECK_OPERATORS:
            return _error(40203)
        addresses = self._callback_addresses(token)
        answer: dict[str, Any] = {}
        if action in ("dns", "all"):
            answer["dns"] = [{"ip": ip, "real_operator": SANDBOX_OPERATOR} for ip in addresses]
        if action in ("ping", "all"):
            # DEFAULT pings from the address's own operator; one ping each, so the loss is 0% or 100%.
            origin = SANDBOX_OPERATOR if operator == "DEFAULT" else operator
            answer["ping"] = [{"ip": ip, "from_operator": origin, "package_loss": "0%",
                               "time": f"{self._random.uniform(0.05, 40.0):.3f}ms"} for ip in addresses]  # fmt: skip
        return answer

    def _callback_addresses(self, token: IssuedCredential) -> list[str]:
        """What the callback URL of `token`'s owner resolves to: its host if an address, else loopback."""
        platform = self.platforms.get(token.app_id) if token.kind == "component_token" else None
        host = urlsplit(platform.callback_url).hostname if platform is not None and platform.callback_url else None
        try:
            return [str(ipaddress.ip_address(host or ""))]
        except ValueError:
            return ["127.0.0.1"]

    # -- tokens --------------------------------------------------------------------------------

    def _component_token(self, request: web.Request) -> tuple[str, IssuedCredential | None]:
        """The component token a call names (`component_access_token`, or `access_token` in newer docs)."""
        value = request.query.get("component_access_token") or request.query.get("access_token", "")
        token = self.issued.get(value)
        return value, token if token is not None and token.kind == "component_token" else None

    def _live_component_token(
        self, value: str, token: IssuedCredential | None, body: dict[str, Any]
    ) -> IssuedCredential | dict[str, Any]:
        """The component token, if it may be used for the body's component_appid; else the refusal."""
        if not value:
            return _error(41001)
        if token is None:
            return _error(40001)
        if token.expires_at <= self._clock():
            # Expired on its own: 42001; knocked out before its time: 40001.
            return _error(42001 if token.expires_at >= token.issued_at + self.token_expires_in else 40001)
        component_appid = body.get("component_appid")
        if not component_appid:
            return _error(41018)
        if component_appid != token.app_id:  # another platform's token
            return _error(40001)
        return token

    def _ops_token(self, value: str) -> IssuedCredential | None:
        token = self.issued.get(value)
        return token if token is not None and token.kind in OPS_TOKENS else None

    def _live_ops_token(self, value: str, token: IssuedCredential | None) -> IssuedCredential | dict[str, Any]:
        """The token, if it is live; else the refusal."""
        if not value:
            return _error(41001)
        if token is None or token.expires_at <= self._clock():
            return _error(40001)
        return token

    # -- control routes ------------------------------------------------------------------------

    async def _push_ticket_route(self, request: web.Request) -> web.Response:
        component_appid = request.match_info["component_appid"]
        if component_appid not in self.platforms:
            return _unknown_platform(component_appid)
        return _pushed(await self.push_verify_ticket(component_appid))

    async def _authorize_route(self, request: web.Request) -> web.Response:
        component_appid = request.match_info["component_appid"]
        if component_appid not in self.platforms:
            return _unknown_platform(component_appid)
        body = await _json_body(request)
        authorizer_appid = body.get("appid")
        if not isinstance(authorizer_appid, str) or not authorizer_appid:
            return _control_error(400, 'the body names no authorizer: {"appid": "...", "update": false}')
        return _pushed(await self.authorize(component_appid, authorizer_appid, update=body.get("update") is True))

    async def _unauthorize_route(self, request: web.Request) -> web.Response:
        component_appid = request.match_info["component_appid"]
        if component_appid not in self.platforms:
            return _unknown_platform(component_appid)
        authorizer_appid = (await _json_body(request)).get("appid")
        if not isinstance(authorizer_appid, str) or not authorizer_appid:
            return _control_error(400, 'the body names no authorizer: {"appid": "..."}')
        return _pushed(await self.unauthorize(component_appid, authorizer_appid))


def _pushed(result: PushResult) -> web.Response:
    return web.Response(body=orjson.dumps({"status": result.status, "body": result.body}),
                        content_type="application/json")  # fmt: skip


def _unknown_platform(component_appid: str) -> web.Response:
    return _control_error(404, f"the sandbox knows no platform {component_appid[:64]!r}")


def _control_error(status: int, message: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"error": message}), content_type="application/json")
