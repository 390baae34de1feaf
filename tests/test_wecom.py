"""WeCom self-built apps against the sandbox's qyapi: wx.config with the corp ticket, wx.agentConfig with
the app's agent ticket, the share payloads, and WeCom's hourly ticket limits kept."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import pytest

from jssdk_service.config import Secret
from jssdk_service.sandbox import WeChatSandbox
from jssdk_service.sandbox_wecom import SandboxWeComApp

from .helpers import (
    AGENT_ID,
    CORP_ID,
    PAGE,
    WECOM_KEY,
    WECOM_SECRET,
    RunningService,
    ServiceFactory,
    evidence,
    make_account,
    make_wecom_account,
    metric_sample,
    short_lifetimes,
    verifies,
)

ADMIN = "wecom-admin-token-0123456789"
WECOM_APIS = ("onMenuShareAppMessage", "onMenuShareWechat", "onMenuShareTimeline")


async def get(http: aiohttp.ClientSession, address: str, **params: str) -> tuple[int, Any]:
    async with http.get(address, params=params) as response:
        return response.status, await response.json()


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any], **kwargs: Any) -> tuple[int, Any]:
    async with http.post(url, json=body, **kwargs) as response:
        return response.status, await response.json()


def agent_verdict(sandbox: WeChatSandbox, agent_config: dict[str, Any], page: str = PAGE) -> dict[str, Any]:
    """What the WeCom client's wx.agentConfig says of `agent_config` on `page`."""
    return sandbox.verify_agent_config(
        corp_id=agent_config["corpid"], agent_id=agent_config["agentid"], url=page,
        nonce=agent_config["nonceStr"], timestamp=agent_config["timestamp"], signature=agent_config["signature"],
    )  # fmt: skip


@pytest.fixture
async def both(start_service: ServiceFactory) -> RunningService:
    """The service with an official account ("main") and the WeCom app ("wecom")."""
    return await start_service(accounts=(make_account(), make_wecom_account()), admin_token=Secret(ADMIN))


