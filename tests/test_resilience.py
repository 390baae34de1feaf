"""WeChat is slow, busy, unreachable or says no: pages still get signed, and quota is not burned."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from jssdk_service.cache import MemoryCache
from jssdk_service.config import Secret
from jssdk_service.keys import CACHE, STORE, WECHAT
from jssdk_service.quotas import UpstreamUsage
from jssdk_service.sandbox import WeChatSandbox, closed_port_url

from .helpers import APP_ID, RunningService, ServiceFactory, make_account, readyz, sign, verifies

Calls = list[tuple[str, str, str]]


@pytest.fixture
def observed_service(start_service: ServiceFactory) -> Callable[..., Awaitable[tuple[RunningService, Calls]]]:
    """Start the service with a recorder of every HTTP call the WeChat client makes."""

    async def start(**overrides: Any) -> tuple[RunningService, Calls]:
        calls: Calls = []
        service = await start_service(observer=lambda app_id, api, outcome: calls.append((app_id, api, outcome)),
                                      **overrides)  # fmt: skip
        return service, calls

    return start


async def test_half_of_all_calls_failing_fails_no_request(
    start_service: ServiceFactory, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """With -1 and HTTP 500 on half the upstream calls, plus delay, a cold start and 300 requests all succeed."""
    sandbox.faults.error_rates = {-1: 0.25}
    sandbox.faults.http500_rate = 0.25
    sandbox.faults.delay = 0.02
    sandbox.ticket_expires_in = 3
    service = await start_service()
    results = []
    for _ in range(6):
        results += await asyncio.gather(*(sign(http, service.url) for _ in range(50)))
        await asyncio.sleep(0.4)
    assert [status for status, _ in results] == [200] * 300
    assert all(verifies(sandbox, config) for _, config in results)
    failed = [c for c in sandbox.calls if c.errcode != 0]
    assert failed, "the sandbox injected no failure"


async def test_a_dead_first_base_fails_over_and_cools_down(
    observed_service: Callable[..., Any], sandbox: WeChatSandbox, sandbox_url: str, http: aiohttp.ClientSession
) -> None:
    """The first request succeeds through the second base; later refreshes skip the dead one."""
    dead = closed_port_url()
    sandbox.ticket_expires_in = 2
    service, calls = await observed_service(api_bases=(dead, sandbox_url))
    assert (await sign(http, service.url))[0] == 200
    assert service.app[WECHAT].cooling_bases() == [dead]
    connect_failures = [c for c in calls if c[2] == "ConnectError"]
    assert len(connect_failures) == 1
    await asyncio.sleep(3.5)  # two more refreshes
    assert sandbox.count("getticket") >= 3
    assert [c for c in calls if c[2] == "ConnectError"] == connect_failures


async def test_a_failing_refresh_keeps_serving_the_valid_ticket(
    start_service: ServiceFactory, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """When WeChat fails, the still-valid ticket signs; only when it is gone do requests get 503, until recovery."""
    sandbox.ticket_expires_in = 4
    service = await start_service()
    status, config = await sign(http, service.url)
    assert status == 200
    sandbox.faults.http500_rate = 1.0
    issued = sandbox.tickets(APP_ID)[0]
    while time.time() < issued.expires_at - 0.5:
        status, config = await sign(http, service.url)
        assert status == 200 and verifies(sandbox, config)
        await asyncio.sleep(0.1)
    assert sandbox.count("getticket", ok_only=False) > 1 or sandbox.count("stable_token") > 1
    await asyncio.sleep(issued.expires_at - time.time() + 0.1)
    status, body = await sign(http, service.url)
    assert (status, body["error"]["code"]) == (503, "upstream_unavailable")
    assert (await readyz(http, service.url))[0] == 503
    sandbox.faults.http500_rate = 0.0
    deadline = time.monotonic() + 8
    while (await sign(http, service.url))[0] != 200:
        assert time.monotonic() < deadline, "did not recover after WeChat came back"
        await asyncio.sleep(0.2)


async def test_a_wrong_secret_is_rejected_fast_cheaply_and_clearly(
    start_service: ServiceFactory, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """A wrong AppSecret: 503 upstream_rejected at once, one upstream call, and /readyz says what to fix."""
    service = await start_service(accounts=(make_account(secret=Secret("wrong-one")),))
    started = time.monotonic()
    results = await asyncio.gather(*(sign(http, service.url) for _ in range(200)))
    assert time.monotonic() - started < 3
    assert {(status, body["error"]["code"]) for status, body in results} == {(503, "upstream_rejected")}
    assert sandbox.count("stable_token") == 1
    status, body = await readyz(http, service.url)
    (account,) = body["accounts"]
    assert (status, account["errcode"]) == (503, 40125)
    assert "secret" in account["fix"] and account["retryIn"] > 10
    assert "rid:" in account["reason"]


async def test_an_ip_outside_the_whitelist_is_named(
    start_service: ServiceFactory, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """40164: /readyz tells the operator to whitelist the IP WeChat reported."""
    sandbox.accounts[APP_ID].ip_whitelist = frozenset({"10.0.0.9"})
    service = await start_service()
    status, body = await sign(http, service.url)
    assert (status, body["error"]["code"]) == (503, "upstream_rejected")
    assert "40164" in body["error"]["message"]
    (account,) = (await readyz(http, service.url))[1]["accounts"]
    assert account["errcode"] == 40164
    assert "add 127.0.0.1 to the account's API IP whitelist" in account["fix"]


async def test_the_daily_quota_stops_calls_until_the_reset(
    start_service: ServiceFactory, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """45009: requests are refused at once with no further upstream calls, and /readyz says when calls resume."""
    sandbox.daily_quota["getticket"] = 0
    service = await start_service()
    for _ in range(20):
        status, body = await sign(http, service.url)
        assert (status, body["error"]["code"]) == (503, "upstream_rejected")
        assert "45009" in body["error"]["message"]
    assert sandbox.count("getticket") == 1
    (account,) = (await readyz(http, service.url))[1]["accounts"]
    assert account["errcode"] == 45009
    assert "midnight China time" in account["fix"]
    assert 0 < account["retryIn"] <= 86400


async def test_the_minute_quota_waits_for_the_next_minute(
    start_service: ServiceFactory, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """45011: no retry storm; the account waits for the next minute and says so."""
    sandbox.faults.script.append(45011)
    service = await start_service()
    for _ in range(20):
        status, body = await sign(http, service.url)
        assert (status, body["error"]["code"]) == (503, "upstream_unavailable")
    assert sandbox.count("stable_token") == 1
    (account,) = (await readyz(http, service.url))[1]["accounts"]
    assert 0 < account["retryIn"] <= 60


async def test_usage_warns_once_at_80_percent_of_a_known_quota(caplog: pytest.LogCaptureFixture) -> None:
    """Counting the classic token's calls warns once when 80% of its 2000 a day are spent."""
    cache = MemoryCache()
    usage = UpstreamUsage()
    for _ in range(1599):
        usage.record(APP_ID, "token", "ok")
    await usage.flush(cache)
    assert not [r for r in caplog.records if "daily quota" in r.getMessage()]
    usage.record(APP_ID, "token", "ok")
    usage.record(APP_ID, "getticket", "ok")
    await usage.flush(cache)
    usage.record(APP_ID, "token", "ok")
    await usage.flush(cache)
    warnings = [r for r in caplog.records if "daily quota" in r.getMessage()]
    assert len(warnings) == 1 and "1600 of the daily quota of 2000" in warnings[0].getMessage()
    assert await usage.today(cache, APP_ID) == {"token": 1601, "stable_token": 0, "getticket": 1}
    await cache.close()


async def test_upstream_calls_today_are_counted_per_account(
    service: RunningService, http: aiohttp.ClientSession
) -> None:
    """After a cold start the account has counted one stable_token and one getticket call."""
    assert (await sign(http, service.url))[0] == 200
    creds = service.app[STORE][APP_ID]
    assert await creds.calls_today() == {"token": 0, "stable_token": 1, "getticket": 1}


async def test_an_unreadable_cache_record_counts_as_missing(
    service: RunningService, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """Records the service cannot read (another version's format) are fetched anew, never a 500."""
    assert (await sign(http, service.url))[0] == 200
    cache = service.app[CACHE]
    await cache.set(f"{APP_ID}:ticket", {"format": 2}, 60)
    await cache.set(f"{APP_ID}:token:stable", {"value": "x", "obtained_at": "yesterday"}, 60)
    await service.credentials().refresh()
    status, config = await sign(http, service.url)
    assert status == 200 and verifies(sandbox, config)
    assert sandbox.count("getticket") == 2
