"""Shared fixtures: the sandbox WeChat and the service, both over real HTTP on loopback."""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from jssdk_service.app import STORE, create_app
from jssdk_service.config import Account, Secret, Settings
from jssdk_service.sandbox import SandboxAccount, SandboxServer, WeChatSandbox
from jssdk_service.share import SharePolicy
from jssdk_service.wechat import RetryPolicy

APP_ID = "wx1234567890abcdef"
SECRET = "s3cr3t-app-secret-value-0123456789"
OTHER_APP_ID = "wxfedcba0987654321"
OTHER_SECRET = "other-secret-value-abcdefghijklmnop"
HOSTS = ("example.com", "localhost", "127.0.0.1")
FAST_RETRY = RetryPolicy(deadline=3.0, base_delay=0.01, max_delay=0.05, base_cooldown=30.0)


def make_account(**overrides: Any) -> Account:
    """The test account: signs for example.com, localhost and 127.0.0.1."""
    fields: dict[str, Any] = {
        "name": "main",
        "app_id": APP_ID,
        "secret": Secret(SECRET),
        "allowed_hosts": HOSTS,
        "share": SharePolicy(),
    }
    fields.update(overrides)
    return Account(**fields)


@dataclass
class RunningService:
    """A service under test: its base URL and the running application."""

    url: str
    app: web.Application
    runner: web.AppRunner

    def credentials(self, app_id: str = APP_ID) -> Any:
        return self.app[STORE][app_id]


@pytest.fixture
def sandbox() -> WeChatSandbox:
    """An emulator that knows the two test accounts, with WeChat's real lifetimes."""
    return WeChatSandbox(
        [SandboxAccount(app_id=APP_ID, secret=SECRET), SandboxAccount(app_id=OTHER_APP_ID, secret=OTHER_SECRET)],
        seed=7,
    )


@pytest.fixture
async def sandbox_url(sandbox: WeChatSandbox) -> AsyncIterator[str]:
    """The emulator served over HTTP on a free loopback port."""
    server = SandboxServer(sandbox)
    yield await server.start()
    await server.stop()


ServiceFactory = Callable[..., Awaitable[RunningService]]


@pytest.fixture
async def start_service(sandbox_url: str) -> AsyncIterator[ServiceFactory]:
    """Start the service against the sandbox; keyword arguments replace fields of its Settings.

    `demo=True` also serves the sandbox's demo page, as `serve --sandbox` does.
    """
    runners: list[web.AppRunner] = []

    async def start(*, retry_policy: RetryPolicy = FAST_RETRY, demo: bool = False, **overrides: Any) -> RunningService:
        settings = Settings(accounts=(make_account(),), api_bases=(sandbox_url,))
        settings = replace(settings, **overrides)
        app = create_app(settings, retry_policy=retry_policy, demo=demo)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        return RunningService(url=f"http://{host}:{port}", app=app, runner=runner)

    yield start
    for runner in runners:
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


def metric_sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample of `name` with (at least) `labels` in a Prometheus text exposition."""
    for line in text.splitlines():
        found = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if found and all(f'{key}="{value}"' in found.group(1) for key, value in labels.items()):
            return float(found.group(2))
    return None


def require_binary(name: str) -> str:
    """The path of a binary the test needs: skipped locally when missing, a failure under CI=true."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is required under CI=true but is not installed")
        pytest.skip(f"{name} is not installed")
    return path
