"""The WeChat API client: the only code that speaks HTTP to WeChat (httpx 0.28, pinned) and knows errcodes.

It speaks to both of WeChat's APIs for web pages: official accounts' (api.weixin.qq.com) and
WeCom's (qyapi.weixin.qq.com, whose errcodes mean other things: 40001 is a bad secret there, 45009
an hourly limit), and reads the access_token of an external account from the server that owns it.

Every HTTP attempt runs in a slot of the process's `UpstreamScheduler` (its refresh's slot, when a
refresh holds one), so a thousand accounts refreshing together queue in our code, in turn order,
instead of in the HTTP pool. Retries `-1`, HTTP 5xx, timeouts and connection errors with capped
exponential backoff and jitter, within a deadline that starts at a call's first failure (a wait
for a slot never counts). A credential's lifetime counts from the moment the attempt WeChat
answered was sent, never from before a queue wait. A base that fails at the connection level is
skipped for a cool-down and the next base (WECHAT.md §6: api2 is the backup) is tried at once.
Every other errcode becomes a typed exception from `errors.py`, with the AppSecret and the token
scrubbed from its text.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import httpx
import orjson

from jssdk_service.config import TokenURL
from jssdk_service.errors import (
    HourlyLimited,
    QuotaExhausted,
    RateLimited,
    TokenInvalid,
    TokenSourceFailed,
    UpstreamRejected,
    UpstreamUnavailable,
)
from jssdk_service.scheduler import Turn, UpstreamScheduler
from jssdk_service.tokens import AccessToken, JsapiTicket, external_token

# httpx logs every request line at INFO, and getticket's query carries the access_token.
logging.getLogger("httpx").setLevel(logging.WARNING)
logging.getLogger("httpcore").setLevel(logging.WARNING)

API = Literal["token", "stable_token", "getticket", "gettoken", "get_jsapi_ticket", "get_agent_ticket",
              "api_component_token", "api_query_auth", "api_authorizer_token",
              "getcallbackip", "get_api_domain_ip", "callback_check", "quota_get", "clear_quota",
              "component_clear_quota"]  # fmt: skip
Dialect = Literal["wechat", "wecom"]
TicketKind = Literal["jsapi", "corp", "agent"]
"""An official account's jsapi_ticket; a WeCom corp's ticket (wx.config); a WeCom app's (wx.agentConfig)."""
TOKEN_INVALID = frozenset({40001, 40014, 42001})
TICKET_APIS = frozenset({"getticket", "get_jsapi_ticket", "get_agent_ticket"})
# The platform's calls made with its component_access_token: 40001/42001 there mean that token died.
COMPONENT_APIS = frozenset({"api_query_auth", "api_authorizer_token"})
_TOKEN_USING = TICKET_APIS | COMPONENT_APIS
BUSY = -1
MINUTE_QUOTA = 45011
DAILY_QUOTA = 45009  # WeCom: an hourly (or other) frequency limit
WECOM_OVERLOAD = 45033  # WeCom: too many concurrent calls
# Each ticket kind's call: the API's name (for metrics and usage), the path and its fixed parameters.
_TICKET_CALLS: dict[TicketKind, tuple[API, str, dict[str, str]]] = {
    "jsapi": ("getticket", "/cgi-bin/ticket/getticket", {"type": "jsapi"}),
    "corp": ("get_jsapi_ticket", "/cgi-bin/get_jsapi_ticket", {}),
    "agent": ("get_agent_ticket", "/cgi-bin/ticket/get", {"type": "agent_config"}),
}
TICKET_API: dict[TicketKind, API] = {kind: api for kind, (api, _, _) in _TICKET_CALLS.items()}
_QUOTA_FIELDS = ("daily_limit", "used", "remain")

CallObserver = Callable[[str, str, str], None]
"""Called once per HTTP call to WeChat with (app_id, api, outcome): "ok", an errcode, or an exception name."""


