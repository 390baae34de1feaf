"""WeChat's own quota over HTTP against the sandbox: asked live, shown beside our count, and reset only when confirmed."""

from __future__ import annotations

import asyncio
import calendar
import json
import time
from collections import deque
from pathlib import Path
from typing import Any, Literal

import aiohttp
import httpx
import pytest

from jssdk_service.config import Secret, TokenURL
from jssdk_service.errors import UpstreamRejected, UpstreamUnavailable
from jssdk_service.keys import CACHE
from jssdk_service.quotas import china_month
from jssdk_service.sandbox import SandboxServer, WeChatSandbox
from jssdk_service.sandbox_central import CentralTokenServer
from jssdk_service.wechat import WeChatClient

from .helpers import (
    ACCOUNT_ENV,
    AGENT_ID,
    APP_ID,
    AUTHORIZER,
    COMPONENT_APPID,
    COMPONENT_SECRET,
    CORP_ID,
    FAST_RETRY,
    OTHER_SECRET,
    SECRET,
    WECOM_SECRET,
    RunningService,
    ServiceFactory,
    events_url,
    make_account,
    make_platform,
    make_wecom_account,
    metric_sample,
    readyz,
    run_cli,
    sandbox_platform,
    sign,
    standard_sandbox,
    write_toml,
)
from .helpers import (
    CommandResult as Result,
)
from .test_notify import events, until, webhooks

ADMIN = "quota-admin-token-0123456789"
BEARER = {"Authorization": f"Bearer {ADMIN}"}
CENTRAL_BEARER = "central-bearer-for-quota-tests"


@pytest.fixture
def sandbox() -> WeChatSandbox:
    """An emulator that knows the two test accounts, the test WeCom app and the test platform."""
    return standard_sandbox(platforms=[sandbox_platform()])


@pytest.fixture
async def service(start_service: ServiceFactory, http: aiohttp.ClientSession) -> RunningService:
    """The service with the admin API and the test account, which has signed once (a token and a ticket)."""
    running = await start_service(admin_token=Secret(ADMIN))
    assert (await sign(http, running.url))[0] == 200
    return running


async def admin(
    http: aiohttp.ClientSession, method: str, url: str, body: dict[str, Any] | None = None
) -> tuple[int, Any]:
    """An admin request with the bearer token: the status and the JSON body."""
    async with http.request(method, url, headers=BEARER, json=body) as response:
        return response.status, await response.json()


