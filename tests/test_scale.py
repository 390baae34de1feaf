"""N accounts: bounded upstream concurrency, cold starts that never block, bounded waits, spread refreshes."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from jssdk_service.config import Account, Secret, Settings
from jssdk_service.sandbox import SandboxAccount, SandboxServer, WeChatSandbox
from jssdk_service.scheduler import UpstreamScheduler
from jssdk_service.tokens import JsapiTicket, Spread

from .helpers import RunningService, ServiceFactory, make_account

PAGE = "http://localhost/p"


def accounts(count: int) -> list[Account]:
    return [make_account(name=f"a{i}", app_id=f"wx{i:016x}", secret=Secret(f"secret-{i}")) for i in range(count)]


@pytest.fixture
async def crowd() -> AsyncIterator[tuple[WeChatSandbox, str, list[Account]]]:
    """A slow sandbox (0.1 s a call) that knows 300 accounts, served on loopback, and those accounts."""
    configured = accounts(300)
    sandbox = WeChatSandbox([SandboxAccount(app_id=a.app_id, secret=a.reveal_secret()) for a in configured], seed=3)
    sandbox.faults.delay = 0.1
    server = SandboxServer(sandbox)
    url = await server.start()
    yield sandbox, url, configured
    await server.stop()


async def get(http: aiohttp.ClientSession, endpoint: str, **params: str) -> tuple[int, Any, float]:
    started = time.monotonic()
    async with http.get(endpoint, params=params) as response:
        return response.status, await response.json(), time.monotonic() - started


async def test_a_cold_start_of_300_accounts_is_bounded_and_never_blocks(
    crowd: tuple[WeChatSandbox, str, list[Account]], start_service: ServiceFactory, http: aiohttp.ClientSession
) -> None:
    """300 accounts start with at most 8 upstream calls at once, one token and one ticket call each; the
    listener answers at once, a request for a not-yet-ready account is served ahead of the others, and
    /readyz counts the progress until every account is ready."""
    sandbox, url, configured = crowd
    service = await start_service(accounts=tuple(configured), api_bases=(url,), upstream_concurrency=8)
    status, _, elapsed = await get(http, f"{service.url}/healthz")
    assert status == 200 and elapsed < 1
    status, body, _ = await get(http, f"{service.url}/readyz")
    assert (status, body["total"]) == (503, 300) and body["ready"] < 300
    assert len(body["accounts"]) == 100 and "accountsListed" in body
    # The account that would be ready last is hurried ahead of the background refreshes.
    last = next(a for a in configured if a.app_id not in {c.app_id for c in sandbox.calls})
    status, config, elapsed = await get(http, f"{service.url}/v1/signature", url=PAGE, app=last.name)
    assert status == 200 and config["appId"] == last.app_id
    assert elapsed < 5, "waited longer than the request wait bound"
    deadline = time.monotonic() + 60
    while (await get(http, f"{service.url}/readyz"))[0] != 200:
        assert time.monotonic() < deadline, "not every account became ready"
        await asyncio.sleep(0.2)
    status, body, _ = await get(http, f"{service.url}/readyz")
    assert (body["ready"], body["total"], body["accounts"]) == (300, 300, [])
    assert sandbox.peak_in_flight <= 8
    assert (sandbox.count("stable_token"), sandbox.count("getticket")) == (300, 300)


async def test_a_request_waits_at_most_the_wait_bound(
    start_service: ServiceFactory, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """When WeChat is too slow, a request is answered 503 upstream_unavailable with Retry-After after the
    wait bound, and the refresh it waited for still lands for the next request."""
    sandbox.faults.delay = 1.5
    service = await start_service(request_wait=0.5)
    async with http.get(f"{service.url}/v1/signature", params={"url": PAGE}) as response:
        started = time.monotonic()
        body = await response.json()
    status, elapsed = response.status, time.monotonic() - started
    assert (status, body["error"]["code"]) == (503, "upstream_unavailable")
    assert int(response.headers["Retry-After"]) >= 1 and elapsed < 1.5
    await asyncio.sleep(3.5)
    assert (await get(http, f"{service.url}/v1/signature", url=PAGE))[0] == 200
    assert sandbox.count("getticket") == 1


async def test_a_blocked_account_says_when_to_retry(start_service: ServiceFactory, http: aiohttp.ClientSession) -> None:
    """A configuration WeChat refuses is answered at once with Retry-After: the time of the next attempt."""
    service = await start_service(accounts=(make_account(secret=Secret("wrong")),))
    await get(http, f"{service.url}/v1/signature", url=PAGE)
    async with http.get(f"{service.url}/v1/signature", params={"url": PAGE}) as response:
        assert response.status == 503
        assert 10 <= int(response.headers["Retry-After"]) <= 31


async def test_refresh_times_spread_over_the_window(
    crowd: tuple[WeChatSandbox, str, list[Account]], start_service: ServiceFactory
) -> None:
    """Tickets fetched together get refresh times spread evenly over their window, not one moment."""
    sandbox, url, configured = crowd
    sandbox.faults.delay = 0.0
    service = await start_service(accounts=tuple(configured[:200]), api_bases=(url,))
    tickets = [await service.credentials(account.app_id).ticket() for account in configured[:200]]
    # Ten bins across each ticket's window: an even spread puts about 20 tickets in each.
    bins = [0] * 10
    for ticket in tickets:
        earliest, latest = ticket.refresh_window(cold=True)
        assert earliest <= ticket.refresh_at <= latest
        bins[min(9, int((ticket.refresh_at - earliest) / (latest - earliest) * 10))] += 1
    assert max(bins) <= 40 and min(bins) >= 5, bins


def test_renewals_keep_a_narrow_window_and_cold_ones_a_wide_one() -> None:
    """A renewal is drawn within one margin before the latest refresh time; a cold credential from a
    third of its life on; neither ever after expiry less the margin."""
    ticket = JsapiTicket(value="t", obtained_at=1000.0, expires_in=7200.0)
    assert ticket.refresh_at == 1000 + 7200 - 300
    assert ticket.refresh_window(cold=False) == (1000 + 7200 - 600, 1000 + 7200 - 300)
    assert ticket.refresh_window(cold=True) == (1000 + 2400, 1000 + 7200 - 300)
    spread = Spread(random.Random(1))
    drawn = sorted(ticket.scheduled(spread(), cold=False).refresh_at for _ in range(200))
    assert min(drawn) >= 1000 + 6600 and max(drawn) <= 1000 + 6900
    # Evenly spaced, not bunched: no gap between neighbours wider than a few times the average.
    assert max(b - a for a, b in itertools.pairwise(drawn)) < 3 * 300 / 200
    record = ticket.scheduled(spread(), cold=True).to_record()
    assert JsapiTicket.from_record(record).refresh_at == record["refresh_at"]
    assert JsapiTicket.from_record({"value": "t", "obtained_at": 0, "expires_in": 10}).refresh_at == 8.0


class CountingKey(str):
    """A lookup key that counts how often it is compared: a scan compares it with every account."""

    comparisons = 0

    def __eq__(self, other: object) -> bool:
        CountingKey.comparisons += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_account_lookup_does_not_grow_with_the_accounts() -> None:
    """Finding an account by name or appId among 2,000 compares the key a few times at most, known or not."""
    settings = Settings(accounts=tuple(accounts(2000)))
    for key in ("a1999", f"wx{1999:016x}", "nobody"):
        CountingKey.comparisons = 0
        found = settings.account(CountingKey(key))
        assert CountingKey.comparisons <= 2
        assert (found is None) == (key == "nobody")


async def test_the_scheduler_serves_hurried_turns_first_then_in_turn_order() -> None:
    """With every slot taken, waiting turns are served hurried first, then oldest first, and never more at once."""
    scheduler = UpstreamScheduler(2)
    order: list[int] = []
    running = 0
    release = asyncio.Event()

    async def call(seq_turn: Any, label: int) -> None:
        nonlocal running
        async with scheduler.slot(seq_turn):
            running += 1
            assert running <= 2
            order.append(label)
            await release.wait()
            running -= 1

    turns = [scheduler.turn() for _ in range(6)]
    tasks = [asyncio.create_task(call(turn, n)) for n, turn in enumerate(turns)]
    await asyncio.sleep(0.01)
    assert order == [0, 1] and scheduler.waiting == 4 and scheduler.in_flight == 2
    scheduler.hurry(turns[4])
    release.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 4, 2, 3, 5]
    assert scheduler.peak_in_flight == 2 and scheduler.in_flight == 0


async def test_a_cancelled_waiter_gives_its_slot_on() -> None:
    """A waiter cancelled in the moment it is handed a slot passes the slot to the next in line."""
    scheduler = UpstreamScheduler(1)
    got: list[int] = []
    finish = asyncio.Event()

    async def wait_in_line(label: int) -> None:
        async with scheduler.slot(scheduler.turn()):
            got.append(label)
            await finish.wait()

    held = scheduler.slot(scheduler.turn())
    await held.__aenter__()
    waiters = [asyncio.create_task(wait_in_line(n)) for n in range(2)]
    await asyncio.sleep(0)
    assert scheduler.waiting == 2
    await held.__aexit__(None, None, None)  # hands the slot to waiter 0 without suspending...
    waiters[0].cancel()  # ...which is cancelled before it runs
    await asyncio.sleep(0.01)
    assert got == [1] and scheduler.in_flight == 1
    finish.set()
    await asyncio.gather(*waiters, return_exceptions=True)
    assert scheduler.in_flight == 0 and scheduler.waiting == 0


async def test_stopping_with_refreshes_in_flight_is_clean(
    crowd: tuple[WeChatSandbox, str, list[Account]], start_service: ServiceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Stopping the store while hundreds of refreshes wait or run cancels them all, with no error logged."""
    sandbox, url, configured = crowd
    service = await start_service(accounts=tuple(configured), api_bases=(url,), upstream_concurrency=4)
    await asyncio.sleep(0.3)
    assert 0 < sandbox.count("stable_token") < 300, "the refreshes are not under way"
    caplog.set_level(logging.DEBUG)
    await service.runner.cleanup()
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert not [t for t in asyncio.all_tasks() if "keep_fresh" in repr(t) or "_refresh_ticket" in repr(t)]


async def test_a_url_whose_percent_encoding_is_not_utf8_is_refused(
    service: RunningService, http: aiohttp.ClientSession
) -> None:
    """%FF (or a truncated UTF-8 sequence) in the page URL is 400 invalid_url, never a signature of U+FFFD."""
    for raw in ("https%3A%2F%2Fexample.com%2F%FF", "https%3A%2F%2Fexample.com%2F%E4%B8"):
        async with http.get(f"{service.url}/v1/signature?url={raw}") as response:
            body = await response.json()
        assert (response.status, body["error"]["code"]) == (400, "invalid_url")
    async with http.get(
        f"{service.url}/v1/share?url=https%3A%2F%2Fexample.com%2F&page=https%3A%2F%2Fexample.com%2F%C3"
    ) as response:
        assert response.status == 400
    # A real U+FFFD, sent encoded as UTF-8, is just a character of the URL.
    async with http.get(f"{service.url}/v1/signature?url=https%3A%2F%2Fexample.com%2F%EF%BF%BD") as response:
        assert response.status == 200
