"""The sandbox emulates the open platform: sealed pushes, component and authorizer tokens, and the operations APIs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from jssdk_service.msgcrypt import MessageCrypt, MessageRejected
from jssdk_service.sandbox import PushResult, SandboxAccount, SandboxServer, WeChatSandbox
from jssdk_service.sandbox_platform import SandboxPlatform
from jssdk_service.signing import sign_url

COMPONENT = "wx0000000000000c01"
COMPONENT_SECRET = "component-secret-value-0123456789abcdef"
MESSAGE_TOKEN = "platform-message-token"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
AUTHORIZER = "wxa00000000000a001"
APP_ID = "wx1234567890abcdef"
SECRET = "s3cr3t-app-secret-value-0123456789"
PAGE = "https://example.com/p?x=1"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class Receiver:
    """A platform's 授权事件接收URL on loopback: opens each push as the service would and answers success."""

    url: str = ""
    fields: list[dict[str, str]] = field(default_factory=list)
    requests: list[tuple[dict[str, str], str, bytes]] = field(default_factory=list)  # query, content type, body
    crypt: MessageCrypt = field(default_factory=lambda: MessageCrypt(token=MESSAGE_TOKEN, aes_key=AES_KEY,
                                                                     receive_id=COMPONENT))  # fmt: skip

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        query = dict(request.query)
        self.requests.append((query, request.content_type, body))
        try:
            opened = self.crypt.open_push(body, timestamp=query.get("timestamp", ""), nonce=query.get("nonce", ""),
                                          msg_signature=query.get("msg_signature", ""))  # fmt: skip
        except MessageRejected as exc:
            return web.Response(status=400, text=exc.reason)
        self.fields.append(opened)
        return web.Response(text="success")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """The receiver, served on a free loopback port."""
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/events", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    receiver.url = f"http://{host}:{port}/events"
    yield receiver
    await runner.cleanup()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def platform_sandbox(clock: Clock, receiver: Receiver) -> WeChatSandbox:
    """An emulator with one official account and one platform that pushes to `receiver`."""
    platform = SandboxPlatform(component_appid=COMPONENT, secret=COMPONENT_SECRET, token=MESSAGE_TOKEN,
                               aes_key=AES_KEY, callback_url=receiver.url)  # fmt: skip
    return WeChatSandbox([SandboxAccount(app_id=APP_ID, secret=SECRET)], platforms=[platform], seed=7, clock=clock)


@pytest.fixture
async def base(platform_sandbox: WeChatSandbox) -> AsyncIterator[str]:
    """The emulator over HTTP on loopback."""
    server = SandboxServer(platform_sandbox)
    yield await server.start()
    await server.stop()


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any], **params: str) -> dict[str, Any]:
    async with http.post(url, json=body, params=params) as response:
        return dict(await response.json())


async def get(http: aiohttp.ClientSession, url: str, **params: str) -> dict[str, Any]:
    async with http.get(url, params=params) as response:
        return dict(await response.json())


async def component_token(
    http: aiohttp.ClientSession, base: str, ticket: str | None, **overrides: str
) -> dict[str, Any]:
    body = {"component_appid": COMPONENT, "component_appsecret": COMPONENT_SECRET,
            "component_verify_ticket": ticket, **overrides}  # fmt: skip
    return await post(http, f"{base}/cgi-bin/component/api_component_token", body)


async def token_of(http: aiohttp.ClientSession, base: str, sandbox: WeChatSandbox) -> str:
    """A component token, with the ticket last pushed (pushing one first if none was)."""
    if sandbox.current_verify_ticket(COMPONENT) is None:
        await sandbox.push_verify_ticket(COMPONENT)
    return str((await component_token(http, base, sandbox.current_verify_ticket(COMPONENT)))["component_access_token"])


async def query_auth(http: aiohttp.ClientSession, base: str, token: str, code: str, **params: str) -> dict[str, Any]:
    return await post(http, f"{base}/cgi-bin/component/api_query_auth",
                      {"component_appid": COMPONENT, "authorization_code": code},
                      **(params or {"component_access_token": token}))  # fmt: skip


async def refresh(http: aiohttp.ClientSession, base: str, token: str, refresh_token: str) -> dict[str, Any]:
    body = {"component_appid": COMPONENT, "authorizer_appid": AUTHORIZER, "authorizer_refresh_token": refresh_token}
    return await post(http, f"{base}/cgi-bin/component/api_authorizer_token", body, component_access_token=token)


async def jsapi_ticket(http: aiohttp.ClientSession, base: str, access_token: str) -> dict[str, Any]:
    return await get(http, f"{base}/cgi-bin/ticket/getticket", access_token=access_token, type="jsapi")


