"""The sandbox emulates WeCom's qyapi (tokens, both tickets, limits, agentConfig) and a central token server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from jssdk_service.cache import RawKeys
from jssdk_service.sandbox import SandboxAccount, SandboxServer, SandboxWeComApp, WeChatSandbox
from jssdk_service.sandbox_central import CentralTokenServer
from jssdk_service.signing import sign_url

from .helpers import APP_ID, SECRET, RedisServer

CORP = "ww0123456789abcdef"
OTHER_CORP = "wwfedcba9876543210"
MAIL = f"{CORP}:1000002"
HR = f"{CORP}:1000003"
ELSEWHERE = f"{OTHER_CORP}:1000002"
SECRETS = {MAIL: "mail-app-secret-0123456789abcdef", HR: "hr-app-secret-0123456789abcdef",
           ELSEWHERE: "elsewhere-secret-0123456789abcd"}  # fmt: skip
PAGE = "https://example.com/wecom/page?x=1"
BEARER = "central-bearer-0123456789"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


Serve = Callable[..., Awaitable[str]]


def app_of(key: str) -> SandboxWeComApp:
    """The WeCom app filed under `key`, with its secret."""
    corp_id, _, agent_id = key.partition(":")
    return SandboxWeComApp(corp_id, agent_id, SECRETS[key])


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def wecom(clock: Clock) -> WeChatSandbox:
    """An emulator with one official account and three WeCom apps (two of one corp), with small hourly limits."""
    apps = [app_of(key) for key in SECRETS]
    return WeChatSandbox([SandboxAccount(app_id=APP_ID, secret=SECRET)], wecom_apps=apps,
                         wecom_hourly_limits={"corp": 3, "app": 2}, seed=7, clock=clock)  # fmt: skip


@pytest.fixture
async def serve(wecom: WeChatSandbox) -> AsyncIterator[Serve]:
    """Serve `wecom` over HTTP on loopback (with a central token server if given); the base URL."""
    servers: list[SandboxServer] = []

    async def start(central: CentralTokenServer | None = None) -> str:
        servers.append(SandboxServer(wecom, central=central))
        return await servers[-1].start()

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def base(serve: Serve) -> str:
    return await serve()


async def get(http: aiohttp.ClientSession, url: str, **params: str) -> dict[str, Any]:
    async with http.get(url, params=params) as response:
        return dict(await response.json())


async def gettoken(http: aiohttp.ClientSession, base: str, key: str = MAIL, **overrides: str) -> dict[str, Any]:
    corp_id = key.split(":")[0]
    return await get(http, f"{base}/cgi-bin/gettoken", **{"corpid": corp_id, "corpsecret": SECRETS[key], **overrides})


async def corp_ticket(http: aiohttp.ClientSession, base: str, access_token: str) -> dict[str, Any]:
    return await get(http, f"{base}/cgi-bin/get_jsapi_ticket", access_token=access_token)


async def agent_ticket(
    http: aiohttp.ClientSession, base: str, access_token: str, kind: str = "agent_config"
) -> dict[str, Any]:
    return await get(http, f"{base}/cgi-bin/ticket/get", access_token=access_token, type=kind)


async def jsapi_ticket(http: aiohttp.ClientSession, base: str, access_token: str) -> dict[str, Any]:
    return await get(http, f"{base}/cgi-bin/ticket/getticket", access_token=access_token, type="jsapi")


async def token_of(http: aiohttp.ClientSession, base: str, key: str = MAIL) -> str:
    return str((await gettoken(http, base, key))["access_token"])


def signed(ticket: str, nonce: str = "n0nce", timestamp: int = 1700000000) -> dict[str, Any]:
    """What a page sends to be checked: `PAGE` signed with `ticket`."""
    return {"url": PAGE, "nonceStr": nonce, "timestamp": timestamp,
            "signature": sign_url(ticket=ticket, nonce=nonce, timestamp=timestamp, url=PAGE)}  # fmt: skip


async def verify_agent(
    http: aiohttp.ClientSession, base: str, ticket: str, key: str = MAIL, corp_id: str | None = None
) -> dict[str, Any]:
    corp, agent = key.split(":")
    body = {"corpid": corp_id or corp, "agentid": agent, **signed(ticket)}
    async with http.post(f"{base}/sandbox/verify-agent", json=body) as response:
        return dict(await response.json())


# -- WeCom's qyapi --------------------------------------------------------------------------


async def test_gettoken_answers_wecoms_errcodes(wecom: WeChatSandbox, base: str, http: aiohttp.ClientSession) -> None:
    """Missing corpid or secret, an unknown corp, another corp's secret and a caller off the whitelist get WeCom's errcodes."""
    assert (await gettoken(http, base, corpid=""))["errcode"] == 41002
    assert (await gettoken(http, base, corpsecret=""))["errcode"] == 41004
    assert (await gettoken(http, base, corpid="wwunknown"))["errcode"] == 40013
    wrong = await gettoken(http, base, corpsecret=SECRETS[ELSEWHERE])
    assert wrong["errcode"] == 40001 and wrong["errmsg"].startswith("invalid credential, hint: [")
    wecom.wecom_apps[MAIL].ip_whitelist = frozenset({"10.9.8.7"})
    refused = await gettoken(http, base)
    assert refused["errcode"] == 60020
    assert refused["errmsg"].startswith("not allow to access from your ip, hint: [")
    assert refused["errmsg"].endswith(
        "from ip: 127.0.0.1, more info at https://open.work.weixin.qq.com/devtool/query?e=60020"
    )
    assert wecom.count("gettoken", MAIL) == 1 and wecom.count("gettoken", "") == 4
    assert wecom.count("gettoken", MAIL, ok_only=True) == 0


async def test_every_gettoken_mints_a_token_and_earlier_ones_keep_working(
    wecom: WeChatSandbox, base: str, http: aiohttp.ClientSession
) -> None:
    """Each gettoken answers a new token with expires_in; the earlier one still fetches tickets."""
    first = await gettoken(http, base)
    second = await gettoken(http, base)
    assert first["errcode"] == 0 and first["errmsg"] == "ok" and first["expires_in"] == 7200
    assert first["access_token"] != second["access_token"]
    assert (await corp_ticket(http, base, first["access_token"]))["errcode"] == 0
    assert wecom.count("gettoken", MAIL, ok_only=True) == 2


async def test_corp_and_agent_tickets_are_kept_per_app(
    wecom: WeChatSandbox, clock: Clock, base: str, http: aiohttp.ClientSession
) -> None:
    """A WeCom token fetches its app's corp and agent tickets, recorded per app; bad tokens and types get WeCom's errcodes."""
    token = await token_of(http, base)
    corp = await corp_ticket(http, base, token)
    agent = await agent_ticket(http, base, token)
    assert corp["errcode"] == agent["errcode"] == 0 and corp["expires_in"] == agent["expires_in"] == 7200
    assert [t.value for t in wecom.corp_tickets(MAIL)] == [corp["ticket"]]
    assert [t.value for t in wecom.agent_tickets(MAIL)] == [agent["ticket"]]
    assert wecom.corp_tickets(HR) == wecom.agent_tickets(HR) == []
    assert (await agent_ticket(http, base, token, kind="jsapi"))["errcode"] == 40058
    assert (await corp_ticket(http, base, ""))["errcode"] == 41001
    assert (await agent_ticket(http, base, "made-up"))["errcode"] == 40014
    official = (await get(http, f"{base}/cgi-bin/token", grant_type="client_credential", appid=APP_ID,
                          secret=SECRET))["access_token"]  # fmt: skip
    assert (await corp_ticket(http, base, official))["errcode"] == 40014
    assert (await jsapi_ticket(http, base, token))["errcode"] == 40001
    assert wecom.count("get_jsapi_ticket", MAIL) == 1 and wecom.count("get_agent_ticket", MAIL) == 2
    clock.now += 7200
    expired = await corp_ticket(http, base, token)
    assert expired["errcode"] == 42001 and "e=42001" in expired["errmsg"]


async def test_hourly_ticket_limits_answer_45009_at_exactly_the_limit(
    wecom: WeChatSandbox, clock: Clock, base: str, http: aiohttp.ClientSession
) -> None:
    """Corp tickets stop at the per-app and per-corp limits, agent tickets at the per-app one, each over a sliding hour."""
    mail, hr = await token_of(http, base), await token_of(http, base, HR)
    assert [(await corp_ticket(http, base, mail))["errcode"] for _ in range(3)] == [0, 0, 45009]
    assert (await corp_ticket(http, base, hr))["errcode"] == 0
    over = await corp_ticket(http, base, hr)  # the corp's third success was the limit
    assert over["errcode"] == 45009 and over["errmsg"].startswith("api freq out of limit, hint: [")
    assert [(await agent_ticket(http, base, mail))["errcode"] for _ in range(3)] == [0, 0, 45009]
    assert (await agent_ticket(http, base, hr))["errcode"] == 0
    clock.now += 3599
    assert (await corp_ticket(http, base, hr))["errcode"] == 45009
    clock.now += 1
    assert (await corp_ticket(http, base, hr))["errcode"] == 0
    assert (await agent_ticket(http, base, mail))["errcode"] == 0
    assert wecom.count("get_jsapi_ticket", CORP + ":1000002", ok_only=True) == 2


async def test_a_knocked_out_wecom_token_says_40014(
    wecom: WeChatSandbox, base: str, http: aiohttp.ClientSession
) -> None:
    """knock_out_tokens kills a WeCom app's live tokens (40014 for both tickets) and leaves other apps' alone."""
    mine, theirs = await token_of(http, base), await token_of(http, base, HR)
    wecom.knock_out_tokens(MAIL)
    assert (await corp_ticket(http, base, mine))["errcode"] == 40014
    assert (await agent_ticket(http, base, mine))["errcode"] == 40014
    assert (await corp_ticket(http, base, theirs))["errcode"] == 0


async def test_agent_config_passes_only_with_that_apps_agent_ticket(
    wecom: WeChatSandbox, base: str, http: aiohttp.ClientSession
) -> None:
    """wx.agentConfig passes with the app's own agent ticket; a corp ticket, another app's agent ticket or an unknown corp fail."""
    token, other = await token_of(http, base), await token_of(http, base, HR)
    mine = (await agent_ticket(http, base, token))["ticket"]
    corp = (await corp_ticket(http, base, token))["ticket"]
    theirs = (await agent_ticket(http, base, other))["ticket"]
    assert await verify_agent(http, base, mine) == {"errMsg": "agentConfig:ok", "signedWith": "agent"}
    invalid = {"errMsg": "agentConfig:invalid signature", "errCode": 40093}
    assert await verify_agent(http, base, corp) == {**invalid, "signedWith": "corp"}
    assert await verify_agent(http, base, theirs) == {**invalid, "signedWith": "other_app_agent"}
    assert await verify_agent(http, base, "no-such-ticket") == {**invalid, "signedWith": "unknown"}
    assert await verify_agent(http, base, mine, corp_id="wwunknown") == {
        "errMsg": "agentConfig:invalid corpId", "errCode": 40013, "signedWith": "unknown"}  # fmt: skip


async def test_wx_config_for_a_corp_needs_a_live_corp_ticket(
    wecom: WeChatSandbox, base: str, http: aiohttp.ClientSession
) -> None:
    """POST /sandbox/verify with a corpid passes with any of the corp's apps' corp tickets, not with an agent ticket."""
    token = await token_of(http, base, HR)
    corp = (await corp_ticket(http, base, token))["ticket"]
    agent = (await agent_ticket(http, base, token))["ticket"]

    async def verify(ticket: str, app_id: str = CORP) -> str:
        async with http.post(f"{base}/sandbox/verify", json={"appId": app_id, **signed(ticket)}) as response:
            return str((await response.json())["errMsg"])

    assert await verify(corp) == "config:ok"
    assert await verify(agent) == "config:invalid signature"
    assert await verify(corp, OTHER_CORP) == "config:invalid signature"
    assert await verify(corp, "wwunknown") == "config:invalid signature"
    evidence = signed(corp)
    found = wecom.ticket_that_signed(CORP, url=PAGE, nonce=evidence["nonceStr"], timestamp=evidence["timestamp"],
                                     signature=evidence["signature"])  # fmt: skip
    assert found is not None and found.app_id == HR and found.kind == "corp_ticket"


async def test_stats_list_wecoms_apis(wecom: WeChatSandbox, base: str, http: aiohttp.ClientSession) -> None:
    """GET /sandbox/stats lists gettoken and both ticket APIs, and counts the tickets by second of issue."""
    token = await token_of(http, base)
    await corp_ticket(http, base, token)
    await agent_ticket(http, base, token, kind="other")
    stats = await get(http, f"{base}/sandbox/stats")
    assert stats["calls"]["gettoken"] == {"ok": 1, "failed": 0}
    assert stats["calls"]["get_jsapi_ticket"] == {"ok": 1, "failed": 0}
    assert stats["calls"]["get_agent_ticket"] == {"ok": 0, "failed": 1}
    assert sum(stats["ticketsIssuedPerSecond"].values()) == 1


async def test_injected_faults_answer_in_wecoms_errmsg_shape(
    wecom: WeChatSandbox, base: str, http: aiohttp.ClientSession
) -> None:
    """Scripted faults reach the WeCom APIs too, an injected errcode worded the WeCom way."""
    wecom.faults.script.extend([-1, "http500"])
    busy = await gettoken(http, base)
    assert busy["errcode"] == -1 and busy["errmsg"].startswith("system busy, hint: [")
    async with http.get(f"{base}/cgi-bin/gettoken") as response:
        assert response.status == 500
    assert wecom.count("gettoken", MAIL) == 1 and wecom.count("gettoken") == 2


# -- the central token server over HTTP -----------------------------------------------------


async def read(http: aiohttp.ClientSession, base: str, app: str, bearer: str | None = BEARER) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer is not None else {}
    async with http.get(f"{base}/sandbox/central/token", params={"app": app}, headers=headers) as response:
        return response.status, await response.json()


async def control(http: aiohttp.ClientSession, base: str, name: str, **params: str) -> tuple[int, Any]:
    async with http.post(f"{base}/sandbox/central/{name}", params=params) as response:
        return response.status, await response.json()


@pytest.fixture
async def central(wecom: WeChatSandbox) -> CentralTokenServer:
    """A central server owning the official account and the mail app, reads behind a bearer."""
    return CentralTokenServer(wecom, [APP_ID, MAIL], bearer=BEARER)


async def test_central_reads_need_the_bearer(
    central: CentralTokenServer, serve: Serve, http: aiohttp.ClientSession
) -> None:
    """Without the right bearer a read is 401; an unknown app is 404; reads are counted per app."""
    base = await serve(central)
    assert await read(http, base, APP_ID, bearer=None) == (401, {"errcode": 401, "errmsg": "unauthorized"})
    assert (await read(http, base, APP_ID, bearer="wrong"))[0] == 401
    status, answer = await read(http, base, APP_ID)
    assert status == 200 and set(answer) == {"access_token", "expires_in"} and answer["expires_in"] == 7200
    assert (await read(http, base, "wxunknown"))[0] == 404
    assert central.reads == {APP_ID: 3, "wxunknown": 1}


async def test_central_tokens_are_accepted_and_never_counted_as_the_services(
    wecom: WeChatSandbox, central: CentralTokenServer, serve: Serve, http: aiohttp.ClientSession
) -> None:
    """Tokens it hands out fetch getticket and get_jsapi_ticket tickets; its minting counts as "central" only."""
    base = await serve(central)
    official = (await read(http, base, APP_ID))[1]["access_token"]
    corp = (await read(http, base, MAIL))[1]["access_token"]
    assert (await jsapi_ticket(http, base, official))["errcode"] == 0
    assert (await corp_ticket(http, base, corp))["errcode"] == 0
    assert (await agent_ticket(http, base, corp))["errcode"] == 0
    assert wecom.count("token", APP_ID) == wecom.count("stable_token", APP_ID) == wecom.count("gettoken", MAIL) == 0
    assert wecom.count("central", APP_ID) == wecom.count("central", MAIL) == 1


async def test_central_rotation_kills_the_previous_token(
    central: CentralTokenServer, serve: Serve, http: aiohttp.ClientSession
) -> None:
    """POST /sandbox/central/rotate hands out a new token and the old one dies at WeChat at once."""
    base = await serve(central)

    async def token(app: str) -> str:
        return str((await read(http, base, app))[1]["access_token"])

    old_official, old_corp = await token(APP_ID), await token(MAIL)
    assert (await control(http, base, "rotate", app=APP_ID))[0] == 200
    await central.rotate(MAIL)
    new_official, new_corp = await token(APP_ID), await token(MAIL)
    assert new_official != old_official and new_corp != old_corp
    assert (await jsapi_ticket(http, base, old_official))["errcode"] == 40001
    assert (await corp_ticket(http, base, old_corp))["errcode"] == 40014
    assert (await jsapi_ticket(http, base, new_official))["errcode"] == 0
    assert (await corp_ticket(http, base, new_corp))["errcode"] == 0
    assert (await control(http, base, "rotate", app="wxunknown"))[0] == 404


async def test_central_revocation_keeps_handing_out_a_dead_token(
    central: CentralTokenServer, serve: Serve, http: aiohttp.ClientSession
) -> None:
    """After revoke the same token is still handed out though WeChat refuses it, until a rotation."""
    base = await serve(central)
    before = (await read(http, base, APP_ID))[1]["access_token"]
    assert await control(http, base, "revoke", app=APP_ID) == (200, {"app": APP_ID, "revoked": True})
    status, answer = await read(http, base, APP_ID)
    assert status == 200 and answer["access_token"] == before and answer["expires_in"] > 0
    assert (await jsapi_ticket(http, base, before))["errcode"] == 40001
    await central.revoke(MAIL)
    assert (await corp_ticket(http, base, (await read(http, base, MAIL))[1]["access_token"]))["errcode"] == 40014
    await central.rotate(APP_ID)
    assert (await jsapi_ticket(http, base, (await read(http, base, APP_ID))[1]["access_token"]))["errcode"] == 0


async def test_central_fault_modes(central: CentralTokenServer, serve: Serve, http: aiohttp.ClientSession) -> None:
    """Each fault mode answers as a broken central server would, and mode=none restores it."""
    base = await serve(central)
    url = f"{base}/sandbox/central/token?app={APP_ID}"
    headers = {"Authorization": f"Bearer {BEARER}"}
    assert await control(http, base, "fault", mode="http500") == (200, {"fault": "http500"})
    async with http.get(url, headers=headers) as response:
        assert response.status == 500
    await control(http, base, "fault", mode="bad_json")
    async with http.get(url, headers=headers) as response:
        assert response.status == 200
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(await response.read())
    await control(http, base, "fault", mode="unauthorized")
    assert (await read(http, base, APP_ID))[0] == 401
    await control(http, base, "fault", mode="wechat_error")
    assert await read(http, base, APP_ID) == (200, {"errcode": 40001, "errmsg": "invalid credential"})
    central.fault = "timeout"
    with pytest.raises(asyncio.TimeoutError):
        async with http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=0.3)):
            pass
    assert (await control(http, base, "fault", mode="flaky"))[0] == 400
    assert await control(http, base, "fault", mode="none") == (200, {"fault": None})
    assert (await read(http, base, APP_ID))[0] == 200
    assert central.reads[APP_ID] == 6


async def test_central_renews_ahead_and_the_previous_token_lives_on(
    wecom: WeChatSandbox, clock: Clock, central: CentralTokenServer, serve: Serve, http: aiohttp.ClientSession
) -> None:
    """Within a fifth of its life of expiry the next read gets a new token; the previous one works until its own expiry."""
    base = await serve(central)
    first = (await read(http, base, MAIL))[1]
    clock.now += 7200 * 4 / 5 - 1
    assert (await read(http, base, MAIL))[1]["access_token"] == first["access_token"]
    clock.now += 1
    renewed = (await read(http, base, MAIL))[1]
    assert renewed["access_token"] != first["access_token"] and renewed["expires_in"] == 7200
    assert (await corp_ticket(http, base, first["access_token"]))["errcode"] == 0
    assert wecom.count("central", MAIL) == 2


async def test_a_rotating_central_server_rotates_on_its_period(
    wecom: WeChatSandbox, serve: Serve, http: aiohttp.ClientSession
) -> None:
    """With rotate_every the central server replaces every app's token on that period, killing the old ones."""
    central = CentralTokenServer(wecom, [APP_ID], rotate_every=0.2)
    base = await serve(central)
    first = (await read(http, base, APP_ID, bearer=None))[1]["access_token"]
    await asyncio.sleep(0.5)
    later = (await read(http, base, APP_ID, bearer=None))[1]["access_token"]
    assert later != first and wecom.count("central", APP_ID) >= 3
    assert (await jsapi_ticket(http, base, first))["errcode"] == 40001
    assert (await jsapi_ticket(http, base, later))["errcode"] == 0