async def test_wx_config_of_a_wecom_app_is_signed_with_the_corp_ticket(
    both: RunningService, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """/v1/signature gives wx.config's object with beta and the corp_id, signed with the corp ticket; the warm
    answer (the fast lane's) is the same; the app is named by its name or by corp_id:agent_id."""
    answered = both.lane.answered
    for app in ("wecom", WECOM_KEY, "wecom"):
        status, config = await get(http, f"{both.url}/v1/signature", url=PAGE, app=app)
        assert status == 200, config
        assert set(config) == {"appId", "beta", "timestamp", "nonceStr", "signature", "jsApiList"}
        assert (config["appId"], config["beta"], tuple(config["jsApiList"])) == (CORP_ID, True, WECOM_APIS)
        assert verifies(sandbox, config)
        assert sandbox.ticket_that_signed(CORP_ID, **evidence(config, PAGE)) in sandbox.corp_tickets(WECOM_KEY)
    assert both.lane.answered > answered, "the warm signatures came from the fast lane"
    status, official = await get(http, f"{both.url}/v1/signature", url=PAGE, app="main")
    assert status == 200 and "beta" not in official


async def test_wx_agent_config_is_signed_with_the_apps_agent_ticket(
    both: RunningService, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """/v1/agent-signature (GET and POST) gives wx.agentConfig's object, which the client accepts; an
    official account has none."""
    status, agent = await get(http, f"{both.url}/v1/agent-signature", url=PAGE, app="wecom")
    assert status == 200, agent
    assert set(agent) == {"corpid", "agentid", "timestamp", "nonceStr", "signature", "jsApiList"}
    assert (agent["corpid"], agent["agentid"], tuple(agent["jsApiList"])) == (CORP_ID, AGENT_ID, WECOM_APIS)
    assert agent_verdict(sandbox, agent) == {"errMsg": "agentConfig:ok", "signedWith": "agent"}
    status, posted = await post(http, f"{both.url}/v1/agent-signature", {"url": PAGE, "app": WECOM_KEY})
    assert status == 200 and agent_verdict(sandbox, posted)["errMsg"] == "agentConfig:ok"
    # The corp ticket's signature is not the agent ticket's: the client tells them apart.
    _, config = await get(http, f"{both.url}/v1/signature", url=PAGE, app="wecom")
    swapped = {**agent, "nonceStr": config["nonceStr"], "timestamp": config["timestamp"],
               "signature": config["signature"]}  # fmt: skip
    assert agent_verdict(sandbox, swapped)["signedWith"] == "corp"
    for method in ("GET", "POST"):
        async with http.request(method, f"{both.url}/v1/agent-signature", params={"url": PAGE, "app": "main"}
                                if method == "GET" else None, json={"url": PAGE, "app": "main"}
                                if method == "POST" else None) as response:  # fmt: skip
            body = await response.json()
            assert (response.status, body["error"]["code"]) == (404, "unknown_app")
            assert "not a WeCom app" in body["error"]["message"]
    status, body = await get(http, f"{both.url}/v1/agent-signature", url="https://elsewhere.test/", app="wecom")
    assert (status, body["error"]["code"]) == (403, "host_not_allowed")


async def test_share_of_a_wecom_app_has_both_configs_and_three_payloads(
    both: RunningService, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """/v1/share for a WeCom app: config and agentConfig, each verified, and the onMenuShare* payloads."""
    page = "https://example.com/news/1?from=x"
    status, share = await post(http, f"{both.url}/v1/share", {"url": page, "app": "wecom",
                                                              "share": {"title": "T", "desc": "D"}})  # fmt: skip
    assert status == 200, share
    assert set(share) == {"config", "agentConfig", "appMessage", "wechat", "timeline"}
    assert share["config"]["beta"] is True and verifies(sandbox, share["config"], page)
    assert agent_verdict(sandbox, share["agentConfig"], page)["errMsg"] == "agentConfig:ok"
    assert share["appMessage"] == share["wechat"] == {"title": "T", "desc": "D", "link": page,
                                                      "imgUrl": share["appMessage"]["imgUrl"]}  # fmt: skip
    assert share["timeline"] == {"title": "T", "link": page, "imgUrl": share["appMessage"]["imgUrl"]}
    status, official = await get(http, f"{both.url}/v1/share", url=page, app="main")
    assert status == 200 and set(official) == {"config", "appMessage", "timeline"}
    async with http.get(f"{both.url}/metrics") as response:
        text = await response.text()
    for kind in ("token", "ticket", "agent_ticket"):
        ttl = metric_sample(text, "jssdk_credential_ttl_seconds", app="wecom", kind=kind)
        assert ttl is not None and 7000 < ttl <= 7200, kind
    assert metric_sample(text, "jssdk_credential_ttl_seconds", app="main", kind="agent_ticket") is None


async def test_a_cold_burst_costs_one_token_and_one_call_per_ticket(
    both: RunningService, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """300 concurrent requests of every kind at a cold cache: one gettoken, one corp and one agent ticket call."""
    sandbox.faults.delay = 0.2
    paths = ("/v1/signature", "/v1/agent-signature", "/v1/share")
    results = await asyncio.gather(*(get(http, f"{both.url}{paths[i % 3]}", url=f"{PAGE}?n={i}", app="wecom")
                                     for i in range(300)))  # fmt: skip
    assert [status for status, _ in results] == [200] * 300
    assert (sandbox.count("gettoken"), sandbox.count("get_jsapi_ticket"), sandbox.count("get_agent_ticket")) == (
        1, 1, 1,
    )  # fmt: skip
    assert sandbox.count("stable_token", WECOM_KEY) == sandbox.count("token", WECOM_KEY) == 0


async def test_steady_traffic_across_short_lifetimes(
    both: RunningService, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """Over several 3-second lifetimes, every share answer verifies (both configs) and both tickets are
    refreshed ahead, about once a lifetime."""
    short_lifetimes(sandbox, 3)
    deadline = time.monotonic() + 8
    answered = 0
    while time.monotonic() < deadline:
        page = f"{PAGE}?n={answered}"
        status, share = await get(http, f"{both.url}/v1/share", url=page, app="wecom")
        assert status == 200, share
        assert verifies(sandbox, share["config"], page)
        assert agent_verdict(sandbox, share["agentConfig"], page)["errMsg"] == "agentConfig:ok"
        answered += 1
        await asyncio.sleep(0.05)
    assert answered > 20
    for api in ("get_jsapi_ticket", "get_agent_ticket"):
        assert 3 <= sandbox.count(api) <= 8, api
        assert sandbox.count(api, ok_only=True) == sandbox.count(api)


async def test_a_knocked_out_token_is_replaced_once(
    start_service: ServiceFactory, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """When a ticket call says the token is dead, one new gettoken and the call again; no request fails."""
    sandbox.ticket_expires_in = 2
    service = await start_service(accounts=(make_wecom_account(),))
    assert (await get(http, f"{service.url}/v1/share", url=PAGE))[0] == 200
    sandbox.knock_out_tokens(WECOM_KEY)
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        results = await asyncio.gather(*(get(http, f"{service.url}/v1/share", url=PAGE) for _ in range(5)))
        assert {status for status, _ in results} == {200}
        await asyncio.sleep(0.05)
    refused = [c for c in sandbox.calls if c.api in ("get_jsapi_ticket", "get_agent_ticket") and c.errcode]
    assert [c.errcode for c in refused] == [40014]
    assert sandbox.count("gettoken") == 2


async def test_forced_refreshes_never_exceed_the_hourly_limits(
    both: RunningService, sandbox: WeChatSandbox, http: aiohttp.ClientSession, all_logs: pytest.LogCaptureFixture
) -> None:
    """A burst of forced refreshes stops at WeCom's 100 an app: the 101st is 429 here, WeCom never says
    45009, a warning comes at 80%, and the app keeps signing."""
    headers = {"Authorization": f"Bearer {ADMIN}"}
    refresh = f"{both.url}/admin/apps/wecom/refresh"
    assert (await get(http, f"{both.url}/v1/share", url=PAGE, app="wecom"))[0] == 200
    statuses = []
    for _ in range(100):
        async with http.post(refresh, headers=headers) as response:
            statuses.append(response.status)
            if response.status != 200:
                limited = await response.json()
                retry_after = int(response.headers["Retry-After"])
    assert statuses == [200] * 99 + [429]
    assert limited["error"]["code"] == "refresh_limited"
    assert "100 calls of each ticket API an hour per app" in limited["error"]["message"]
    assert 0 < retry_after <= 3600 + 600
    assert sandbox.count("get_jsapi_ticket") == sandbox.count("get_agent_ticket") == 100
    assert not [c for c in sandbox.calls if c.errcode == 45009]
    # Spent: a forced refresh with a new token is refused before any call, gettoken included.
    async with http.post(refresh, params={"token": "1"}, headers=headers) as response:
        assert (response.status, (await response.json())["error"]["code"]) == (429, "refresh_limited")
        assert 0 < int(response.headers["Retry-After"]) <= 600
    assert sandbox.count("gettoken") == 1 and sandbox.count("get_jsapi_ticket") == 100
    warnings = [
        r.getMessage() for r in all_logs.records if r.levelno == logging.WARNING and "WeCom's limit" in r.getMessage()
    ]
    assert any("80 get_jsapi_ticket calls in the last hour" in w for w in warnings), warnings
    status, share = await get(http, f"{both.url}/v1/share", url=PAGE, app="wecom")
    assert status == 200 and verifies(sandbox, share["config"])
    assert agent_verdict(sandbox, share["agentConfig"])["errMsg"] == "agentConfig:ok"
    # The admin API shows how much of the hour is spent, and both tickets' lifetimes.
    async with http.get(f"{both.url}/admin/apps", headers=headers) as response:
        apps = {entry["app"]: entry for entry in (await response.json())["apps"]}
    wecom, main = apps["wecom"], apps["main"]
    assert (wecom["kind"], wecom["tokenSource"], "tokenApi" in wecom) == ("wecom", "secret", False)
    assert wecom["ticketCallsLastHour"] == {"get_jsapi_ticket": 100, "get_agent_ticket": 100,
                                            "get_jsapi_ticket@corp": 100}  # fmt: skip
    assert wecom["upstreamCallsToday"] == {"gettoken": 1, "get_jsapi_ticket": 100, "get_agent_ticket": 100}
    assert wecom["agentTicket"]["expiresIn"] > 7000 and wecom["ticket"]["expiresIn"] > 7000
    assert (main["kind"], main["tokenApi"], "agentTicket" in main, "ticketCallsLastHour" in main) == (
        "official", "stable", False, False,
    )  # fmt: skip
    text = all_logs.text + str(limited) + str(apps)
    assert WECOM_SECRET not in text
    assert not any(t.value in text for t in sandbox.corp_tickets(WECOM_KEY) + sandbox.agent_tickets(WECOM_KEY))


async def test_wecom_errors_reach_readyz_with_their_fix(
    start_service: ServiceFactory, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """A wrong app secret (40001) and a wrong corp (40013) are reported on /readyz with what to fix; no secret."""
    wrong_secret = make_wecom_account(secret=Secret("not-the-apps-secret"))
    wrong_corp = make_wecom_account(name="other", app_id="ww00000000000000ff")
    service = await start_service(accounts=(wrong_secret, wrong_corp))
    for app in ("wecom", "other"):
        status, body = await get(http, f"{service.url}/v1/signature", url=PAGE, app=app)
        assert (status, body["error"]["code"]) == (503, "upstream_rejected"), body
    async with http.get(f"{service.url}/readyz") as response:
        readiness = await response.json()
        assert response.status == 503
    reasons = {a["app"]: a for a in readiness["accounts"]}
    assert reasons["wecom"]["errcode"] == 40001 and "secret" in reasons["wecom"]["fix"]
    assert reasons["other"]["errcode"] == 40013 and "corp" in reasons["other"]["fix"].lower()
    assert "not-the-apps-secret" not in str(readiness) and WECOM_SECRET not in str(readiness)


async def test_a_caller_outside_the_apps_ip_whitelist_is_told_its_ip(
    start_service: ServiceFactory, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """WeCom's 60020 (企业可信IP): refused, not retried, and /readyz names the IP to add."""
    sandbox.add_wecom_app(SandboxWeComApp(corp_id=CORP_ID, agent_id="1000009", secret="fenced-app-secret-0123",
                                          ip_whitelist=frozenset({"10.9.9.9"})))  # fmt: skip
    fenced = make_wecom_account(name="fenced", agent_id="1000009", secret=Secret("fenced-app-secret-0123"))
    service = await start_service(accounts=(fenced,))
    status, body = await get(http, f"{service.url}/v1/signature", url=PAGE)
    assert (status, body["error"]["code"]) == (503, "upstream_rejected")
    async with http.get(f"{service.url}/readyz") as response:
        (account,) = (await response.json())["accounts"]
    assert account["errcode"] == 60020
    assert "127.0.0.1" in account["fix"] and "fenced-app-secret-0123" not in str(account)
    assert sandbox.count("gettoken") == 1