async def verify(http: aiohttp.ClientSession, base: str, app_id: str, ticket: str) -> str:
    """What wx.config reports for `PAGE` signed with `ticket` for `app_id`."""
    nonce, timestamp = "n0nce", 1700000000
    body = {"appId": app_id, "url": PAGE, "nonceStr": nonce, "timestamp": timestamp,
            "signature": sign_url(ticket=ticket, nonce=nonce, timestamp=timestamp, url=PAGE)}  # fmt: skip
    return str((await post(http, f"{base}/sandbox/verify", body))["errMsg"])


# -- pushes ---------------------------------------------------------------------------------


async def test_a_ticket_push_is_sealed_as_wechat_seals_it(
    platform_sandbox: WeChatSandbox, receiver: Receiver, base: str
) -> None:
    """A ticket push is an encrypted, signed text/xml POST that opens to a new ComponentVerifyTicket, recorded."""
    first = await platform_sandbox.push_verify_ticket(COMPONENT)
    second = await platform_sandbox.push_verify_ticket(COMPONENT)
    assert (first.status, first.body) == (second.status, second.body) == (200, "success")
    opened = receiver.fields[0]
    assert opened == first.fields
    assert opened["InfoType"] == "component_verify_ticket" and opened["AppId"] == COMPONENT
    assert opened["ComponentVerifyTicket"] != receiver.fields[1]["ComponentVerifyTicket"]
    assert platform_sandbox.current_verify_ticket(COMPONENT) == second.fields["ComponentVerifyTicket"]
    assert platform_sandbox.pushes == [first, second]
    query, content_type, body = receiver.requests[0]
    assert query["encrypt_type"] == "aes" and query["nonce"].isdigit() and query["timestamp"].isdigit()
    assert content_type == "text/xml" and body.startswith(f"<xml><AppId><![CDATA[{COMPONENT}]]></AppId>".encode())
    assert opened["ComponentVerifyTicket"].encode() not in body
    shown = repr(first) + repr(platform_sandbox.platforms[COMPONENT])
    for secret in (opened["ComponentVerifyTicket"], COMPONENT_SECRET, MESSAGE_TOKEN, AES_KEY):
        assert secret not in shown


async def test_an_unreachable_receiver_is_status_0_and_the_ticket_still_counts(
    platform_sandbox: WeChatSandbox, base: str, http: aiohttp.ClientSession
) -> None:
    """A push nobody takes is recorded with status 0, and its ticket is as good as any pushed one."""
    platform_sandbox.platforms[COMPONENT].callback_url = "http://127.0.0.1:9/events"
    pushed = await platform_sandbox.push_verify_ticket(COMPONENT)
    assert (pushed.status, pushed.body) == (0, "") and platform_sandbox.pushes == [pushed]
    answer = await component_token(http, base, pushed.fields["ComponentVerifyTicket"])
    assert "component_access_token" in answer


async def test_control_routes_push_and_answer_what_the_receiver_said(
    platform_sandbox: WeChatSandbox, receiver: Receiver, base: str, http: aiohttp.ClientSession
) -> None:
    """The /sandbox/platform routes push a ticket, an authorization and an unauthorization; unknown platforms are 404."""
    route = f"{base}/sandbox/platform/{COMPONENT}"
    assert await post(http, f"{route}/push-ticket", {}) == {"status": 200, "body": "success"}
    assert await post(http, f"{route}/authorize", {"appid": AUTHORIZER, "update": True}) == {
        "status": 200, "body": "success"}  # fmt: skip
    assert await post(http, f"{route}/unauthorize", {"appid": AUTHORIZER}) == {"status": 200, "body": "success"}
    assert [f["InfoType"] for f in receiver.fields] == ["component_verify_ticket", "updateauthorized", "unauthorized"]
    async with http.post(f"{base}/sandbox/platform/wx000000000000none/push-ticket") as response:
        assert response.status == 404 and "error" in await response.json()
    async with http.post(f"{route}/authorize", json={}) as response:
        assert response.status == 400


# -- the component token --------------------------------------------------------------------