# -- the central token server in Redis ------------------------------------------------------


async def json_record(client: aioredis.Redis, key: str) -> Any:
    text = await client.get(key)
    assert text is not None, f"no key {key}"
    return orjson.loads(text)


@pytest.fixture
async def raw_keys(redis_server: RedisServer) -> AsyncIterator[RawKeys]:
    keys = RawKeys(redis_server.url)
    yield keys
    await keys.close()


async def test_central_writes_json_records_with_their_ttl(
    wecom: WeChatSandbox, raw_keys: RawKeys, redis_client: aioredis.Redis, serve: Serve, http: aiohttp.ClientSession
) -> None:
    """The JSON record holds the token and its expiry, the key lives as long as the token; rotation rewrites it."""
    central = CentralTokenServer(wecom, [APP_ID, MAIL], keys=raw_keys)
    await central.start()
    try:
        record = await json_record(redis_client, f"central:{MAIL}:token")
        token = await central.current(MAIL)
        assert record == {"access_token": token.value, "expires_at": token.expires_at}
        assert 7190 <= await redis_client.ttl(f"central:{MAIL}:token") <= 7200
        base = await serve()
        assert (await corp_ticket(http, base, record["access_token"]))["errcode"] == 0
        await central.rotate(APP_ID)
        rotated = await json_record(redis_client, f"central:{APP_ID}:token")
        assert rotated["access_token"] == (await central.current(APP_ID)).value
        assert (await jsapi_ticket(http, base, rotated["access_token"]))["errcode"] == 0
    finally:
        await central.stop()