async def apps(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    """GET /admin/apps, each entry by its name."""
    status, body = await admin(http, "GET", f"{base}/admin/apps")
    assert status == 200, body
    return {entry["app"]: entry for entry in body["apps"]}


def secrets_of(sandbox: WeChatSandbox) -> list[str]:
    """Every value that must never be shown: the secrets and every token and ticket the sandbox issued."""
    return [SECRET, OTHER_SECRET, COMPONENT_SECRET, WECOM_SECRET, *sandbox.issued]


def assert_nothing_secret(sandbox: WeChatSandbox, *texts: str) -> None:
    """None of `texts` holds a secret, a token or a ticket."""
    for text in texts:
        for value in secrets_of(sandbox):
            assert value not in text


async def spend_elsewhere(sandbox_url: str, tickets: int) -> None:
    """Another system using the test account: a stable token and `tickets` tickets, straight from WeChat."""
    async with httpx.AsyncClient() as client:
        body = {"grant_type": "client_credential", "appid": APP_ID, "secret": SECRET}
        token = (await client.post(f"{sandbox_url}/cgi-bin/stable_token", json=body)).json()["access_token"]
        for _ in range(tickets):
            params = {"access_token": token, "type": "jsapi"}
            assert (await client.get(f"{sandbox_url}/cgi-bin/ticket/getticket", params=params)).json()["errcode"] == 0


# -- WeChat's figures, next to ours -------------------------------------------------------------


async def test_live_quota_counts_every_caller_beside_our_own_count(
    service: RunningService, sandbox: WeChatSandbox, sandbox_url: str, http: aiohttp.ClientSession,
    all_logs: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """GET …/quota answers WeChat's live figures (another system's calls included) beside the service's own
    count, and /admin/apps shows them from then on (null before), without asking WeChat itself."""
    assert (await apps(http, service.url))["main"]["wechatQuota"] is None
    await spend_elsewhere(sandbox_url, tickets=2)

    status, body = await admin(http, "GET", f"{service.url}/admin/apps/main/quota")
    assert status == 200, body
    assert (body["app"], body["appId"]) == ("main", APP_ID)
    quota = body["wechatQuota"]
    assert set(quota) == {"stable_token", "getticket"}
    assert {k: v for k, v in quota["stable_token"].items() if k != "askedAt"} == {
        "dailyLimit": 500_000, "used": 2, "remain": 499_998}  # fmt: skip
    assert {k: v for k, v in quota["getticket"].items() if k != "askedAt"} == {
        "dailyLimit": 2000, "used": 3, "remain": 1997}  # fmt: skip
    assert quota["getticket"]["askedAt"].endswith("Z")
    assert body["upstreamCallsToday"] == {"stable_token": 1, "getticket": 1}
    assert sandbox.count("quota_get", APP_ID, ok_only=True) == 2

    entry = (await apps(http, service.url))["main"]
    assert entry["wechatQuota"] == quota
    assert entry["upstreamCallsToday"] == {"token": 0, "stable_token": 1, "getticket": 1}
    assert sandbox.count("quota_get") == 2, "/admin/apps reads the kept answer, never WeChat"
    assert_nothing_secret(sandbox, str(body), str(entry), all_logs.text)


@pytest.mark.parametrize("record", [
    {"apis": {"token": {"used": 1}}, "asked_at": 1.0}, {"apis": {"token": {"daily_limit": 1, "used": 1, "remain": 0}}},
    {"apis": {"token": {"daily_limit": "x", "used": 1, "remain": 0}}, "asked_at": 1.0},
    {"apis": ["token"], "asked_at": 1.0}, {"apis": {"token": {"daily_limit": 1, "used": 1, "remain": 0}},
                                          "asked_at": "yesterday"},
])  # fmt: skip
async def test_a_kept_answer_this_version_cannot_read_is_not_shown(
    service: RunningService, http: aiohttp.ClientSession, record: dict[str, Any]
) -> None:
    """The fleet shares the kept quota/get answer: one another version wrote (or a broken one) is shown as not
    asked (null), never a 500."""
    await service.app[CACHE].set(f"{APP_ID}:wechat-quota", record, 600)
    assert (await apps(http, service.url))["main"]["wechatQuota"] is None


async def test_wechats_figures_past_80_percent_are_exported_and_told(
    start_service: ServiceFactory, sandbox: WeChatSandbox, sandbox_url: str, http: aiohttp.ClientSession
) -> None:
    """Another system spending the account's tickets shows in WeChat's figures only: once asked, past 80% they
    set jssdk_quota_used_ratio and are one quota notification, as the fleet's own count would be; a reset
    takes the ratio away."""
    sandbox.daily_quota["getticket"] = 10
    service = await start_service(accounts=(make_account(name="spent-elsewhere"),), admin_token=Secret(ADMIN),
                                  webhooks=webhooks(sandbox_url, sandbox))  # fmt: skip
    assert (await sign(http, service.url, app="spent-elsewhere"))[0] == 200
    await spend_elsewhere(sandbox_url, tickets=8)  # 9 of 10 with the service's own
    for _ in range(2):
        status, body = await admin(http, "GET", f"{service.url}/admin/apps/spent-elsewhere/quota")
        assert status == 200 and body["wechatQuota"]["getticket"]["used"] == 9, body
    async with http.get(f"{service.url}/metrics") as response:
        text = await response.text()
    labels = {"app": "spent-elsewhere", "api": "getticket", "window": "day"}
    assert metric_sample(text, "jssdk_quota_used_ratio", **labels) == 0.9
    await until(lambda: len(events(sandbox, "json", "quota")) == 1)
    await asyncio.sleep(0.3)
    (told,) = events(sandbox, "json")
    assert (told["app"], told["api"], told["used"], told["limit"]) == ("spent-elsewhere", "getticket", 9, 10)
    status, _ = await admin(http, "POST", f"{service.url}/admin/apps/spent-elsewhere/clear-quota",
                            {"confirm": "spent-elsewhere"})  # fmt: skip
    assert status == 200
    async with http.get(f"{service.url}/metrics") as response:
        assert 'jssdk_quota_used_ratio{app="spent-elsewhere"' not in await response.text()


async def test_a_classic_account_asks_about_the_classic_token_api(
    start_service: ServiceFactory, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """An account on cgi-bin/token is asked about /cgi-bin/token's quota (2000 a day), not stable_token's."""
    service = await start_service(accounts=(make_account(token_api="classic"),), admin_token=Secret(ADMIN))
    assert (await sign(http, service.url))[0] == 200
    status, body = await admin(http, "GET", f"{service.url}/admin/apps/{APP_ID}/quota")
    assert status == 200, body
    assert body["wechatQuota"]["token"]["dailyLimit"] == 2000 and body["wechatQuota"]["token"]["used"] == 1
    assert body["upstreamCallsToday"] == {"token": 1, "getticket": 1}


async def test_a_refused_quota_question_is_a_503_with_the_errcode(
    service: RunningService, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """A quota/get WeChat refuses (76022) is 503 upstream_rejected naming the errcode, and nothing is kept."""
    sandbox.faults.script = deque([76022])
    status, body = await admin(http, "GET", f"{service.url}/admin/apps/main/quota")
    assert (status, body["error"]["code"]) == (503, "upstream_rejected")
    assert "76022" in body["error"]["message"]
    assert (await apps(http, service.url))["main"]["wechatQuota"] is None
    status, body = await admin(http, "GET", f"{service.url}/admin/apps/nobody/quota")
    assert (status, body["error"]["code"]) == (404, "unknown_app")


async def test_a_dead_token_is_a_503_that_says_to_ask_again_never_a_500(
    service: RunningService, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """A token WeChat no longer takes (and no newer one held) answers 503 upstream_unavailable without the token,
    here and in the other operations call that asks with it (callback-check)."""
    sandbox.knock_out_tokens(APP_ID)
    for method, path in (("GET", "quota"), ("POST", "callback-check")):
        status, body = await admin(
            http, method, f"{service.url}/admin/apps/main/{path}", {} if method == "POST" else None
        )
        assert (status, body["error"]["code"]) == (503, "upstream_unavailable"), body
        assert "40001" in body["error"]["message"] and "ask again" in body["error"]["message"]
        assert_nothing_secret(sandbox, str(body))


async def test_an_authorizers_quota_is_its_tickets_and_resets_with_the_platform_secret(
    start_service: ServiceFactory, sandbox: WeChatSandbox, http: aiohttp.ClientSession,
    all_logs: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """A platform's authorizer is asked about its getticket quota with its own token, and is reset on its
    behalf with component/clear_quota/v2 and the platform's secret, which appears nowhere."""
    service = await start_service(platforms=(make_platform(),), admin_token=Secret(ADMIN))
    sandbox.platforms[COMPONENT_APPID].callback_url = events_url(service.url)
    await sandbox.push_verify_ticket(COMPONENT_APPID)
    await sandbox.authorize(COMPONENT_APPID, AUTHORIZER)
    assert (await sign(http, service.url, app=AUTHORIZER))[0] == 200

    status, body = await admin(http, "GET", f"{service.url}/admin/apps/{AUTHORIZER}/quota")
    assert status == 200, body
    assert set(body["wechatQuota"]) == {"getticket"} and body["wechatQuota"]["getticket"]["used"] == 1
    status, body = await admin(http, "POST", f"{service.url}/admin/apps/{AUTHORIZER}/clear-quota",
                               {"confirm": AUTHORIZER})  # fmt: skip
    assert status == 200, body
    assert (body["resetsThisMonth"], body["resetsLeftThisMonth"]) == (1, 9)
    assert sandbox.count("component_clear_quota", AUTHORIZER, ok_only=True) == 1
    assert sandbox.count("clear_quota") == 0
    status, body = await admin(http, "GET", f"{service.url}/admin/apps/{AUTHORIZER}/quota")
    assert body["wechatQuota"]["getticket"]["used"] == 0
    assert_nothing_secret(sandbox, all_logs.text)


# -- the reset ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "phrase"),
    [(None, 400, "JSON object"), ({}, 400, "confirm"), ({"confirm": "main", "force": True}, 400, "force"),
     ({"confirm": "other"}, 409, "confirm"), ({"confirm": APP_ID}, 409, "confirm")],
    ids=["no-body", "no-confirm", "an-unknown-field", "another-name", "the-appid-for-a-name"],
)  # fmt: skip
async def test_an_unconfirmed_reset_is_refused_and_calls_nothing(
    service: RunningService, sandbox: WeChatSandbox, http: aiohttp.ClientSession, body: dict[str, Any] | None,
    status: int, phrase: str,
) -> None:  # fmt: skip
    """Without a confirm the answer is 400, with one naming the account otherwise than the path does 409 (the
    document allows any text there); either says what to send and what it costs, and WeChat is not called."""
    answered, answer = await admin(http, "POST", f"{service.url}/admin/apps/main/clear-quota", body)
    assert (answered, answer["error"]["code"]) == (status, "invalid_request" if status == 400 else "conflict")
    message = answer["error"]["message"]
    assert phrase in message and '{"confirm": "main"}' in message and "10 resets" in message, message
    assert sandbox.count("clear_quota") == 0


async def test_a_reset_lets_an_account_held_back_by_a_spent_quota_refresh_at_once(
    start_service: ServiceFactory, sandbox: WeChatSandbox, sandbox_url: str, http: aiohttp.ClientSession
) -> None:
    """Another system spent the day's tickets: the account's refresh meets 45009 and is held back until midnight
    China time; a confirmed reset lets it refresh at once, with no request asking."""
    sandbox.daily_quota["getticket"] = 1
    await spend_elsewhere(sandbox_url, tickets=1)
    service = await start_service(accounts=(make_account(name="held-back"),), admin_token=Secret(ADMIN))
    status, body = await sign(http, service.url, app="held-back")
    assert (status, body["error"]["code"]) == (503, "upstream_rejected") and "45009" in body["error"]["message"]
    status, _ = await admin(http, "POST", f"{service.url}/admin/apps/held-back/clear-quota", {"confirm": "held-back"})
    assert status == 200
    deadline = time.monotonic() + 10
    while (await readyz(http, service.url))[0] != 200:
        assert time.monotonic() < deadline, "refreshed after the reset"
        await asyncio.sleep(0.05)
    assert sandbox.count("getticket", APP_ID, ok_only=True) == 2  # the other system's, then the service's


async def test_two_resets_at_once_spend_one(
    service: RunningService, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """A second confirmed reset while the first is under way is 409 (two would spend two of the month's 10);
    once the first is done, another may be asked."""
    sandbox.faults.delay = 0.3
    url = f"{service.url}/admin/apps/main/clear-quota"
    answers = await asyncio.gather(*(admin(http, "POST", url, {"confirm": "main"}) for _ in range(2)))
    assert sorted(status for status, _ in answers) == [200, 409]
    refused = next(body for status, body in answers if status == 409)
    assert refused["error"]["code"] == "conflict" and "under way" in refused["error"]["message"]
    assert sandbox.count("clear_quota") == 1
    sandbox.faults.delay = 0.0
    assert (await admin(http, "POST", url, {"confirm": "main"}))[0] == 200


async def test_a_reset_whose_answer_is_lost_keeps_others_out_for_a_minute(
    service: RunningService, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """WeChat busy (-1) on a reset: whether it took effect is unknown (503, not retried), and another reset is 409
    for the next minute, on the memory cache too (one reset may have been spent already)."""
    sandbox.faults.script.append(-1)
    url = f"{service.url}/admin/apps/main/clear-quota"
    status, body = await admin(http, "POST", url, {"confirm": "main"})
    assert (status, body["error"]["code"]) == (503, "upstream_unavailable") and "unknown" in body["error"]["message"]
    status, body = await admin(http, "POST", url, {"confirm": "main"})
    assert (status, body["error"]["code"]) == (409, "conflict")
    assert sandbox.count("clear_quota") == 1


async def test_a_confirmed_reset_clears_the_used_counts_and_says_what_is_left(
    service: RunningService, sandbox: WeChatSandbox, sandbox_url: str, http: aiohttp.ClientSession,
    all_logs: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """A reset confirmed by name (or by appId, as the path names it) zeroes WeChat's counts, counts the month's
    resets, hides the figures asked before it, and is logged without the secret."""
    await spend_elsewhere(sandbox_url, tickets=1)
    assert (await admin(http, "GET", f"{service.url}/admin/apps/main/quota"))[0] == 200
    status, body = await admin(http, "POST", f"{service.url}/admin/apps/main/clear-quota", {"confirm": "main"})
    assert status == 200, body
    assert body == {"app": "main", "appId": APP_ID, "cleared": True, "resetsThisMonth": 1, "resetsLeftThisMonth": 9}
    assert sandbox.count("clear_quota", APP_ID, ok_only=True) == 1
    assert (await apps(http, service.url))["main"]["wechatQuota"] is None, "the figures before the reset are gone"

    status, body = await admin(http, "GET", f"{service.url}/admin/apps/main/quota")
    assert {api: q["used"] for api, q in body["wechatQuota"].items()} == {"stable_token": 0, "getticket": 0}
    status, body = await admin(http, "POST", f"{service.url}/admin/apps/{APP_ID}/clear-quota", {"confirm": APP_ID})
    assert (status, body["resetsThisMonth"], body["resetsLeftThisMonth"]) == (200, 2, 8)
    resets = [r.getMessage() for r in all_logs.records if "quotas reset" in r.getMessage()]
    assert len(resets) == 2 and "app=main" in resets[0] and "clear_quota/v2" in resets[0]
    assert_nothing_secret(sandbox, str(body), all_logs.text)


async def test_the_eleventh_reset_of_a_month_is_refused_and_none_left_is_never_negative(
    service: RunningService, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """Ten resets count down to none left; WeChat refuses the 11th (48006: a 503 with the errcode, not counted);
    resets WeChat takes past ten (its limit, not ours) still leave 0, never less."""
    url = f"{service.url}/admin/apps/main/clear-quota"
    left = [(await admin(http, "POST", url, {"confirm": "main"}))[1]["resetsLeftThisMonth"] for _ in range(10)]
    assert left == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    status, body = await admin(http, "POST", url, {"confirm": "main"})
    assert (status, body["error"]["code"]) == (503, "upstream_rejected")
    assert "48006" in body["error"]["message"]
    assert sandbox.count("clear_quota", APP_ID) == 11 and sandbox.count("clear_quota", APP_ID, ok_only=True) == 10

    sandbox.clear_quota_monthly_limit = 11
    status, body = await admin(http, "POST", url, {"confirm": "main"})
    assert (status, body["resetsThisMonth"], body["resetsLeftThisMonth"]) == (200, 11, 0)


async def test_an_external_account_and_a_wecom_app_get_a_clear_400(
    start_service: ServiceFactory, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """An account whose token another server owns cannot reset (no AppSecret here: its owner must), and a WeCom
    app has neither a quota API nor a reset: each is a 400 saying so, and WeChat is not called."""
    external = make_account(name="external", secret=None, source=TokenURL(url="http://127.0.0.1:9/token"))
    service = await start_service(accounts=(external, make_wecom_account()), admin_token=Secret(ADMIN))
    status, body = await admin(http, "POST", f"{service.url}/admin/apps/external/clear-quota",
                               {"confirm": "external"})  # fmt: skip
    assert (status, body["error"]["code"]) == (400, "invalid_request")
    assert "owner must reset" in body["error"]["message"] and "127.0.0.1:9" in body["error"]["message"]
    for method, path in (("POST", "clear-quota"), ("GET", "quota")):
        status, body = await admin(http, method, f"{service.url}/admin/apps/wecom/{path}",
                                   {"confirm": "wecom"} if method == "POST" else None)  # fmt: skip
        assert (status, body["error"]["code"]) == (400, "invalid_request")
        assert "WeCom has no quota API" in body["error"]["message"]
    assert sandbox.count("clear_quota") == sandbox.count("quota_get") == 0


async def test_an_external_accounts_quota_is_its_ticket_api_asked_with_the_owners_token(
    start_service: ServiceFactory, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """An account reading its token from a central server is asked about getticket only, with that token."""
    central = CentralTokenServer(sandbox, [APP_ID], bearer=CENTRAL_BEARER)
    server = SandboxServer(sandbox, central=central)
    base = await server.start()
    try:
        source = TokenURL(url=f"{base}/sandbox/central/token?app={APP_ID}", auth=Secret(CENTRAL_BEARER))
        service = await start_service(accounts=(make_account(secret=None, source=source),), admin_token=Secret(ADMIN))
        assert (await sign(http, service.url))[0] == 200
        status, body = await admin(http, "GET", f"{service.url}/admin/apps/main/quota")
        assert status == 200, body
        assert set(body["wechatQuota"]) == {"getticket"} and body["wechatQuota"]["getticket"]["used"] == 1
        assert body["upstreamCallsToday"] == {"getticket": 1}
    finally:
        await server.stop()


# -- the WeChat client and the sandbox ----------------------------------------------------------


async def test_the_reset_sends_the_secret_in_the_body_once_and_scrubs_it() -> None:
    """clear_quota/v2 carries the AppSecret in its JSON body, never the URL; a refusal's text hides it, and a
    lost answer is not retried (a retry could spend a second reset)."""
    seen: list[httpx.Request] = []
    answers = deque([{"errcode": 40125, "errmsg": f"invalid appsecret {SECRET} rid: 1-2"}, {"errcode": -1}])

    def wechat(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=answers.popleft())

    client = WeChatClient(["https://wechat.test"], policy=FAST_RETRY, transport=httpx.MockTransport(wechat))
    try:
        with pytest.raises(UpstreamRejected) as refused:
            await client.clear_quota(app_id=APP_ID, secret=SECRET)
        assert refused.value.errcode == 40125 and SECRET not in str(refused.value) and "***" in str(refused.value)
        with pytest.raises(UpstreamUnavailable) as busy:
            await client.clear_quota(app_id=APP_ID, secret=SECRET)
        assert "unknown" in str(busy.value)
    finally:
        await client.aclose()
    assert len(seen) == 2
    assert all(SECRET not in str(request.url) for request in seen)
    assert json.loads(seen[0].content) == {"appid": APP_ID, "appsecret": SECRET}


@pytest.mark.parametrize("reads", ["body", "query", "either"])
async def test_the_reset_works_wherever_wechat_reads_the_secret(
    sandbox: WeChatSandbox, sandbox_url: str, reads: Literal["body", "query", "either"]
) -> None:
    """WeChat's docs disagree on where clear_quota/v2 takes appid and appsecret: the body is tried first, and on
    41004 (missing, no reset spent) the query; either way one reset of the month is spent."""
    sandbox.clear_quota_reads = reads
    client = WeChatClient([sandbox_url], policy=FAST_RETRY)
    try:
        await client.clear_quota(app_id=APP_ID, secret=SECRET)
    finally:
        await client.aclose()
    assert sandbox.count("clear_quota") == (2 if reads == "query" else 1)
    assert sandbox.count("clear_quota", ok_only=True) == 1


async def test_the_sandbox_takes_the_reset_in_the_query_or_the_body(sandbox: WeChatSandbox, sandbox_url: str) -> None:
    """clear_quota/v2 reads appid and appsecret from the query (as the SDKs send them) or a JSON body, checks them,
    and counts each call; quota/get without a known cgi_path is 76021."""
    url = f"{sandbox_url}/cgi-bin/clear_quota/v2"
    async with httpx.AsyncClient() as client:
        assert (await client.post(url, params={"appid": APP_ID, "appsecret": SECRET})).json()["errcode"] == 0
        assert (await client.post(url, json={"appid": APP_ID, "appsecret": SECRET})).json()["errcode"] == 0
        assert (await client.post(url, json={"appid": APP_ID, "appsecret": "wrong"})).json()["errcode"] == 40125
        assert (await client.post(url, params={"appid": APP_ID})).json()["errcode"] == 41004
        assert (await client.post(url)).json()["errcode"] == 41002
        body = {"grant_type": "client_credential", "appid": APP_ID, "secret": SECRET}
        token = (await client.post(f"{sandbox_url}/cgi-bin/stable_token", json=body)).json()["access_token"]
        asked = await client.post(f"{sandbox_url}/cgi-bin/openapi/quota/get", params={"access_token": token},
                                  json={"cgi_path": "/cgi-bin/message/custom/send"})  # fmt: skip
        assert asked.json()["errcode"] == 76021
    assert sandbox.count("clear_quota", APP_ID) == 4 and sandbox.count("clear_quota", APP_ID, ok_only=True) == 2
    assert sandbox.count("quota_get", APP_ID) == 1


def test_a_china_month_begins_at_midnight_china_time() -> None:
    """The month resets are counted in turns at 00:00 UTC+8 on the first: 16:00 UTC the day before."""
    last_second = calendar.timegm((2025, 1, 31, 15, 59, 59))
    assert (china_month(last_second), china_month(last_second + 1)) == ("2025-01", "2025-02")


# -- the command line ---------------------------------------------------------------------------


async def quota_command(*args: str, env: dict[str, str]) -> Result:
    """`jssdk-service quota *args` as a child process in a clean environment plus `env`, to its end."""
    return await run_cli("quota", *args, env=env)


@pytest.fixture
def env(sandbox_url: str) -> dict[str, str]:
    """The test account from the environment, talking to the sandbox."""
    return {**ACCOUNT_ENV, "JSSDK_WECHAT_API_BASE": sandbox_url}


async def test_the_command_prints_wechats_figures_beside_ours(
    sandbox: WeChatSandbox, sandbox_url: str, env: dict[str, str]
) -> None:
    """`quota --app` prints each API's daily limit, used and remaining calls as WeChat counts them, and the
    service's own count; --json prints the admin API's answer."""
    await spend_elsewhere(sandbox_url, tickets=3)
    result = await quota_command("--app", APP_ID, env=env)
    assert (result.code, result.err) == (0, ""), result.err
    rows = {line.split()[0]: line.split()[1:] for line in result.out.splitlines()[1:]}
    assert rows["api"] == ["daily_limit", "used", "remain", "ours_today"]
    assert rows["stable_token"] == ["500000", "2", "499998", "0"], "the other system's token, and the command's"
    assert rows["getticket"] == ["2000", "3", "1997", "0"]
    assert "every caller" in result.out.splitlines()[0]

    result = await quota_command("--app", APP_ID, "--json", env=env)
    assert result.code == 0, result.err
    answer = json.loads(result.out)
    assert answer["appId"] == APP_ID and answer["wechatQuota"]["getticket"]["used"] == 3
    assert answer["upstreamCallsToday"] == {"stable_token": 0, "getticket": 0}
    assert sandbox.count("stable_token", APP_ID) == 3, "each run asks for a token: no fleet to share one with here"
    assert_nothing_secret(sandbox, result.out)


async def test_the_command_exits_1_on_a_wechat_error_and_2_on_a_config_error(
    sandbox: WeChatSandbox, env: dict[str, str], tmp_path: Path
) -> None:
    """A refused secret exits 1 with WeChat's errcode and the fix, never the secret; an unknown account or a
    WeCom app (no quota API) exits 2 with one line; nothing is reset or asked then."""
    wrong = "wrong-secret-value-that-must-not-leak"
    result = await quota_command("--app", APP_ID, env={**env, "JSSDK_APP_SECRET": wrong})
    assert (result.code, result.out) == (1, "")
    assert "40125" in result.err and "secret" in result.err.lower() and "Traceback" not in result.err
    assert wrong not in result.err
    assert_nothing_secret(sandbox, result.err)

    result = await quota_command("--app", "wxnobody", env=env)
    assert result.code == 2 and "--app" in result.err and "wxnobody" in result.err

    config = write_toml(tmp_path, f"""
[[accounts]]
kind = "wecom"
name = "crm"
corp_id = "{CORP_ID}"
agent_id = {AGENT_ID}
secret_env = "CRM_SECRET"
allowed_hosts = ["example.com"]
""", {})  # fmt: skip
    result = await quota_command("--app", "crm", "--config", config, env={"CRM_SECRET": WECOM_SECRET})
    assert result.code == 2 and "WeCom has no quota API" in result.err
    assert result.err.strip().count("\n") == 0
    assert sandbox.count("quota_get") == sandbox.count("clear_quota") == 0