async def test_a_pushed_ticket_gets_component_tokens_and_earlier_tickets_stay_good(
    platform_sandbox: WeChatSandbox, base: str, http: aiohttp.ClientSession
) -> None:
    """Any ticket pushed in the last 12 hours gets a new component token each call; earlier tokens keep working."""
    first = (await platform_sandbox.push_verify_ticket(COMPONENT)).fields["ComponentVerifyTicket"]
    await platform_sandbox.push_verify_ticket(COMPONENT)
    one = await component_token(http, base, first)
    two = await component_token(http, base, platform_sandbox.current_verify_ticket(COMPONENT))
    assert one["expires_in"] == two["expires_in"] == 7200
    assert one["component_access_token"] != two["component_access_token"]
    for token in (one["component_access_token"], two["component_access_token"]):
        assert "ip_list" in await get(http, f"{base}/cgi-bin/get_api_domain_ip", access_token=token)
    assert platform_sandbox.count("api_component_token", COMPONENT, ok_only=True) == 2


async def test_component_token_errcodes(
    platform_sandbox: WeChatSandbox, clock: Clock, base: str, http: aiohttp.ClientSession
) -> None:
    """Missing or unknown platform, missing or wrong secret, an unknown or expired ticket and a caller off the
    whitelist get WeChat's errcodes; an injected fault reads as WeChat's."""
    ticket = (await platform_sandbox.push_verify_ticket(COMPONENT)).fields["ComponentVerifyTicket"]

    async def errcode(**overrides: str) -> int:
        return int((await component_token(http, base, ticket, **overrides)).get("errcode", 0))

    assert await errcode(component_appid="") == 41018
    assert await errcode(component_appid="wx000000000000none") == 61011
    assert await errcode(component_appsecret="") == 41004
    assert await errcode(component_appsecret="wrong") == 40125
    assert await errcode(component_verify_ticket="ticket@@@never-pushed") == 61006
    platform_sandbox.platforms[COMPONENT].ip_whitelist = frozenset({"10.1.2.3"})
    refused = await component_token(http, base, ticket)
    assert refused["errcode"] == 61004
    assert refused["errmsg"].startswith("access clientip is not registered requestIP: 127.0.0.1 rid: ")
    platform_sandbox.platforms[COMPONENT].ip_whitelist = frozenset({"127.0.0.1"})
    assert await errcode() == 0
    clock.now += 43200
    assert await errcode() == 61005
    platform_sandbox.faults.script.append(61005)
    assert (await component_token(http, base, ticket))["errmsg"].startswith("component ticket is expired rid: ")
    assert platform_sandbox.count("api_component_token", COMPONENT) == 7
    assert platform_sandbox.count("api_component_token", COMPONENT, ok_only=True) == 1


# -- authorizations -------------------------------------------------------------------------


async def test_an_authorization_ends_in_a_verified_config_for_the_authorizer(
    platform_sandbox: WeChatSandbox, receiver: Receiver, base: str, http: aiohttp.ClientSession
) -> None:
    """authorize → api_query_auth (once) → api_authorizer_token → getticket: a config signed with that ticket
    verifies for the authorizer's appid, and knocking its tokens out stops its ticket calls."""
    token = await token_of(http, base, platform_sandbox)
    pushed = await platform_sandbox.authorize(COMPONENT, AUTHORIZER)
    assert (pushed.status, pushed.body) == (200, "success")
    event = receiver.fields[-1]
    assert event["InfoType"] == "authorized" and event["AuthorizerAppid"] == AUTHORIZER
    assert int(event["AuthorizationCodeExpiredTime"]) == int(event["CreateTime"]) + 600
    assert event["PreAuthCode"] and event["AppId"] == COMPONENT
    info = (await query_auth(http, base, token, event["AuthorizationCode"]))["authorization_info"]
    assert info["authorizer_appid"] == AUTHORIZER and info["expires_in"] == 7200
    assert {"funcscope_category": {"id": 1}} in info["func_info"]
    again = await query_auth(http, base, token, event["AuthorizationCode"], access_token=token)
    assert again["errcode"] == 61009  # single use
    refreshed = await refresh(http, base, token, info["authorizer_refresh_token"])
    assert refreshed["authorizer_refresh_token"] == info["authorizer_refresh_token"]
    assert refreshed["authorizer_access_token"] != info["authorizer_access_token"]
    ticket = await jsapi_ticket(http, base, refreshed["authorizer_access_token"])
    assert ticket["errcode"] == 0
    assert await verify(http, base, AUTHORIZER, ticket["ticket"]) == "config:ok"
    assert await verify(http, base, APP_ID, ticket["ticket"]) == "config:invalid signature"
    assert [t.value for t in platform_sandbox.tickets(AUTHORIZER)] == [ticket["ticket"]]
    assert platform_sandbox.count("getticket", AUTHORIZER) == 1
    assert platform_sandbox.count("api_query_auth", COMPONENT) == 2
    assert platform_sandbox.count("api_authorizer_token", AUTHORIZER, ok_only=True) == 1
    platform_sandbox.knock_out_tokens(AUTHORIZER)
    assert (await jsapi_ticket(http, base, info["authorizer_access_token"]))["errcode"] == 40001