# What tests put under the client instead of the network (an httpx transport).
Transport = httpx.AsyncBaseTransport


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How hard one credential fetch tries before it gives up."""

    deadline: float = 15.0
    base_delay: float = 0.2
    max_delay: float = 2.0
    base_cooldown: float = 60.0
    connect_timeout: float = 3.0
    read_timeout: float = 5.0


# WeChat saying a call's appid (41002) or appsecret (41004) is missing: it looked for them elsewhere.
_FIELDS_MISSING = frozenset({41002, 41004})


@dataclass(frozen=True, slots=True)
class _Call:
    """One API call to make: for whom, which API, how; `hidden` are the values scrubbed from errors.

    Its parameters carry the AppSecret or the token, so its repr leaves them out.
    """

    app_id: str
    api: API
    method: str
    path: str
    params: dict[str, str] | None = field(default=None, kw_only=True, repr=False)
    json: dict[str, Any] | None = field(default=None, kw_only=True, repr=False)
    hidden: tuple[str, ...] = field(default=(), kw_only=True, repr=False)
    dialect: Dialect = field(default="wechat", kw_only=True)


@dataclass(frozen=True, slots=True)
class Grant:
    """What WeChat grants a platform for an authorizer: its access token and its refresh token."""

    app_id: str
    token: AccessToken = field(repr=False)
    refresh_token: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Quota:
    """WeChat's own count of one API's calls today (`openapi/quota/get`): the daily limit, used and remaining."""

    daily_limit: int
    used: int
    remain: int


class _Retryable(Exception):
    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome


class WeChatClient:
    """Fetches access_tokens and jsapi_tickets from the first base that answers."""

    def __init__(
        self,
        bases: Sequence[str],
        *,
        wecom_bases: Sequence[str] = ("https://qyapi.weixin.qq.com",),
        policy: RetryPolicy | None = None,
        observers: Sequence[CallObserver] = (),
        clock: Callable[[], float] = time.time,
        scheduler: UpstreamScheduler | None = None,
        transport: Transport | None = None,
    ) -> None:
        self._bases: dict[Dialect, tuple[str, ...]] = {"wechat": tuple(bases), "wecom": tuple(wecom_bases)}
        self._policy = policy = policy or RetryPolicy()
        self._observers = tuple(observers)
        self._clock = clock
        self.scheduler = scheduler = scheduler or UpstreamScheduler(16)
        self._cooling_until: dict[str, float] = {}
        # One connection per slot, so no request ever queues inside the pool. Limits belong on
        # the transport: httpx ignores `limits=` when a transport is passed.
        limits = httpx.Limits(max_connections=scheduler.concurrency, max_keepalive_connections=scheduler.concurrency)
        self._http = httpx.AsyncClient(
            transport=transport or httpx.AsyncHTTPTransport(limits=limits),
            timeout=httpx.Timeout(
                connect=policy.connect_timeout,
                read=policy.read_timeout,
                write=policy.read_timeout,
                pool=policy.connect_timeout,
            ),
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"WeChatClient(bases={self._bases['wechat']!r}, wecom_bases={self._bases['wecom']!r})"

    async def aclose(self) -> None:
        await self._http.aclose()

    def cooling_bases(self) -> list[str]:
        """Bases skipped for now because they failed at the connection level."""
        now = time.monotonic()
        return [base for base, until in self._cooling_until.items() if until > now]

    async def fetch_token(
        self,
        *,
        app_id: str,
        secret: str,
        api: Literal["stable", "classic"],
        force_refresh: bool = False,
        turn: Turn | None = None,
    ) -> AccessToken:
        """A token from `/cgi-bin/stable_token` (default) or the classic `/cgi-bin/token`."""
        turn = turn or self.scheduler.turn()
        if api == "stable":
            # stable_token: the same token for every caller while it is valid; safe across hosts.
            payload = {"grant_type": "client_credential", "appid": app_id, "secret": secret,
                       "force_refresh": force_refresh}  # fmt: skip
            call = _Call(app_id, "stable_token", "POST", "/cgi-bin/stable_token", json=payload, hidden=(secret,))
        else:
            params = {"grant_type": "client_credential", "appid": app_id, "secret": secret}
            call = _Call(app_id, "token", "GET", "/cgi-bin/token", params=params, hidden=(secret,))
        body, sent_at = await self._call(call, turn)
        token = _string_field(body, "access_token", app_id)
        return AccessToken(value=token, obtained_at=sent_at, expires_in=_expires_in(body, app_id))

    async def fetch_wecom_token(self, *, key: str, corp_id: str, secret: str, turn: Turn | None = None) -> AccessToken:
        """A WeCom app's token from `/cgi-bin/gettoken`: per app, since each app's secret gets its own."""
        params = {"corpid": corp_id, "corpsecret": secret}
        call = _Call(key, "gettoken", "GET", "/cgi-bin/gettoken", params=params, hidden=(secret,), dialect="wecom")
        body, sent_at = await self._call(call, turn or self.scheduler.turn())
        token = _string_field(body, "access_token", key)
        return AccessToken(value=token, obtained_at=sent_at, expires_in=_expires_in(body, key))

    async def fetch_ticket(
        self, *, app_id: str, token: AccessToken, turn: Turn | None = None, kind: TicketKind = "jsapi"
    ) -> JsapiTicket:
        """A ticket of `kind`; raises `TokenInvalid` when WeChat no longer accepts `token`."""
        api, path, fixed = _TICKET_CALLS[kind]
        call = _Call(app_id, api, "GET", path, params={"access_token": token.value, **fixed}, hidden=(token.value,),
                     dialect="wechat" if kind == "jsapi" else "wecom")  # fmt: skip
        body, sent_at = await self._call(call, turn or self.scheduler.turn())
        ticket = _string_field(body, "ticket", app_id)
        return JsapiTicket(value=ticket, obtained_at=sent_at, expires_in=_expires_in(body, app_id))

    async def fetch_source_token(self, *, key: str, source: TokenURL, turn: Turn | None = None) -> AccessToken:
        """The access_token the server at `source` owns: one attempt, whose failure says what went wrong.

        The server is not WeChat: it is never retried here (the credential store's schedule does
        that), and its answer is read in the shapes `tokens.external_token` accepts.
        """
        where = source.where
        headers = {} if source.auth is None else {"Authorization": f"Bearer {source.auth.reveal()}"}
        async with self.scheduler.slot(turn or self.scheduler.turn()):
            sent_at = self._clock()
            try:
                response = await self._http.get(source.url, headers=headers)
            except httpx.HTTPError as exc:
                self._observe(key, "token_source", type(exc).__name__)
                fix = "check that the token server is up and reachable from here"
                raise TokenSourceFailed(f"token source {where}: {_failure(exc)}", app_id=key, fix=fix) from None
        status = response.status_code
        if status in (401, 403):
            self._observe(key, "token_source", f"http_{status}")
            raise TokenSourceFailed(f"token source {where} refused our credentials (HTTP {status})", app_id=key,
                                    fix="check token_url_auth_env / token_url_auth_file")  # fmt: skip
        if status != 200:
            self._observe(key, "token_source", f"http_{status}")
            raise TokenSourceFailed(f"token source {where} answered HTTP {status}", app_id=key,
                                    fix="check the token server's own logs")  # fmt: skip
        try:
            token = external_token(orjson.loads(response.content), now=sent_at)
        except (orjson.JSONDecodeError, ValueError) as exc:
            self._observe(key, "token_source", "bad_response")
            problem = "it did not answer JSON" if isinstance(exc, orjson.JSONDecodeError) else str(exc)
            fix = 'the token server must answer {"access_token", "expires_in"}'
            raise TokenSourceFailed(f"token source {where}: {problem}", app_id=key, fix=fix) from None
        self._observe(key, "token_source", "ok")
        return token

    async def fetch_component_token(
        self, *, component_appid: str, secret: str, verify_ticket: str, turn: Turn | None = None
    ) -> AccessToken:
        """A platform's component_access_token, for the latest component_verify_ticket WeChat pushed."""
        payload = {"component_appid": component_appid, "component_appsecret": secret,
                   "component_verify_ticket": verify_ticket}  # fmt: skip
        call = _Call(component_appid, "api_component_token", "POST", "/cgi-bin/component/api_component_token",
                     json=payload, hidden=(secret, verify_ticket))  # fmt: skip
        body, sent_at = await self._call(call, turn or self.scheduler.turn())
        value = _string_field(body, "component_access_token", component_appid)
        return AccessToken(value=value, obtained_at=sent_at, expires_in=_expires_in(body, component_appid))

    async def query_auth(
        self, *, component_appid: str, component_token: AccessToken, code: str, turn: Turn | None = None
    ) -> Grant:
        """What an authorization code grants (`api_query_auth`): the authorizer, its token and refresh token."""
        call = _Call(component_appid, "api_query_auth", "POST", "/cgi-bin/component/api_query_auth",
                     params={"component_access_token": component_token.value},
                     json={"component_appid": component_appid, "authorization_code": code},
                     hidden=(component_token.value, code))  # fmt: skip
        body, sent_at = await self._call(call, turn or self.scheduler.turn())
        info = body.get("authorization_info")
        if not isinstance(info, dict):
            raise UpstreamUnavailable("WeChat answered without 'authorization_info'", app_id=component_appid)
        app_id = _string_field(info, "authorizer_appid", component_appid)
        refresh = info.get("authorizer_refresh_token")
        token = info.get("authorizer_access_token")
        if not isinstance(refresh, str) or not refresh or not isinstance(token, str) or not token:
            # Present only when the account granted the platform API permissions (func_info).
            fix = "the account must authorize the platform with its web page permissions"
            raise UpstreamRejected(0, "the authorization grants no API permissions (no refresh token)",
                                   app_id=app_id, api="api_query_auth", fix=fix)  # fmt: skip
        access = AccessToken(value=token, obtained_at=sent_at, expires_in=_expires_in(info, app_id))
        return Grant(app_id=app_id, token=access, refresh_token=refresh)

    async def fetch_authorizer_token(
        self, *, component_appid: str, component_token: AccessToken, app_id: str, refresh_token: str,
        turn: Turn | None = None,
    ) -> Grant:  # fmt: skip
        """An authorizer's access token from its refresh token (`api_authorizer_token`), and the refresh
        token WeChat answers with (the same one, unless it says otherwise)."""
        payload = {"component_appid": component_appid, "authorizer_appid": app_id,
                   "authorizer_refresh_token": refresh_token}  # fmt: skip
        call = _Call(app_id, "api_authorizer_token", "POST", "/cgi-bin/component/api_authorizer_token",
                     params={"component_access_token": component_token.value}, json=payload,
                     hidden=(component_token.value, refresh_token))  # fmt: skip
        body, sent_at = await self._call(call, turn or self.scheduler.turn())
        token = _string_field(body, "authorizer_access_token", app_id)
        refresh = body.get("authorizer_refresh_token")
        access = AccessToken(value=token, obtained_at=sent_at, expires_in=_expires_in(body, app_id))
        return Grant(app_id=app_id, token=access, refresh_token=refresh if isinstance(refresh, str) and refresh
                     else refresh_token)  # fmt: skip

    async def fetch_quota(self, *, app_id: str, token: AccessToken, cgi_path: str) -> Quota:
        """WeChat's daily limit, used and remaining calls of the API at `cgi_path` for the token's account
        (`openapi/quota/get`, WECOM_PLATFORM.md C.3); its answer is live, as some limits change."""
        call = _Call(app_id, "quota_get", "POST", "/cgi-bin/openapi/quota/get", params={"access_token": token.value},
                     json={"cgi_path": cgi_path}, hidden=(token.value,))  # fmt: skip
        quota = (await self._ops_call(call)).get("quota")
        # type() rather than isinstance: a JSON true is no count.
        if not isinstance(quota, dict) or not all(type(quota.get(n)) is int and quota[n] >= 0 for n in _QUOTA_FIELDS):
            raise UpstreamUnavailable(f"WeChat quota/get answered no daily_limit, used and remain for {cgi_path}",
                                      app_id=app_id, api=call.api)  # fmt: skip
        return Quota(daily_limit=quota["daily_limit"], used=quota["used"], remain=quota["remain"])

    async def clear_quota(self, *, app_id: str, secret: str) -> None:
        """Reset the account's daily quotas with its AppSecret (`clear_quota/v2`: no token needed, so it helps
        when the token API's own quota is spent); one of the 10 resets WeChat allows an account a month."""
        # WeChat's docs put appid and appsecret in the JSON body or in the query (the SDKs'): the body first (no
        # secret in a URL a proxy logs); when WeChat answers that they are missing (41002, 41004: no reset
        # spent), the query.
        fields = {"appid": app_id, "appsecret": secret}
        call = _Call(app_id, "clear_quota", "POST", "/cgi-bin/clear_quota/v2", json=fields, hidden=(secret,))
        try:
            await self._call_once(call)
        except UpstreamRejected as exc:
            if exc.errcode not in _FIELDS_MISSING:
                raise
            await self._call_once(replace(call, json=None, params=fields))

    async def clear_authorizer_quota(self, *, component_appid: str, secret: str, app_id: str) -> None:
        """Reset an authorizer's daily quotas on its behalf with the platform's secret
        (`component/clear_quota/v2`, WECOM_PLATFORM.md B.5); one of the authorizer's 10 resets a month."""
        payload = {"component_appid": component_appid, "appsecret": secret, "appid": app_id}
        call = _Call(app_id, "component_clear_quota", "POST", "/cgi-bin/component/clear_quota/v2", json=payload,
                     hidden=(secret,))  # fmt: skip
        try:
            await self._call_once(call)
        except UpstreamRejected as exc:
            fix = _COMPONENT_FIXES.get(exc.errcode)
            if fix is None:
                raise
            raise UpstreamRejected(exc.errcode, exc.errmsg, app_id=app_id, api=call.api, fix=fix) from None

    async def _call_once(self, call: _Call) -> dict[str, Any]:
        """One attempt, never retried: for a call that spends something scarce (a quota reset), where a retry
        after a lost answer could spend it twice."""
        try:
            body, _ = await self._try_bases(call, self.scheduler.turn())
        except _Retryable as exc:
            message = f"WeChat {call.api} failed ({exc}); whether it took effect is unknown: look at the quota first"
            raise UpstreamUnavailable(message, app_id=call.app_id, api=call.api) from None
        return body

    async def _call(self, call: _Call, turn: Turn) -> tuple[dict[str, Any], float]:
        """WeChat's answer, and when the request it answers was sent (`clock` time)."""
        policy = self._policy
        give_up_at: float | None = None
        attempt = 0
        while True:
            try:
                return await self._try_bases(call, turn)
            except _Retryable as exc:
                attempt += 1
                if give_up_at is None:
                    give_up_at = time.monotonic() + policy.deadline
                delay = min(policy.max_delay, policy.base_delay * 2.0 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                if time.monotonic() + delay >= give_up_at:
                    raise UpstreamUnavailable(
                        f"WeChat {call.api} failed {attempt} times, last: {exc}", app_id=call.app_id, api=call.api
                    ) from None
                await asyncio.sleep(delay)

    async def _try_bases(self, call: _Call, turn: Turn) -> tuple[dict[str, Any], float]:
        """One attempt: the bases in order, skipping cooling ones, moving on after connection failures."""
        last = _Retryable("no_base", "no base configured")
        app_id, api = call.app_id, call.api
        for base in self._ordered_bases(call.dialect):
            try:
                async with self.scheduler.slot(turn):
                    sent_at = self._clock()
                    response = await self._http.request(call.method, base + call.path, params=call.params,
                                                        json=call.json)  # fmt: skip
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                self._cooling_until[base] = time.monotonic() + self._policy.base_cooldown
                self._observe(app_id, api, type(exc).__name__)
                last = _Retryable(type(exc).__name__, f"{base}: cannot connect ({type(exc).__name__})")
                continue
            except httpx.HTTPError as exc:
                self._observe(app_id, api, type(exc).__name__)
                raise _Retryable(type(exc).__name__, f"{base}: {type(exc).__name__}") from None
            self._cooling_until.pop(base, None)
            return self._read(call, base, response), sent_at
        raise last

    def _read(self, call: _Call, base: str, response: httpx.Response) -> dict[str, Any]:
        app_id, api = call.app_id, call.api
        if response.status_code >= 500:
            self._observe(app_id, api, f"http_{response.status_code}")
            raise _Retryable("http", f"{base}: HTTP {response.status_code}")
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            self._observe(app_id, api, "bad_response")
            raise _Retryable("bad_response", f"{base}: HTTP {response.status_code} without a JSON object")
        errcode = body.get("errcode", 0)
        errcode = errcode if isinstance(errcode, int) else -1
        self._observe(app_id, api, "ok" if errcode == 0 else str(errcode))
        if errcode == 0:
            return body
        errmsg = _scrub(str(body.get("errmsg", "")), call.hidden)
        wecom = call.dialect == "wecom"
        if errcode == BUSY or (wecom and errcode == WECOM_OVERLOAD):
            raise _Retryable(str(errcode), f"{base}: errcode {errcode} (system busy)")
        if errcode in TOKEN_INVALID and api in _TOKEN_USING:
            raise TokenInvalid(errcode, errmsg, app_id=app_id, api=api)
        if errcode == MINUTE_QUOTA:
            raise RateLimited(f"WeChat errcode 45011: {errmsg}", app_id=app_id, api=api)
        fix = fix_for(errcode, errmsg, api, call.dialect)
        if wecom and errcode == DAILY_QUOTA:
            raise HourlyLimited(f"WeCom errcode 45009: {errmsg}; {fix}", app_id=app_id, api=api)
        if errcode == DAILY_QUOTA:
            raise QuotaExhausted(errcode, errmsg, app_id=app_id, api=api, fix=fix)
        raise UpstreamRejected(errcode, errmsg, app_id=app_id, api=api, fix=fix)

    def _ordered_bases(self, dialect: Dialect) -> list[str]:
        now = time.monotonic()
        bases = self._bases[dialect]
        ready = [base for base in bases if self._cooling_until.get(base, 0.0) <= now]
        # When every base is cooling, try them all, the one that cools first first.
        return ready or sorted(bases, key=lambda base: self._cooling_until.get(base, 0.0))

    async def fetch_ip_list(
        self, *, app_id: str, token: AccessToken, which: Literal["callback", "api"], wecom: bool = False
    ) -> list[str]:
        """WeChat's current IP list, each entry a single IP or a CIDR range (WECOM_PLATFORM.md C.1): where
        its pushes come from (`callback`), or its API's entry points (`api`); WeCom's when `wecom`."""
        api: API = "getcallbackip" if which == "callback" else "get_api_domain_ip"
        call = _Call(app_id, api, "GET", f"/cgi-bin/{api}", params={"access_token": token.value},
                     hidden=(token.value,), dialect="wecom" if wecom else "wechat")  # fmt: skip
        entries = (await self._ops_call(call)).get("ip_list")
        if not isinstance(entries, list) or not entries:
            raise UpstreamUnavailable(f"WeChat {api} answered no 'ip_list' (or an empty one)", app_id=app_id, api=api)
        for entry in entries:
            try:
                # ip_network would take an int too: only text is an address here.
                ipaddress.ip_network(entry if isinstance(entry, str) else "", strict=False)
            except ValueError:
                shown = repr(entry)[:60]
                raise UpstreamUnavailable(f"WeChat {api} answered {shown} in 'ip_list', which is not an IP address or "
                                          "range", app_id=app_id, api=api) from None  # fmt: skip
        return list(entries)

    async def check_callback(self, *, app_id: str, token: AccessToken, action: str, operator: str) -> dict[str, Any]:
        """WeChat's network check of the account's callback URL (`callback/check`, WECOM_PLATFORM.md C.2):
        its answer, `{"dns": [...], "ping": [...]}`, without errcode and errmsg."""
        call = _Call(app_id, "callback_check", "POST", "/cgi-bin/callback/check", params={"access_token": token.value},
                     json={"action": action, "check_operator": operator}, hidden=(token.value,))  # fmt: skip
        try:
            body = await self._ops_call(call)
        except UpstreamRejected as exc:
            fix = {40201: "no callback URL is configured for the account (or it is not valid): set it in the admin "
                          "console", 40202: "action must be dns, ping or all",
                   40203: "check_operator must be CHINANET, UNICOM, CAP or DEFAULT"}.get(exc.errcode)  # fmt: skip
            if fix is None:
                raise
            raise UpstreamRejected(exc.errcode, exc.errmsg, app_id=app_id, api=call.api, fix=fix) from None
        return {key: value for key, value in body.items() if key not in ("errcode", "errmsg")}

    async def _ops_call(self, call: _Call) -> dict[str, Any]:
        """The answer of an operations API called with an access_token, where 40001/40014/42001 mean that
        token died (`TokenInvalid`), never a refused AppSecret."""
        try:
            body, _ = await self._call(call, self.scheduler.turn())
        except UpstreamRejected as exc:
            if exc.errcode in TOKEN_INVALID:
                raise TokenInvalid(exc.errcode, exc.errmsg, app_id=call.app_id, api=call.api) from None
            raise
        return body

    def observe(self, app_id: str, api: str, outcome: str) -> None:
        """Tell the call observers (metrics, the daily counts) of a call made elsewhere: a token source's
        read from Redis."""
        self._observe(app_id, api, outcome)

    def _observe(self, app_id: str, api: str, outcome: str) -> None:
        for observer in self._observers:
            observer(app_id, api, outcome)


_FIXES = {
    40001: "WeChat refused the AppSecret: check the account's secret (JSSDK_APP_SECRET or its file)",
    40002: "the grant type was refused: report this as a jssdk-service bug",
    40013: "WeChat does not know this appId: check app_id (JSSDK_APP_ID)",
    40125: "WeChat refused the AppSecret: check the account's secret (JSSDK_APP_SECRET or its file)",
    40243: "the AppSecret is frozen: unfreeze or reset it in the WeChat admin console",
    41002: "the appId is missing: set app_id (JSSDK_APP_ID)",
    41004: "the AppSecret is missing: set the account's secret",
    45009: "the daily quota is spent: calls resume after midnight China time, or reset it with "
    'POST /admin/apps/{app}/clear-quota {"confirm": "{app}"} (10 times a month)',
    48001: "the account lacks permission for this API: check its verification and interface permissions",
    48006: "this month's 10 quota resets are used: the daily quotas come back at midnight China time, and the "
    "resets next month",
    50004: "the account is frozen: see the WeChat admin console",
    50007: "the account is limited: see the WeChat admin console",
    76021: "WeChat knows no API at this cgi_path: report this as a jssdk-service bug",
    76022: "WeChat tells no quota of this API to this token's account (it does not for /sns/ APIs, nor for APIs the "
    "account may not call)",
}


_WECOM_FIXES = {
    40001: "WeCom refused the secret: check the app's secret (secret_env or secret_file) in the admin console",
    40013: "WeCom does not know this corp: check corp_id (我的企业 → 企业ID)",
    40014: "WeCom refused the access_token: it is replaced automatically",
    40056: "WeCom does not know this agent: check agent_id (应用管理 → the app → AgentId)",
    40091: "the secret is not this corp's app's: check corp_id and the app's secret",
    41002: "the corp_id is missing: set corp_id",
    41004: "the secret is missing: set the app's secret",
    42001: "the access_token expired: it is replaced automatically",
    45009: "WeCom's hourly limit is spent (tickets: 400 a corp, 100 an app): calls resume within the hour",
    48002: "the app may not call this API: grant it in the admin console, or add this server's IP as trusted",
    80001: "the page's domain is not a trusted domain of the app: verify it in the admin console (可信域名)",
}


_PUSHES = (
    "WeChat pushes a new one every 10 minutes to /v1/platform/<component_appid>/events: check that "
    "they arrive (the platform's 授权事件接收URL, and the callback allow list: "
    "jssdk-service wechat-ips --callback)"
)
_COMPONENT_FIXES = {
    40125: "WeChat refused the component_appsecret: check the platform's secret (secret_env or secret_file)",
    41004: "the component_appsecret is missing: set the platform's secret",
    41018: "the component_appid is missing: report this as a jssdk-service bug",
    61003: "the account has not authorized the platform (or withdrew it): it must authorize it again",
    61005: f"the component_verify_ticket expired: {_PUSHES}",
    61006: f"the component_verify_ticket is not valid: {_PUSHES}",
    61009: "the authorization code is not valid (or was used): authorize again",
    61010: "the authorization code expired: authorize again",
    61011: "WeChat does not know this platform: check component_appid",
    61023: "the authorizer's refresh token is no longer valid (it authorized again, or withdrew): it must "
    "authorize the platform again",
}


def fix_for(errcode: int, errmsg: str, api: str, dialect: Dialect = "wechat") -> str:
    """What an operator should do about a refused call, in one sentence."""
    if dialect == "wecom":
        if errcode == 60020:
            found = re.search(r"from ip: ?([0-9a-fA-F.:]+)", errmsg)
            ip = found.group(1) if found else "this server's egress IP"
            return f"add {ip} to the app's trusted IPs (企业可信IP) in the WeCom admin console; applies within a minute"
        return _WECOM_FIXES.get(errcode, "see WeCom's errcode list; retrying on a slow schedule")
    if errcode in (40164, 61004):
        found = re.search(r"(?:invalid ip|requestIP:?) ?([0-9a-fA-F.:]+)", errmsg)
        ip = found.group(1) if found else "this server's egress IP"
        if api == "api_component_token" or api in COMPONENT_APIS:
            return f"add {ip} to the platform's IP whitelist (白名单IP地址列表) in the open platform console"
        return f"add {ip} to the account's API IP whitelist in the WeChat admin console"
    if api == "api_component_token" or api in COMPONENT_APIS:
        found_fix = _COMPONENT_FIXES.get(errcode)
        if found_fix is not None:
            return found_fix
    if 89501 <= errcode <= 89507:
        return "WeChat is waiting for the account administrator to confirm this IP: retrying later"
    if errcode == 40001 and api == "getticket":
        return "the access_token was refused: it is replaced automatically"
    return _FIXES.get(errcode, "see WeChat's errcode list; retrying on a slow schedule")


def _failure(exc: httpx.HTTPError) -> str:
    """How a request to a token source failed, in a few words."""
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    if isinstance(exc, httpx.ConnectError):
        return "cannot connect"
    return f"request failed ({type(exc).__name__})"


def _scrub(text: str, hidden: tuple[str, ...]) -> str:
    for value in hidden:
        if value:
            text = text.replace(value, "***")
    return text


def _string_field(body: dict[str, Any], key: str, app_id: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise UpstreamUnavailable(f"WeChat answered without {key!r}", app_id=app_id)
    return value


def _expires_in(body: dict[str, Any], app_id: str) -> float:
    value = body.get("expires_in")
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise UpstreamUnavailable("WeChat answered without a positive 'expires_in'", app_id=app_id)
    return float(value)
