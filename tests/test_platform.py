"""Third-party platforms over HTTP against the sandbox: WeChat's pushes, authorizations, authorizers signing."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from jssdk_service import sandbox_platform as sandbox_platform_module
from jssdk_service.config import Secret
from jssdk_service.keys import CACHE
from jssdk_service.msgcrypt import MessageCrypt
from jssdk_service.sandbox import SandboxAccount, WeChatSandbox

from .helpers import (
    AES_KEY,
    APP_ID,
    AUTHORIZER,
    COMPONENT_APPID,
    COMPONENT_SECRET,
    MESSAGE_TOKEN,
    OLD_AES_KEY,
    PAGE,
    SECRET,
    RunningService,
    ServiceFactory,
    assert_signed_live,
    events_url,
    logged,
    make_platform,
    sandbox_platform,
    short_lifetimes,
    sign,
    verifies,
)
from .test_notify import events, until, webhooks

ADMIN = "platform-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
TICKET_KEY = f"component:{COMPONENT_APPID}:verify-ticket"


@pytest.fixture
def sandbox() -> WeChatSandbox:
    """An emulator that knows the test official account and the test platform."""
    return WeChatSandbox([SandboxAccount(app_id=APP_ID, secret=SECRET)], platforms=[sandbox_platform()], seed=7)


@pytest.fixture
async def platform_service(start_service: ServiceFactory, sandbox: WeChatSandbox) -> RunningService:
    """The service with the test account and the test platform, which the sandbox pushes to."""
    service = await start_service(platforms=(make_platform(),), admin_token=Secret(ADMIN))
    sandbox.platforms[COMPONENT_APPID].callback_url = events_url(service.url)
    return service


async def platform_page(http: aiohttp.ClientSession, base: str, **params: str) -> dict[str, Any]:
    async with http.get(f"{base}/admin/platforms/{COMPONENT_APPID}/authorizers", params=params, headers=AUTH) as r:
        assert r.status == 200, await r.text()
        answer: dict[str, Any] = await r.json()
        return answer


async def push(http: aiohttp.ClientSession, base: str, fields: dict[str, str], *, nonce: str) -> tuple[int, str]:
    """`fields` pushed as WeChat pushes them (encrypted, signed, timestamped now): the status and the body."""
    crypt = MessageCrypt(token=MESSAGE_TOKEN, aes_key=AES_KEY, receive_id=COMPONENT_APPID)
    timestamp = str(int(time.time()))
    body, signature = crypt.seal_push(fields, timestamp=timestamp, nonce=nonce)
    params = {"timestamp": timestamp, "nonce": nonce, "msg_signature": signature, "encrypt_type": "aes"}
    async with http.post(events_url(base), params=params, data=body) as r:
        return r.status, await r.text()


async def test_a_pushed_ticket_is_kept_and_answered_success(
    sandbox: WeChatSandbox, platform_service: RunningService
) -> None:
    """WeChat's component_verify_ticket push is answered `success` and its ticket is kept for the fleet."""
    pushed = await sandbox.push_verify_ticket(COMPONENT_APPID)
    assert (pushed.status, pushed.body) == (200, "success")
    record = await platform_service.app[CACHE].get(TICKET_KEY)
    assert record is not None and record["value"] == pushed.fields["ComponentVerifyTicket"]


async def test_an_authorization_ends_in_signatures_with_the_authorizers_appid(
    sandbox: WeChatSandbox, platform_service: RunningService, http: aiohttp.ClientSession
) -> None:
    """An `authorized` push makes the authorizer sign with its own appId for the platform's domains: 300 cold
    requests cost one component token, one api_query_auth and one ticket, and the sandbox verifies the configs."""
    await sandbox.push_verify_ticket(COMPONENT_APPID)
    pushed = await sandbox.authorize(COMPONENT_APPID, AUTHORIZER)
    assert (pushed.status, pushed.body) == (200, "success")
    answers = await asyncio.gather(*(sign(http, platform_service.url, app=AUTHORIZER) for _ in range(300)))
    assert {status for status, _ in answers} == {200}
    for _, config in answers[:5]:
        assert config["appId"] == AUTHORIZER
        assert verifies(sandbox, config)
    assert sandbox.count("api_component_token") == 1
    assert sandbox.count("api_query_auth") == 1
    assert sandbox.count("api_authorizer_token") == 0  # the authorization's own token is used first
    assert sandbox.count("getticket", AUTHORIZER) == 1
    async with http.get(f"{platform_service.url}/v1/share", params={"url": PAGE, "app": AUTHORIZER}) as r:
        share = await r.json()
        assert r.status == 200 and share["config"]["appId"] == AUTHORIZER
    async with http.get(f"{platform_service.url}/v1/signature",
                        params={"url": "https://elsewhere.example.org/", "app": AUTHORIZER}) as r:  # fmt: skip
        assert r.status == 403 and (await r.json())["error"]["code"] == "host_not_allowed"