async def test_authorization_codes_and_component_tokens_are_checked(
    platform_sandbox: WeChatSandbox, clock: Clock, base: str, http: aiohttp.ClientSession
) -> None:
    """An unknown or expired code, and a missing, unknown or expired component token, get WeChat's errcodes."""
    token = await token_of(http, base, platform_sandbox)
    code = (await platform_sandbox.authorize(COMPONENT, AUTHORIZER)).fields["AuthorizationCode"]
    assert (await query_auth(http, base, token, "queryauthcode@@@made-up"))["errcode"] == 61009
    assert (await query_auth(http, base, "", code, access_token=""))["errcode"] == 41001
    assert (await query_auth(http, base, "made-up", code))["errcode"] == 40001
    official = await get(http, f"{base}/cgi-bin/token", grant_type="client_credential", appid=APP_ID, secret=SECRET)
    assert (await query_auth(http, base, official["access_token"], code))["errcode"] == 40001
    clock.now += 600
    assert (await query_auth(http, base, token, code))["errcode"] == 61010
    clock.now += 6600
    assert (await query_auth(http, base, token, code))["errcode"] == 42001


async def test_a_reauthorization_makes_the_old_refresh_token_invalid(
    platform_sandbox: WeChatSandbox, receiver: Receiver, base: str, http: aiohttp.ClientSession
) -> None:
    """Each (re-)authorization issues a new refresh token; the previous one gets 61023 and the new one works."""
    token = await token_of(http, base, platform_sandbox)
    old = platform_sandbox.grant(COMPONENT, AUTHORIZER)
    assert "authorizer_access_token" in await refresh(http, base, token, old)
    await platform_sandbox.authorize(COMPONENT, AUTHORIZER, update=True)
    assert receiver.fields[-1]["InfoType"] == "updateauthorized"
    assert (await refresh(http, base, token, old))["errcode"] == 61023
    new = (await query_auth(http, base, token, receiver.fields[-1]["AuthorizationCode"]))["authorization_info"]
    assert new["authorizer_refresh_token"] != old
    assert "authorizer_access_token" in await refresh(http, base, token, new["authorizer_refresh_token"])


async def test_an_unauthorization_kills_the_refresh_token_and_the_tokens(
    platform_sandbox: WeChatSandbox, receiver: Receiver, base: str, http: aiohttp.ClientSession
) -> None:
    """After `unauthorized` the refresh gets 61003 and the authorizer's tokens 40001; its tickets live on."""
    token = await token_of(http, base, platform_sandbox)
    refresh_token = platform_sandbox.grant(COMPONENT, AUTHORIZER)
    access = (await refresh(http, base, token, refresh_token))["authorizer_access_token"]
    ticket = (await jsapi_ticket(http, base, access))["ticket"]
    pushed = await platform_sandbox.unauthorize(COMPONENT, AUTHORIZER)
    assert pushed.status == 200
    assert receiver.fields[-1] == {"AppId": COMPONENT, "CreateTime": receiver.fields[-1]["CreateTime"],
                                   "InfoType": "unauthorized", "AuthorizerAppid": AUTHORIZER}  # fmt: skip
    assert (await refresh(http, base, token, refresh_token))["errcode"] == 61003
    assert (await jsapi_ticket(http, base, access))["errcode"] == 40001
    assert await verify(http, base, AUTHORIZER, ticket) == "config:ok"


# -- operations APIs ------------------------------------------------------------------------


async def test_ip_lists_answer_any_live_token(
    platform_sandbox: WeChatSandbox, base: str, http: aiohttp.ClientSession
) -> None:
    """getcallbackip and get_api_domain_ip answer an official, a platform's or an authorizer's token; no or a dead
    token gets 41001 or 40001."""
    official = (await get(http, f"{base}/cgi-bin/token", grant_type="client_credential", appid=APP_ID,
                          secret=SECRET))["access_token"]  # fmt: skip
    component = await token_of(http, base, platform_sandbox)
    authorizer = (await refresh(http, base, component, platform_sandbox.grant(COMPONENT, AUTHORIZER)))[
        "authorizer_access_token"]  # fmt: skip
    callback = await get(http, f"{base}/cgi-bin/getcallbackip", access_token=official)
    assert {"81.69.103.0/24", "81.69.101.0/24", "175.24.211.0/24", "101.226.103.0/24"} <= set(callback["ip_list"])
    platform_sandbox.callback_ips = ["127.0.0.2/32"]
    for token in (official, component, authorizer):
        assert (await get(http, f"{base}/cgi-bin/getcallbackip", access_token=token)) == {"ip_list": ["127.0.0.2/32"]}
        assert (await get(http, f"{base}/cgi-bin/get_api_domain_ip", access_token=token))["ip_list"]
    assert (await get(http, f"{base}/cgi-bin/getcallbackip"))["errcode"] == 41001
    assert (await get(http, f"{base}/cgi-bin/get_api_domain_ip", access_token="made-up"))["errcode"] == 40001
    platform_sandbox.knock_out_tokens(APP_ID)
    assert (await get(http, f"{base}/cgi-bin/getcallbackip", access_token=official))["errcode"] == 40001
    assert platform_sandbox.count("getcallbackip", APP_ID) == 3
    assert platform_sandbox.count("getcallbackip", COMPONENT, ok_only=True) == 1
    assert platform_sandbox.count("get_api_domain_ip", AUTHORIZER, ok_only=True) == 1