async def test_central_writes_plain_tokens_with_their_ttl(
    wecom: WeChatSandbox, raw_keys: RawKeys, redis_client: aioredis.Redis
) -> None:
    """The plain record is the token alone under the configured key, its TTL the token's seconds left."""
    wecom.token_expires_in = 60
    central = CentralTokenServer(wecom, [APP_ID], keys=raw_keys, key_format="wx/{app}", record="plain")
    await central.start()
    try:
        assert await redis_client.get(f"wx/{APP_ID}") == (await central.current(APP_ID)).value
        assert 59 <= await redis_client.ttl(f"wx/{APP_ID}") <= 60
        await central.rotate(APP_ID)
        assert await redis_client.get(f"wx/{APP_ID}") == (await central.current(APP_ID)).value
    finally:
        await central.stop()


async def test_central_renews_redis_keys_on_its_own_timer(
    wecom: WeChatSandbox, clock: Clock, raw_keys: RawKeys, redis_client: aioredis.Redis
) -> None:
    """Redis readers never ask, so the central server writes a new token once the held one is within a fifth of expiry."""
    wecom.token_expires_in = 1
    central = CentralTokenServer(wecom, [MAIL], keys=raw_keys, record="plain")
    await central.start()
    try:
        first = await redis_client.get(f"central:{MAIL}:token")
        clock.now += 0.85
        for _ in range(40):
            if await redis_client.get(f"central:{MAIL}:token") not in (first, None):
                break
            await asyncio.sleep(0.05)
        renewed = await redis_client.get(f"central:{MAIL}:token")
        assert renewed not in (first, None) and renewed == (await central.current(MAIL)).value
        assert 0 < await redis_client.pttl(f"central:{MAIL}:token") <= 1000
    finally:
        await central.stop()
