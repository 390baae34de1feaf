"""Fleet mode: several service processes share one token and one ticket through a real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from jssdk_service.cache import RedisCache
from jssdk_service.sandbox import WeChatSandbox

from .helpers import (
    APP_ID,
    PAGE,
    Fleet,
    RedisServer,
    assert_signed_live,
    clean_environment,
    free_port,
    logged,
    metric_sample,
    require_binary,
    sandbox_command,
    short_lifetimes,
    sign,
    start_process,
    steady_traffic,
    stop_process,
    worker_pids,
)


async def test_a_cold_burst_over_three_processes_costs_one_token_and_one_ticket(
    fleet: Fleet, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """Three processes starting together and 300 concurrent requests cost one token call and one ticket call."""
    sandbox.faults.delay = 0.3
    urls = await fleet(3)
    results = await asyncio.gather(*(sign(http, urls[i % 3], f"{PAGE}?n={i}") for i in range(300)))
    assert {status for status, _ in results} == {200}
    for i, (_, config) in enumerate(results):
        assert_signed_live(sandbox, config, 0, f"{PAGE}?n={i}")
    assert (sandbox.count("stable_token"), sandbox.count("getticket")) == (1, 1)


async def test_short_classic_tokens_under_fleet_traffic_never_see_40001(
    fleet: Fleet, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """Classic tokens living 3 s (old ones dying 0.5 s after a new one) under steady traffic: no 40001, no failure."""
    short_lifetimes(sandbox, 3, classic_overlap=0.5)
    urls = await fleet(3, JSSDK_TOKEN_API="classic")
    done = await steady_traffic(http, sandbox, urls, 10, pause=0.03, slack=1)
    assert done > 150
    assert [c for c in sandbox.calls if c.errcode != 0] == []
    # One refresh per lifetime for the whole fleet, not one per process.
    assert sandbox.count("token") <= 6


async def test_killing_redis_mid_traffic_fails_no_request(
    fleet: Fleet,
    sandbox: WeChatSandbox,
    redis_server: RedisServer,
    http: aiohttp.ClientSession,
) -> None:
    """Redis dies under traffic across refreshes: every request succeeds, /readyz says degraded, and Redis is used again."""
    short_lifetimes(sandbox, 3)
    urls = await fleet(3)
    await steady_traffic(http, sandbox, urls, 2, pause=0.03, slack=1)
    await redis_server.kill()
    await steady_traffic(http, sandbox, urls, 4, pause=0.03, slack=1)
    async with http.get(f"{urls[0]}/readyz") as response:
        body = await response.json()
    assert response.status == 200
    assert body["cache"]["ok"] is False and "degraded" in body
    await redis_server.start()
    await steady_traffic(http, sandbox, urls, 4, pause=0.03, slack=1)
    for url in urls:
        async with http.get(f"{url}/readyz") as response:
            assert (await response.json())["cache"]["ok"] is True
    client = aioredis.Redis(port=redis_server.port)
    try:
        assert await client.exists(f"jssdk:{APP_ID}:ticket") == 1
    finally:
        await client.aclose()


async def test_a_dead_lock_holder_delays_refresh_by_at_most_its_lease(
    fleet: Fleet, sandbox: WeChatSandbox, redis_client: aioredis.Redis, http: aiohttp.ClientSession
) -> None:
    """A lock left by a crashed process holds the refresh back only until its lease ends; requests keep working."""
    sandbox.ticket_expires_in = 8
    (url,) = await fleet(1)
    assert (await sign(http, url))[0] == 200
    # The refresh time the service drew for this ticket is kept with it in the shared cache.
    record = await redis_client.get(f"jssdk:{APP_ID}:ticket")
    assert record is not None
    refresh_at = orjson.loads(record)["refresh_at"]
    await asyncio.sleep(refresh_at - 0.3 - time.time())
    lease = 2.0
    locked_at = time.time()
    assert await redis_client.set(f"jssdk:{APP_ID}:refresh-lock", "crashed-process", nx=True, px=int(lease * 1000))
    while len(sandbox.tickets(APP_ID)) < 2:
        status, config = await sign(http, url)
        assert status == 200
        assert_signed_live(sandbox, config, time.time() - 1)
        assert time.time() < locked_at + lease + 1.0, "refresh waited longer than the lease"
        await asyncio.sleep(0.05)
    renewed_at = sandbox.tickets(APP_ID)[1].issued_at
    assert locked_at + lease - 0.2 <= renewed_at <= locked_at + lease + 0.5


async def test_redis_cache_primitives(redis_server: RedisServer, redis_cache: RedisCache) -> None:
    """The Redis cache stores records with a TTL, compares before deleting, counts, and locks per owner."""
    cache = redis_cache
    await cache.set("k", {"value": "a", "n": 1}, 0.3)
    assert await cache.get("k") == {"value": "a", "n": 1}
    assert await cache.delete_if_value("k", "b") is False
    assert await cache.delete_if_value("k", "a") is True
    assert await cache.get("k") is None
    await cache.set("short", {"value": "x"}, 0.2)
    await asyncio.sleep(0.3)
    assert await cache.get("short") is None
    assert await cache.increment("c", 2, 60) == 2
    assert await cache.increment("c", 3, 60) == 5
    assert await cache.counter("c") == 5
    assert await cache.acquire("lock", "one", 5) is True
    assert await cache.acquire("lock", "two", 5) is False
    await cache.release("lock", "two")
    assert await cache.acquire("lock", "two", 5) is False
    await cache.release("lock", "one")
    assert await cache.acquire("lock", "two", 5) is True
    assert cache.health() == {"backend": "redis", "url": redis_server.url, "ok": True}


async def test_redis_outage_degrades_instead_of_failing(
    redis_server: RedisServer, redis_cache: RedisCache, caplog: pytest.LogCaptureFixture
) -> None:
    """With Redis gone, reads miss, locks are granted locally, the outage is logged once, and recovery is noticed."""
    cache = redis_cache
    await cache.set("k", {"value": "a"}, 60)
    await redis_server.kill()
    for _ in range(5):
        assert await cache.get("k") is None
    assert await cache.acquire("lock", "me", 5) is True
    assert cache.health()["ok"] is False
    assert logged(caplog, "unreachable") == 1
    await redis_server.start()
    assert await cache.get("k") is None
    assert cache.health()["ok"] is True
    assert logged(caplog, "reachable again") > 0


async def signs(http: aiohttp.ClientSession, url: str) -> bool:
    with contextlib.suppress(aiohttp.ClientError):
        return (await sign(http, url, "http://localhost/"))[0] == 200
    return False


async def test_serve_workers_runs_n_processes_on_one_port(
    redis_server: RedisServer, http: aiohttp.ClientSession
) -> None:
    """`serve --sandbox --workers 3` answers on one port from three processes and replaces one that dies."""
    port = free_port()
    env = clean_environment(JSSDK_CACHE_URL=redis_server.url)
    process = await start_process(None, sandbox_command(port, "--workers", "3"), env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while len(worker_pids(process.pid)) < 3 or not await signs(http, url):
            assert time.monotonic() < deadline, "workers did not start"
            await asyncio.sleep(0.2)
        first = worker_pids(process.pid)
        await asyncio.sleep(1.5)  # each worker publishes its counts every second; a SIGKILL loses the last one
        os.kill(first[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while sorted(worker_pids(process.pid)) == sorted(first) or len(worker_pids(process.pid)) < 3:
            assert time.monotonic() < deadline, "the dead worker was not replaced"
            await asyncio.sleep(0.2)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
            # A connection each, so that the kernel spreads them over the workers.
            results = await asyncio.gather(*(sign(fresh, url, "http://localhost/") for _ in range(60)))
            assert {status for status, _ in results} == {200}
            await asyncio.sleep(1.5)  # every worker publishes its request counts each second
            for _ in range(3):
                async with fresh.get(f"{url}/metrics") as response:
                    text = await response.text()
                served = metric_sample(text, "jssdk_http_requests_total", route="/v1/signature", status="200")
                assert served is not None and served >= 60, "metrics are not added up over the workers"
                assert metric_sample(text, "jssdk_upstream_calls_total", api="getticket", outcome="ok") == 1
    finally:
        assert await stop_process(process) == 0


async def test_a_token_knocked_out_under_fleet_traffic_is_replaced_once(
    fleet: Fleet, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """When the shared token dies upstream, the fleet fetches exactly one new token and fails no request."""
    sandbox.ticket_expires_in = 3
    urls = await fleet(3)
    await steady_traffic(http, sandbox, urls, 1, pause=0.03, slack=1)
    sandbox.knock_out_tokens(APP_ID)
    await steady_traffic(http, sandbox, urls, 4, pause=0.03, slack=1)
    assert sandbox.count("stable_token") == 2
    assert len([c for c in sandbox.calls if c.errcode == 40001]) == 1


async def test_redis_with_a_password(tmp_path: Path) -> None:
    """JSSDK_REDIS_PASSWORD (or a password in the URL) opens a Redis that requires one."""
    server = RedisServer(require_binary("redis-server"), tmp_path, password="s3cret-redis")
    await server.start()
    try:
        for cache in (RedisCache(server.url, password="s3cret-redis"),
                      RedisCache(server.url.replace("redis://", "redis://:s3cret-redis@"))):  # fmt: skip
            try:
                await cache.set("k", {"value": "v"}, 5)
                assert await cache.get("k") == {"value": "v"}
                assert "s3cret-redis" not in repr(cache) + str(cache.health())
            finally:
                await cache.close()
    finally:
        await server.kill()
