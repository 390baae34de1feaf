"""Fleet mode: several service processes share one token and one ticket through a real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from jssdk_service.cache import RedisCache
from jssdk_service.sandbox import WeChatSandbox

from .conftest import APP_ID, SECRET, metric_sample, require_binary

PAGE = "https://example.com/p"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """A real redis-server on a free loopback port, that a test may kill and start again."""

    def __init__(self, binary: str, workdir: Path, *, password: str | None = None) -> None:
        self.binary = binary
        self.workdir = workdir
        self.password = password
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self.workdir), *(["--requirepass", self.password] if self.password else []),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        client = aioredis.Redis(port=self.port, password=self.password)
        try:
            for _ in range(100):
                with contextlib.suppress(OSError, aioredis.ConnectionError):
                    if await client.ping():
                        return
                await asyncio.sleep(0.05)
            raise RuntimeError("redis-server did not start")
        finally:
            await client.aclose()

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(require_binary("redis-server"), tmp_path)
    await server.start()
    yield server
    await server.kill()


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis(port=redis_server.port, decode_responses=True)
    yield client
    await client.aclose()


Fleet = Callable[..., Awaitable[list[str]]]


@pytest.fixture
async def fleet(sandbox_url: str, redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Fleet]:
    """Start N `jssdk-service serve` processes against the sandbox and the Redis server."""
    processes: list[asyncio.subprocess.Process] = []

    async def start(count: int, **env_overrides: str) -> list[str]:
        urls = []
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("JSSDK_")}
        for _ in range(count):
            port = free_port()
            env = {**base_env, "JSSDK_APP_ID": APP_ID, "JSSDK_APP_SECRET": SECRET,
                   "JSSDK_ALLOWED_HOSTS": "example.com", "JSSDK_WECHAT_API_BASE": sandbox_url,
                   "JSSDK_CACHE_URL": redis_server.url, "JSSDK_PORT": str(port), **env_overrides}  # fmt: skip
            log = (tmp_path / f"service-{len(processes)}.log").open("wb")
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "jssdk_service", "serve", env=env, stdout=log, stderr=log
            )
            log.close()
            processes.append(process)
            urls.append(f"http://127.0.0.1:{port}")
        async with aiohttp.ClientSession() as http:
            for n, url in enumerate(urls):
                deadline = time.monotonic() + 20
                while True:
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.get(f"{url}/healthz") as response:
                            if response.status == 200:
                                break
                    assert time.monotonic() < deadline, f"service {n} did not start"
                    await asyncio.sleep(0.05)
        return urls

    yield start
    for process in processes:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        await process.wait()


async def sign(http: aiohttp.ClientSession, url: str, page: str = PAGE) -> tuple[int, Any]:
    async with http.get(f"{url}/v1/signature", params={"url": page}) as response:
        return response.status, await response.json()


def check_signature(sandbox: WeChatSandbox, config: dict[str, Any], signed_at: float, page: str = PAGE) -> None:
    ticket = sandbox.ticket_that_signed(config["appId"], url=page, nonce=config["nonceStr"],
                                        timestamp=config["timestamp"], signature=config["signature"])  # fmt: skip
    assert ticket is not None, "the signature matches no ticket"
    assert ticket.expires_at > signed_at, "signed with an expired ticket"


async def steady_traffic(http: aiohttp.ClientSession, urls: list[str], sandbox: WeChatSandbox, seconds: float) -> int:
    """Requests round the fleet for `seconds`; every one must succeed with a live ticket."""
    deadline = time.monotonic() + seconds
    done = 0
    while time.monotonic() < deadline:
        results = await asyncio.gather(*(sign(http, url) for url in urls))
        signed_at = time.time()
        for status, body in results:
            assert status == 200, body
            check_signature(sandbox, body, signed_at - 1)
        done += len(results)
        await asyncio.sleep(0.03)
    return done


async def test_a_cold_burst_over_three_processes_costs_one_token_and_one_ticket(
    fleet: Fleet, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """Three processes starting together and 300 concurrent requests cost one token call and one ticket call."""
    sandbox.faults.delay = 0.3
    urls = await fleet(3)
    results = await asyncio.gather(*(sign(http, urls[i % 3], f"{PAGE}?n={i}") for i in range(300)))
    assert {status for status, _ in results} == {200}
    for i, (_, config) in enumerate(results):
        check_signature(sandbox, config, 0, f"{PAGE}?n={i}")
    assert (sandbox.count("stable_token"), sandbox.count("getticket")) == (1, 1)


async def test_short_classic_tokens_under_fleet_traffic_never_see_40001(
    fleet: Fleet, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """Classic tokens living 3 s (old ones dying 0.5 s after a new one) under steady traffic: no 40001, no failure."""
    sandbox.token_expires_in = 3
    sandbox.ticket_expires_in = 3
    sandbox.classic_overlap = 0.5
    urls = await fleet(3, JSSDK_TOKEN_API="classic")
    done = await steady_traffic(http, urls, sandbox, 10)
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
    sandbox.token_expires_in = 3
    sandbox.ticket_expires_in = 3
    urls = await fleet(3)
    await steady_traffic(http, urls, sandbox, 2)
    await redis_server.kill()
    await steady_traffic(http, urls, sandbox, 4)
    async with http.get(f"{urls[0]}/readyz") as response:
        body = await response.json()
    assert response.status == 200
    assert body["cache"]["ok"] is False and "degraded" in body
    await redis_server.start()
    await steady_traffic(http, urls, sandbox, 4)
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
        check_signature(sandbox, config, time.time() - 1)
        assert time.time() < locked_at + lease + 1.0, "refresh waited longer than the lease"
        await asyncio.sleep(0.05)
    renewed_at = sandbox.tickets(APP_ID)[1].issued_at
    assert locked_at + lease - 0.2 <= renewed_at <= locked_at + lease + 0.5


async def test_redis_cache_primitives(redis_server: RedisServer) -> None:
    """The Redis cache stores records with a TTL, compares before deleting, counts, and locks per owner."""
    cache = RedisCache(redis_server.url)
    try:
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
    finally:
        await cache.close()


async def test_redis_outage_degrades_instead_of_failing(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """With Redis gone, reads miss, locks are granted locally, the outage is logged once, and recovery is noticed."""
    cache = RedisCache(redis_server.url)
    try:
        await cache.set("k", {"value": "a"}, 60)
        await redis_server.kill()
        for _ in range(5):
            assert await cache.get("k") is None
        assert await cache.acquire("lock", "me", 5) is True
        assert cache.health()["ok"] is False
        assert len([r for r in caplog.records if "unreachable" in r.getMessage()]) == 1
        await redis_server.start()
        assert await cache.get("k") is None
        assert cache.health()["ok"] is True
        assert any("reachable again" in r.getMessage() for r in caplog.records)
    finally:
        await cache.close()


async def signs(http: aiohttp.ClientSession, url: str) -> bool:
    with contextlib.suppress(aiohttp.ClientError):
        return (await sign(http, url, "http://localhost/"))[0] == 200
    return False


def worker_pids(parent: int) -> list[int]:
    """The worker processes `serve --workers` spawned (multiprocessing's helper process excluded)."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]


async def test_serve_workers_runs_n_processes_on_one_port(
    redis_server: RedisServer, http: aiohttp.ClientSession
) -> None:
    """`serve --sandbox --workers 3` answers on one port from three processes and replaces one that dies."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JSSDK_")}
    env["JSSDK_CACHE_URL"] = redis_server.url
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "jssdk_service", "serve", "--sandbox", "--workers", "3", "--port", str(port),
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
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
        process.send_signal(signal.SIGTERM)
        assert await process.wait() == 0


async def test_a_token_knocked_out_under_fleet_traffic_is_replaced_once(
    fleet: Fleet, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """When the shared token dies upstream, the fleet fetches exactly one new token and fails no request."""
    sandbox.ticket_expires_in = 3
    urls = await fleet(3)
    await steady_traffic(http, urls, sandbox, 1)
    sandbox.knock_out_tokens(APP_ID)
    await steady_traffic(http, urls, sandbox, 4)
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