async def test_callback_check_answers_the_asked_parts(
    platform_sandbox: WeChatSandbox, base: str, http: aiohttp.ClientSession
) -> None:
    """callback/check answers dns, ping or both for the platform's callback host; bad action or operator is refused."""
    token = await token_of(http, base, platform_sandbox)
    url = f"{base}/cgi-bin/callback/check"
    both = await post(http, url, {"action": "all", "check_operator": "UNICOM"}, access_token=token)
    assert both["dns"] == [{"ip": "127.0.0.1", "real_operator": "CAP"}]
    [ping] = both["ping"]
    assert ping["ip"] == "127.0.0.1" and ping["from_operator"] == "UNICOM" and ping["package_loss"] == "0%"
    assert ping["time"].endswith("ms")
    assert set(await post(http, url, {"action": "dns", "check_operator": "DEFAULT"}, access_token=token)) == {"dns"}
    only_ping = await post(http, url, {"action": "ping", "check_operator": "DEFAULT"}, access_token=token)
    assert set(only_ping) == {"ping"} and only_ping["ping"][0]["from_operator"] == "CAP"
    assert (await post(http, url, {"action": "trace", "check_operator": "CAP"}, access_token=token))["errcode"] == 40202
    assert (await post(http, url, {"action": "all", "check_operator": "X"}, access_token=token))["errcode"] == 40203
    assert (await post(http, url, {"action": "all", "check_operator": "CAP"}))["errcode"] == 41001
    assert platform_sandbox.count("callback_check", COMPONENT) == 5


def test_stats_list_the_platform_apis_only_with_a_platform(platform_sandbox: WeChatSandbox) -> None:
    """stats() lists the platform and operations APIs when the sandbox knows a platform, and not otherwise."""
    assert {"api_component_token", "api_query_auth", "api_authorizer_token", "getcallbackip", "get_api_domain_ip",
            "callback_check"} <= set(platform_sandbox.stats()["calls"])  # fmt: skip
    assert "api_component_token" not in WeChatSandbox([SandboxAccount(app_id=APP_ID, secret=SECRET)]).stats()["calls"]


# -- the schedule ---------------------------------------------------------------------------


async def test_push_every_pushes_tickets_on_a_schedule_while_served(receiver: Receiver) -> None:
    """With push_every the server pushes a ticket at once and then on the schedule, and stops when it stops."""
    platform = SandboxPlatform(component_appid=COMPONENT, secret=COMPONENT_SECRET, token=MESSAGE_TOKEN,
                               aes_key=AES_KEY, callback_url=receiver.url)  # fmt: skip
    silent = SandboxPlatform(component_appid="wx0000000000000c02", secret="s", token="t", aes_key=AES_KEY)
    sandbox = WeChatSandbox(platforms=[platform, silent], push_every=0.05)
    server = SandboxServer(sandbox)
    await server.start()
    try:
        for _ in range(200):  # at most 2 s
            if len(receiver.fields) >= 3:
                break
            await asyncio.sleep(0.01)
    finally:
        await server.stop()
    assert len(receiver.fields) >= 3
    assert all(f["InfoType"] == "component_verify_ticket" for f in receiver.fields)
    assert len({f["ComponentVerifyTicket"] for f in receiver.fields}) == len(receiver.fields)
    assert sandbox.current_verify_ticket("wx0000000000000c02") is None  # no callback URL: not pushed to
    pushed = len(sandbox.pushes)
    await asyncio.sleep(0.15)
    assert len(sandbox.pushes) == pushed
    assert all(isinstance(p, PushResult) and p.status == 200 for p in sandbox.pushes)
