"""The credential store against the sandbox: single-flight, refresh ahead, recovery and negative caching."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from jssdk_service.config import Secret
from jssdk_service.keys import STORE
from jssdk_service.sandbox import WeChatSandbox

from .helpers import (
    APP_ID,
    PAGE,
    RunningService,
    ServiceFactory,
    make_account,
    short_lifetimes,
    sign,
    signing_ticket,
    steady_traffic,
)


async def test_a_cold_burst_costs_one_token_and_one_ticket_call(
    start_service: ServiceFactory, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """300 concurrent requests at a cold cache send one token call and one ticket call upstream."""
    sandbox.faults.delay = 0.2  # keep the first refresh in flight while the burst arrives
    service = await start_service()
    results = await asyncio.gather(*(sign(http, service.url, f"{PAGE}?n={i}") for i in range(300)))
    assert [status for status, _ in results] == [200] * 300
    assert sandbox.count("stable_token") == 1
    assert sandbox.count("getticket") == 1
    assert all(signing_ticket(sandbox, body, f"{PAGE}?n={i}") for i, (_, body) in enumerate(results))


@pytest.fixture
async def warm_service(
    start_service: ServiceFactory, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> RunningService:
    """The service with tickets living 2 s, after one request it signed."""
    sandbox.ticket_expires_in = 2
    service = await start_service()
    assert (await sign(http, service.url))[0] == 200
    return service


async def test_an_expired_ticket_is_refetched_once_for_a_burst(
    warm_service: RunningService, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """With no background refresh, a burst at an expired ticket refetches it lazily, with one call."""
    service = warm_service
    await service.app[STORE].stop()
    before = sandbox.count("getticket")
    await asyncio.sleep(2.1)
    assert sandbox.count("getticket") == before
    sandbox.faults.delay = 0.2
    results = await asyncio.gather(*(sign(http, service.url) for _ in range(200)))
    assert {status for status, _ in results} == {200}
    assert sandbox.count("getticket") - before == 1


async def test_steady_traffic_across_short_lifetimes(
    start_service: ServiceFactory, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """Over several 3-second lifetimes of classic tokens and tickets, no request fails or uses an expired ticket."""
    short_lifetimes(sandbox, 3, classic_overlap=1)
    service = await start_service(accounts=(make_account(token_api="classic"),))
    checked = await steady_traffic(http, sandbox, [service.url] * 5, 10, pause=0.05)
    assert checked > 200
    # Refreshed ahead of expiry, once per lifetime or so: never per request.
    assert 3 <= sandbox.count("getticket") <= 8
    assert sandbox.count("getticket", ok_only=True) == sandbox.count("getticket")


async def test_a_token_knocked_out_upstream_is_replaced_without_failures(
    warm_service: RunningService, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """When getticket says 40001, the token is dropped, fetched anew and the ticket call retried once."""
    service = warm_service
    sandbox.knock_out_tokens(APP_ID)
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        results = await asyncio.gather(*(sign(http, service.url) for _ in range(5)))
        assert {status for status, _ in results} == {200}
        await asyncio.sleep(0.05)
    failed = [c for c in sandbox.calls if c.api == "getticket" and c.errcode == 40001]
    assert len(failed) == 1
    assert sandbox.count("stable_token") == 2


async def test_a_wrong_secret_is_negatively_cached(start_service: ServiceFactory, sandbox: WeChatSandbox,
                                                   http: aiohttp.ClientSession) -> None:  # fmt: skip
    """200 requests with a wrong AppSecret cost WeChat one call, and each is answered at once."""
    service = await start_service(accounts=(make_account(secret=Secret("wrong")),))
    started = time.monotonic()
    statuses = [(await sign(http, service.url))[0] for _ in range(100)]
    statuses += [status for status, _ in await asyncio.gather(*(sign(http, service.url) for _ in range(100)))]
    assert statuses == [503] * 200
    assert time.monotonic() - started < 5
    assert sandbox.count("stable_token") == 1


async def test_refresh_happens_ahead_of_expiry_in_the_background(
    start_service: ServiceFactory, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """With no traffic at all, the background task renews the ticket before it expires."""
    sandbox.ticket_expires_in = 2
    service = await start_service()
    await service.credentials().ticket()
    await asyncio.sleep(3.5)
    assert sandbox.count("getticket") >= 2
    status = service.credentials().status()
    assert status.ready and status.ticket_expires_in is not None and status.ticket_expires_in > 0
