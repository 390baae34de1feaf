"""Shared fixtures: the sandbox WeChat and the service, both over real HTTP on loopback, and a real Redis."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from jssdk_service.app import create_app
from jssdk_service.cache import RedisCache
from jssdk_service.config import Settings
from jssdk_service.fastlane import FastLaneListener
from jssdk_service.keys import CALL_OBSERVERS
from jssdk_service.sandbox import SandboxServer, WeChatSandbox
from jssdk_service.wechat import CallObserver, RetryPolicy

from .helpers import (
    ACCOUNT_ENV,
    CLI,
    FAST_RETRY,
    Fleet,
    Process,
    RedisServer,
    RunningService,
    ServiceFactory,
    clean_environment,
    free_port,
    make_account,
    require_binary,
    standard_sandbox,
    start_process,
    stop_process,
    wait_answering,
)


@pytest.fixture
def sandbox() -> WeChatSandbox:
    """An emulator that knows the two test accounts and the test WeCom app, with WeChat's real lifetimes."""
    return standard_sandbox()


@pytest.fixture
async def sandbox_url(sandbox: WeChatSandbox) -> AsyncIterator[str]:
    """The emulator served over HTTP on a free loopback port."""
    server = SandboxServer(sandbox)
    yield await server.start()
    await server.stop()


@pytest.fixture
async def start_service(sandbox_url: str) -> AsyncIterator[ServiceFactory]:
    """Start the service against the sandbox; keyword arguments replace fields of its Settings.

    `demo=True` also serves the sandbox's demo page, as `serve --sandbox` does; `observer` is
    called for every HTTP call the WeChat client makes.
    """
    started: list[tuple[FastLaneListener, web.AppRunner]] = []

    async def start(
        *,
        retry_policy: RetryPolicy = FAST_RETRY,
        demo: bool = False,
        observer: CallObserver | None = None,
        **overrides: Any,
    ) -> RunningService:
        settings = Settings(accounts=(make_account(),), api_bases=(sandbox_url,), wecom_api_bases=(sandbox_url,))
        settings = replace(settings, **overrides)
        app = create_app(settings, retry_policy=retry_policy, demo=demo)
        if observer is not None:
            app[CALL_OBSERVERS].append(observer)
        runner = web.AppRunner(app, access_log=None, keepalive_timeout=settings.keepalive_timeout)
        await runner.setup()
        # Listening as `serve` does: a warm GET /v1/signature is answered by the fast lane.
        sock = socket.create_server(("127.0.0.1", 0))
        listener = FastLaneListener(runner, sock, keepalive_timeout=settings.keepalive_timeout)
        started.append((listener, runner))
        await listener.start()
        host, port = sock.getsockname()[:2]
        return RunningService(url=f"http://{host}:{port}", app=app, runner=runner, lane=listener.lane)

    yield start
    for listener, runner in started:
        listener.stop()
        listener.close_connections()
        await runner.cleanup()


@pytest.fixture
async def service(start_service: ServiceFactory) -> RunningService:
    """The service with the default test account."""
    return await start_service()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client; the connection limit is lifted for concurrency tests."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every log record at DEBUG and above, from every logger."""
    caplog.set_level(logging.DEBUG)
    yield caplog


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A real redis-server, killed at the end."""
    server = RedisServer(require_binary("redis-server"), tmp_path)
    await server.start()
    yield server
    await server.kill()


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain client of `redis_server` that decodes what it reads."""
    client = aioredis.Redis(port=redis_server.port, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def redis_cache(redis_server: RedisServer) -> AsyncIterator[RedisCache]:
    """The service's Redis cache on `redis_server`, closed at the end."""
    cache = RedisCache(redis_server.url)
    yield cache
    await cache.close()


@pytest.fixture
async def fleet(sandbox_url: str, redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Fleet]:
    """Start N `jssdk-service serve` processes against the sandbox and the Redis server, logging to service-<n>.log."""
    processes: list[Process] = []

    async def start(count: int, **env_overrides: str) -> list[str]:
        started: list[tuple[Process, str, Path]] = []
        for _ in range(count):
            port = free_port()
            env = clean_environment(**{**ACCOUNT_ENV, "JSSDK_WECHAT_API_BASE": sandbox_url,
                                       "JSSDK_WECOM_API_BASE": sandbox_url,
                                       "JSSDK_CACHE_URL": redis_server.url, "JSSDK_PORT": str(port),
                                       **env_overrides})  # fmt: skip
            log = tmp_path / f"service-{len(processes)}.log"
            processes.append(await start_process(log, [*CLI, "serve"], env))
            started.append((processes[-1], f"http://127.0.0.1:{port}", log))
        for process, url, log in started:
            await wait_answering(process, f"{url}/healthz", every=0.05, log=log)
        return [url for _, url, _ in started]

    yield start
    await asyncio.gather(*(stop_process(process) for process in processes))