async def test_an_unauthorized_push_removes_the_authorizer(
    sandbox: WeChatSandbox, platform_service: RunningService, http: aiohttp.ClientSession
) -> None:
    """After an `unauthorized` push the authorizer is unknown (the fast lane too) and no longer listed."""
    await sandbox.push_verify_ticket(COMPONENT_APPID)
    await sandbox.authorize(COMPONENT_APPID, AUTHORIZER)
    for _ in range(3):  # warm: the fast lane keeps the page
        assert (await sign(http, platform_service.url, app=AUTHORIZER))[0] == 200
    pushed = await sandbox.unauthorize(COMPONENT_APPID, AUTHORIZER)
    assert (pushed.status, pushed.body) == (200, "success")
    status, body = await sign(http, platform_service.url, app=AUTHORIZER)
    assert status == 404 and body["error"]["code"] == "unknown_app"
    page = await platform_page(http, platform_service.url)
    assert page["total"] == 0 and page["authorizers"] == []


async def test_a_spent_authorization_code_is_answered_success_and_adds_nobody(
    sandbox: WeChatSandbox, platform_service: RunningService, http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """A code WeChat calls invalid (61009) or expired (61010) would fail again: the push is answered `success`
    (WeChat does not push it again and again), nobody is added, and the log says to authorize again."""
    await sandbox.push_verify_ticket(COMPONENT_APPID)
    unknown = {"AppId": COMPONENT_APPID, "InfoType": "authorized", "AuthorizerAppid": AUTHORIZER,
               "AuthorizationCode": "queryauthcode@@@never-issued"}  # fmt: skip
    assert (await push(http, platform_service.url, unknown, nonce="61009")) == (200, "success")
    monkeypatch.setattr(sandbox_platform_module, "AUTHORIZATION_CODE_LIFE", -1.0)  # pushed already expired
    pushed = await sandbox.authorize(COMPONENT_APPID, AUTHORIZER)
    assert (pushed.status, pushed.body) == (200, "success")
    assert sandbox.count("api_query_auth") == 2
    page = await platform_page(http, platform_service.url)
    assert page["total"] == 0 and page["authorizers"] == []
    assert logged(caplog, "not valid (or was used): authorize again") == 1
    assert logged(caplog, "expired: authorize again") == 1
    status, body = await sign(http, platform_service.url, app=AUTHORIZER)
    assert status == 404 and body["error"]["code"] == "unknown_app"


async def test_bad_pushes_are_refused_and_nothing_is_stored(
    sandbox: WeChatSandbox, platform_service: RunningService, http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """A wrong signature, a wrong key, another platform's message, a stale timestamp, a replayed nonce, an
    oversized or non-encrypted body, a DOCTYPE: each is a 4xx, and neither a ticket nor a secret is kept or logged."""
    url = events_url(platform_service.url)
    crypt = MessageCrypt(token=MESSAGE_TOKEN, aes_key=AES_KEY, receive_id=COMPONENT_APPID)
    fields = {"AppId": COMPONENT_APPID, "CreateTime": str(int(time.time())), "InfoType": "component_verify_ticket",
              "ComponentVerifyTicket": "ticket@@@forged-or-replayed-value"}  # fmt: skip

    def sealed(
        crypt: MessageCrypt = crypt, *, at: int | None = None, nonce: str = "1234"
    ) -> tuple[bytes, dict[str, str]]:
        timestamp = str(at if at is not None else int(time.time()))
        body, signature = crypt.seal_push(fields, timestamp=timestamp, nonce=nonce)
        return body, {"timestamp": timestamp, "nonce": nonce, "msg_signature": signature, "encrypt_type": "aes"}

    async def post(body: bytes, params: dict[str, str], target: str = url) -> tuple[int, str]:
        async with http.post(target, params=params, data=body, headers={"Content-Type": "text/xml"}) as r:
            return r.status, await r.text()

    body, params = sealed()
    other_key = MessageCrypt(token=MESSAGE_TOKEN, aes_key=OLD_AES_KEY, receive_id=COMPONENT_APPID)
    other_platform = MessageCrypt(token=MESSAGE_TOKEN, aes_key=AES_KEY, receive_id="wx00000000000other")
    tampered = body.replace(b"<Encrypt><![CDATA[", b"<Encrypt><![CDATA[AAAA")
    doctype = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e "e">]><xml><Encrypt>&e;</Encrypt></xml>'
    refusals = [
        (body, {**params, "msg_signature": "0" * 40}, 400),
        (tampered, params, 400),
        (*sealed(other_key, nonce="2"), 400),
        (*sealed(other_platform, nonce="3"), 400),
        (*sealed(at=int(time.time()) - 600, nonce="4"), 400),
        (doctype, params, 400),
        (body, {key: value for key, value in params.items() if key != "encrypt_type"}, 400),
        (body + b" " * (17 * 1024), params, 413),
    ]
    for refused, query, expected in refusals:
        status, text = await post(refused, query)
        assert status == expected, (query, text)
        assert "invalid_push" in text or expected == 413
    status, _ = await post(body, params, events_url(platform_service.url, "wx000000000000none"))
    assert status == 404
    assert await platform_service.app[CACHE].get(TICKET_KEY) is None
    # The genuine push is taken once; the same push again is a replay.
    assert await post(body, params) == (200, "success")
    status, text = await post(body, params)
    assert status == 400 and "received before" in text
    logs = caplog.text
    for secret in (AES_KEY, OLD_AES_KEY, MESSAGE_TOKEN, COMPONENT_SECRET, fields["ComponentVerifyTicket"]):
        assert secret not in logs


async def test_the_previous_aes_key_still_opens_pushes(sandbox: WeChatSandbox, start_service: ServiceFactory) -> None:
    """After the EncodingAESKey is rotated, pushes sealed with the previous key and with the new one are both taken."""
    service = await start_service(platforms=(make_platform(previous_aes_key=Secret(OLD_AES_KEY)),))
    platform = sandbox.platforms[COMPONENT_APPID]
    platform.callback_url = events_url(service.url)
    platform.aes_key = OLD_AES_KEY
    assert (await sandbox.push_verify_ticket(COMPONENT_APPID)).body == "success"
    platform.aes_key = AES_KEY
    assert (await sandbox.push_verify_ticket(COMPONENT_APPID)).body == "success"


async def test_the_admin_api_adds_lists_and_removes_authorizers(
    sandbox: WeChatSandbox, platform_service: RunningService, http: aiohttp.ClientSession
) -> None:
    """Authorizers added with their refresh tokens sign at once; a page at a time they are listed; one removed is
    unknown; a refused refresh token, a configured account's appId and an unknown platform are refused."""
    await sandbox.push_verify_ticket(COMPONENT_APPID)
    base = f"{platform_service.url}/admin/platforms/{COMPONENT_APPID}/authorizers"
    added = [f"wxa00000000000b00{n}" for n in range(3)]
    for app_id in added:
        refresh_token = sandbox.grant(COMPONENT_APPID, app_id)
        async with http.post(base, json={"appid": app_id, "refresh_token": refresh_token}, headers=AUTH) as r:
            assert r.status == 201, await r.text()
            assert refresh_token not in await r.text()
        status, config = await sign(http, platform_service.url, app=app_id)
        assert status == 200 and config["appId"] == app_id and verifies(sandbox, config)
    first = await platform_page(http, platform_service.url, count="2")
    listed = [entry["appId"] for entry in first["authorizers"]]
    cursor = first["nextCursor"]
    while cursor:
        page = await platform_page(http, platform_service.url, count="2", cursor=str(cursor))
        listed += [entry["appId"] for entry in page["authorizers"]]
        cursor = page["nextCursor"]
    assert sorted(listed) == added and first["total"] == 3
    async with http.delete(f"{base}/{added[0]}", headers=AUTH) as r:
        assert r.status == 204
    assert (await sign(http, platform_service.url, app=added[0]))[0] == 404
    async with http.delete(f"{base}/{added[0]}", headers=AUTH) as r:
        assert r.status == 404
    async with http.post(base, json={"appid": "wxa00000000000bad0", "refresh_token": "refresh@@@wrong"},
                         headers=AUTH) as r:  # fmt: skip
        assert r.status == 400 and "refresh@@@wrong" not in await r.text()
    assert (await platform_page(http, platform_service.url))["total"] == 2
    async with http.post(base, json={"appid": APP_ID, "refresh_token": "x"}, headers=AUTH) as r:
        assert r.status == 409
    async with http.get(f"{platform_service.url}/admin/platforms/wx000000000000none/authorizers", headers=AUTH) as r:
        assert r.status == 404 and (await r.json())["error"]["code"] == "unknown_platform"


@pytest.mark.parametrize(
    ("fault", "errcode", "phrase"),
    [
        ("ip", 61004, "add 127.0.0.1 to the platform's IP whitelist"),
        ("expired", 61005, "the component_verify_ticket expired"),
        ("forged", 61006, "the component_verify_ticket is not valid"),
    ],
)
async def test_component_token_errcodes_say_what_to_do(
    sandbox: WeChatSandbox, platform_service: RunningService, http: aiohttp.ClientSession,
    fault: str, errcode: int, phrase: str,
) -> None:  # fmt: skip
    """61004 (the platform's IP whitelist), 61005 (an expired ticket) and 61006 (an invalid ticket) stop the
    component token with a fix, and the authorizers waiting on it cost no call of their own."""
    if fault == "ip":
        sandbox.platforms[COMPONENT_APPID].ip_whitelist = frozenset({"10.1.2.3"})
    if fault == "expired":  # tickets live 10 ms here, 12 hours upstream
        sandbox.verify_ticket_valid_for = 0.01
    if fault == "forged":
        fields = {"AppId": COMPONENT_APPID, "InfoType": "component_verify_ticket", "ComponentVerifyTicket": "forged"}
        assert (await push(http, platform_service.url, fields, nonce="77")) == (200, "success")
    else:
        await sandbox.push_verify_ticket(COMPONENT_APPID)
        await asyncio.sleep(0.05)
    base = f"{platform_service.url}/admin/platforms/{COMPONENT_APPID}/authorizers"
    refresh_token = sandbox.grant(COMPONENT_APPID, AUTHORIZER)
    async with http.post(base, json={"appid": AUTHORIZER, "refresh_token": refresh_token}, headers=AUTH) as r:
        assert r.status == 503, await r.text()
        assert str(errcode) in (await r.json())["error"]["message"]
    status = (await platform_page(http, platform_service.url))["status"]
    assert str(errcode) in status["lastError"] and phrase in status["fix"]
    calls = sandbox.count("api_component_token")
    for _ in range(5):  # the failure is cached: asking again does not call WeChat again
        async with http.post(base, json={"appid": AUTHORIZER, "refresh_token": refresh_token}, headers=AUTH) as r:
            assert r.status == 503
    assert sandbox.count("api_component_token") == calls
    assert sandbox.count("api_authorizer_token") == 0


async def test_a_refused_component_token_is_one_notification_for_the_platform(
    sandbox: WeChatSandbox, sandbox_url: str, start_service: ServiceFactory, http: aiohttp.ClientSession
) -> None:
    """WeChat refusing the component token (61004) while authorizers are added is one `failed` message, for the
    platform, however many authorizers wait on it."""
    sandbox.platforms[COMPONENT_APPID].ip_whitelist = frozenset({"10.1.2.3"})
    service = await start_service(platforms=(make_platform(),), admin_token=Secret(ADMIN),
                                  webhooks=webhooks(sandbox_url, sandbox))  # fmt: skip
    sandbox.platforms[COMPONENT_APPID].callback_url = events_url(service.url)
    await sandbox.push_verify_ticket(COMPONENT_APPID)
    base = f"{service.url}/admin/platforms/{COMPONENT_APPID}/authorizers"
    for n in range(3):
        appid = f"wxa00000000000c{n:03d}"
        body = {"appid": appid, "refresh_token": sandbox.grant(COMPONENT_APPID, appid)}
        async with http.post(base, json=body, headers=AUTH) as r:
            assert r.status == 503, await r.text()
    await until(lambda: len(events(sandbox, "json")) >= 1)
    await asyncio.sleep(0.5)
    (told,) = events(sandbox, "json")
    assert (told["event"], told["appId"], told["errcode"]) == ("failed", COMPONENT_APPID, 61004)
    assert len(events(sandbox, "robot")) == 1


async def test_a_refresh_token_made_invalid_says_to_authorize_again(
    sandbox: WeChatSandbox, platform_service: RunningService, http: aiohttp.ClientSession
) -> None:
    """When the authorizer authorizes again elsewhere its old refresh token dies (61023): the authorizer says
    to authorize again, and keeps signing with the ticket it has meanwhile."""
    await sandbox.push_verify_ticket(COMPONENT_APPID)
    await sandbox.authorize(COMPONENT_APPID, AUTHORIZER)
    assert (await sign(http, platform_service.url, app=AUTHORIZER))[0] == 200
    sandbox.grant(COMPONENT_APPID, AUTHORIZER)  # a re-authorization the service was not told of
    async with http.post(f"{platform_service.url}/admin/apps/{AUTHORIZER}/refresh", params={"token": "1"},
                         headers=AUTH) as r:  # fmt: skip
        assert r.status == 503 and "61023" in (await r.json())["error"]["message"]
    async with http.get(f"{platform_service.url}/readyz", params={"verbose": "1"}) as r:
        entry = next(a for a in (await r.json())["accounts"] if a["appId"] == AUTHORIZER)
    assert entry["errcode"] == 61023 and "authorize the platform again" in entry["fix"]
    assert (await sign(http, platform_service.url, app=AUTHORIZER))[0] == 200


async def test_authorizers_are_refreshed_ahead_across_short_lifetimes(
    sandbox: WeChatSandbox, platform_service: RunningService, http: aiohttp.ClientSession
) -> None:
    """Over several 3-second lifetimes every authorizer signature verifies with a live ticket, and the component
    token, each authorizer's token and its ticket are each fetched about once a lifetime, never per request."""
    short_lifetimes(sandbox, 3)
    await sandbox.push_verify_ticket(COMPONENT_APPID)
    authorizers = [AUTHORIZER, "wxa00000000000a002"]
    for app_id in authorizers:
        await sandbox.authorize(COMPONENT_APPID, app_id)
    deadline = time.monotonic() + 8
    answered = 0
    while time.monotonic() < deadline:
        results = await asyncio.gather(*(sign(http, platform_service.url, app=app_id) for app_id in authorizers))
        signed_at = time.time()
        for status, config in results:
            assert status == 200, config
            assert_signed_live(sandbox, config, signed_at)
        answered += len(results)
        await asyncio.sleep(0.05)
    assert answered > 100
    assert 2 <= sandbox.count("api_component_token") <= 5
    for app_id in authorizers:
        assert 2 <= sandbox.count("getticket", app_id) <= 5, sandbox.count("getticket", app_id)
        assert 1 <= sandbox.count("api_authorizer_token", app_id) <= 5
        assert sandbox.count("getticket", app_id, ok_only=True) == sandbox.count("getticket", app_id)


async def test_a_refused_component_token_does_not_stall_authorizers_holding_every_upstream_slot(
    sandbox: WeChatSandbox, start_service: ServiceFactory, http: aiohttp.ClientSession
) -> None:
    """With one upstream slot, authorizers whose refreshes find the component token knocked out all get a new
    one and a new token of their own: the platform's refresh is never left waiting for a slot they hold."""
    service = await start_service(platforms=(make_platform(),), admin_token=Secret(ADMIN), upstream_concurrency=1)
    sandbox.platforms[COMPONENT_APPID].callback_url = events_url(service.url)
    await sandbox.push_verify_ticket(COMPONENT_APPID)
    authorizers = [f"wxa00000000000c00{n}" for n in range(4)]
    for app_id in authorizers:
        await sandbox.authorize(COMPONENT_APPID, app_id)
    for cred in list(sandbox.issued.values()):
        if cred.kind == "component_token":
            sandbox.knock_out_token(cred.value)

    async def forced(app_id: str) -> int:
        async with http.post(f"{service.url}/admin/apps/{app_id}/refresh", params={"token": "1"}, headers=AUTH) as r:
            return r.status

    statuses = await asyncio.wait_for(asyncio.gather(*(forced(app_id) for app_id in authorizers)), 20)
    assert statuses == [200] * len(authorizers)
    assert sandbox.count("api_component_token") == 2  # the first, and one after it was refused


async def test_pushes_in_pieces_and_bad_list_queries(
    sandbox: WeChatSandbox, platform_service: RunningService, http: aiohttp.ClientSession
) -> None:
    """A push whose body arrives in several pieces is taken whole; a malformed page cursor or count is a 400."""
    crypt = MessageCrypt(token=MESSAGE_TOKEN, aes_key=AES_KEY, receive_id=COMPONENT_APPID)
    fields = {"AppId": COMPONENT_APPID, "InfoType": "component_verify_ticket", "ComponentVerifyTicket": "pieces"}
    timestamp = str(int(time.time()))
    body, signature = crypt.seal_push(fields, timestamp=timestamp, nonce="31")

    async def pieces() -> Any:
        for start in range(0, len(body), 40):
            yield body[start : start + 40]
            await asyncio.sleep(0.01)

    params = {"timestamp": timestamp, "nonce": "31", "msg_signature": signature, "encrypt_type": "aes"}
    async with http.post(events_url(platform_service.url), params=params, data=pieces()) as r:
        assert (r.status, await r.text()) == (200, "success")
    base = f"{platform_service.url}/admin/platforms/{COMPONENT_APPID}/authorizers"
    for query in ({"cursor": "abc"}, {"cursor": "9" * 20}, {"count": "²"}, {"count": "0"}, {"count": "5000"}):
        async with http.get(base, params=query, headers=AUTH) as r:
            assert r.status == 400, query
