"""The tools the tests share: the test accounts, child `serve` processes, a real Redis, signing and checking."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from jssdk_service.config import Account, Platform, Secret
from jssdk_service.fastlane import FastLane
from jssdk_service.keys import STORE
from jssdk_service.sandbox import IssuedCredential, SandboxAccount, WeChatSandbox
from jssdk_service.sandbox_wecom import SandboxWeComApp
from jssdk_service.share import SharePolicy
from jssdk_service.wechat import RetryPolicy

APP_ID = "wx1234567890abcdef"
SECRET = "s3cr3t-app-secret-value-0123456789"
OTHER_APP_ID = "wxfedcba0987654321"
OTHER_SECRET = "other-secret-value-abcdefghijklmnop"
HOSTS = ("example.com", "localhost", "127.0.0.1")
FAST_RETRY = RetryPolicy(deadline=3.0, base_delay=0.01, max_delay=0.05, base_cooldown=30.0)
PAGE = "https://example.com/p"
# The test WeCom app: a corp, one of its self-built apps and that app's own secret.
CORP_ID = "ww0123456789abcdef"
AGENT_ID = "1000002"
WECOM_SECRET = "wecom-app-secret-value-0123456789abcdef"
WECOM_KEY = f"{CORP_ID}:{AGENT_ID}"
# The test account as `serve` reads it from the environment.
# The test third-party platform and its message keys (an EncodingAESKey is 43 characters).
COMPONENT_APPID = "wx0000000000000c01"
COMPONENT_SECRET = "component-secret-value-0123456789abcdef"
MESSAGE_TOKEN = "platform-message-token"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
OLD_AES_KEY = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR"
AUTHORIZER = "wxa00000000000a001"
PLATFORM_ENV = {"PLATFORM_SECRET": COMPONENT_SECRET, "PLATFORM_TOKEN": MESSAGE_TOKEN, "PLATFORM_AES_KEY": AES_KEY}
PLATFORM_TOML = f"""
[[platforms]]
component_appid = "{COMPONENT_APPID}"
secret_env = "PLATFORM_SECRET"
token_env = "PLATFORM_TOKEN"
aes_key_env = "PLATFORM_AES_KEY"
web_domains = ["example.com", "localhost", "127.0.0.1"]
"""

ACCOUNT_ENV = {"JSSDK_APP_ID": APP_ID, "JSSDK_APP_SECRET": SECRET, "JSSDK_ALLOWED_HOSTS": "example.com"}
CLI = (sys.executable, "-m", "jssdk_service")
Process = asyncio.subprocess.Process


class Vector(NamedTuple):
    """A signature WeChat's documentation publishes, with what it was computed from."""

    ticket: str
    nonce: str
    timestamp: int
    url: str
    signature: str


OFFICIAL_VECTORS = (
    Vector("sM4AOVdWfPE4DxkXGEs8VMCPGGVi4C3VM0P37wVUCFvkVAy_90u5h9nbSlYy3-Sl-HhTdfl2fzFy1AOcHKP7qg",
           "Wm3WZYTPz0wzccnW", 1414587457, "http://mp.weixin.qq.com?params=value",
           "0f9de62fce790f9a083d5c99e95740ceb90c27ed"),
    Vector("bxLdikRXVbTPdHSM05e5u4RbEYQn7pNQMPrfzl8lJNb1foLDa3HIwI3BRMkQmSO_5F64VFa75uURcq6Uz7QHgA",
           "82693e11-b9bc-448e-892f-f5289f46cd0f", 1419835025,
           "http://omstest.vmall.com:23568/thirdparty/wechat/vcode/gotoshare?quantity=1&batchName=MATE7",
           "c6f04b64d6351d197b71bd23fb7dd2d44c0db486"),
)  # fmt: skip


# -- the service in this process -------------------------------------------------------------


def standard_sandbox(**options: Any) -> WeChatSandbox:
    """An emulator that knows the two test accounts and the test WeCom app (seeded), plus `options`."""
    return WeChatSandbox(
        [SandboxAccount(app_id=APP_ID, secret=SECRET), SandboxAccount(app_id=OTHER_APP_ID, secret=OTHER_SECRET)],
        wecom_apps=[SandboxWeComApp(corp_id=CORP_ID, agent_id=AGENT_ID, secret=WECOM_SECRET)],
        seed=7,
        **options,
    )


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


def make_wecom_account(**overrides: Any) -> Account:
    """The test WeCom app: signs for example.com, localhost and 127.0.0.1 with WeCom's share APIs."""
    fields: dict[str, Any] = {
        "name": "wecom",
        "kind": "wecom",
        "app_id": CORP_ID,
        "agent_id": AGENT_ID,
        "secret": Secret(WECOM_SECRET),
        "allowed_hosts": HOSTS,
        "share": SharePolicy(),
        "js_api_list": ("onMenuShareAppMessage", "onMenuShareWechat", "onMenuShareTimeline"),
    }
    fields.update(overrides)
    return Account(**fields)


def make_platform(**overrides: Any) -> Platform:
    """The test platform: its authorizers sign for example.com, localhost and 127.0.0.1."""
    fields: dict[str, Any] = {
        "component_appid": COMPONENT_APPID,
        "name": "platform",
        "secret": Secret(COMPONENT_SECRET),
        "token": Secret(MESSAGE_TOKEN),
        "aes_key": Secret(AES_KEY),
        "web_domains": HOSTS,
    }
    fields.update(overrides)
    return Platform(**fields)


def sandbox_platform(callback_url: str | None = None, aes_key: str = AES_KEY) -> Any:
    """The test platform as the sandbox knows it (a `SandboxPlatform`), pushing to `callback_url`."""
    from jssdk_service.sandbox_platform import SandboxPlatform

    return SandboxPlatform(component_appid=COMPONENT_APPID, secret=COMPONENT_SECRET, token=MESSAGE_TOKEN,
                           aes_key=aes_key, callback_url=callback_url)  # fmt: skip


def events_url(base: str, component_appid: str = COMPONENT_APPID) -> str:
    """The service's events endpoint of a platform: where the sandbox pushes."""
    return f"{base}/v1/platform/{component_appid}/events"


@dataclass
class RunningService:
    """A service under test: its base URL and the running application."""

    url: str
    app: web.Application
    runner: web.AppRunner
    lane: FastLane

    def credentials(self, app_id: str = APP_ID) -> Any:
        """The credential store's entry for `app_id`."""
        return self.app[STORE][app_id]


ServiceFactory = Callable[..., Awaitable[RunningService]]
Fleet = Callable[..., Awaitable[list[str]]]


def write_toml(tmp_path: Path, text: str, files: dict[str, str]) -> str:
    """`text` as tmp_path/jssdk.toml, each `{name}` in it the path of a file written with `files[name]`."""
    for name, content in files.items():
        referenced = tmp_path / name
        referenced.write_text(content)
        text = text.replace(f"{{{name}}}", str(referenced))
    path = tmp_path / "jssdk.toml"
    path.write_text(text)
    return str(path)


def short_lifetimes(sandbox: WeChatSandbox, seconds: int, *, classic_overlap: float | None = None) -> None:
    """Tokens and tickets the sandbox issues from now on live `seconds` (old classic tokens `classic_overlap` more)."""
    sandbox.token_expires_in = sandbox.ticket_expires_in = seconds
    if classic_overlap is not None:
        sandbox.classic_overlap = classic_overlap


# -- asking the service and checking its answers ---------------------------------------------


async def sign(http: aiohttp.ClientSession, base: str, page: str = PAGE, app: str | None = None) -> tuple[int, Any]:
    """GET /v1/signature for `page` (of account `app`) from the service at `base`: the status and the JSON body."""
    params = {"url": page} if app is None else {"url": page, "app": app}
    async with http.get(f"{base}/v1/signature", params=params) as response:
        return response.status, await response.json()


async def readyz(http: aiohttp.ClientSession, base: str) -> tuple[int, Any]:
    """GET /readyz from the service at `base`: the status and the JSON body (200 or 503 alike)."""
    async with http.get(f"{base}/readyz") as response:
        return response.status, await response.json()


def evidence(config: dict[str, Any], page: str) -> dict[str, Any]:
    """What the sandbox checks a wx.config by: `config`'s nonce, timestamp and signature, and the page it is for."""
    return {
        "url": page,
        "nonce": config["nonceStr"],
        "timestamp": config["timestamp"],
        "signature": config["signature"],
    }


def signing_ticket(sandbox: WeChatSandbox, config: dict[str, Any], page: str = PAGE) -> IssuedCredential | None:
    """The sandbox ticket that made the signature in `config` for `page` (None when none did)."""
    return sandbox.ticket_that_signed(config["appId"], **evidence(config, page))


def verifies(sandbox: WeChatSandbox, config: dict[str, Any], page: str = PAGE) -> bool:
    """Whether `config` passes the sandbox's own wx.config check for `page` (signed by a ticket alive now)."""
    return sandbox.verify_config(config["appId"], **evidence(config, page)) == "config:ok"


def assert_signed_live(sandbox: WeChatSandbox, config: dict[str, Any], signed_at: float, page: str = PAGE) -> None:
    """The signature in `config` was made with a sandbox ticket still alive at `signed_at`."""
    ticket = signing_ticket(sandbox, config, page)
    assert ticket is not None, "the signature matches no ticket"
    assert ticket.expires_at > signed_at, "signed with an expired ticket"


async def steady_traffic(
    http: aiohttp.ClientSession, sandbox: WeChatSandbox, bases: Sequence[str], seconds: float, *,
    pause: float, slack: float = 0.0,
) -> int:  # fmt: skip
    """Rounds of one request to each of `bases` for `seconds`: all 200, live tickets (`slack` s of leeway); how many."""
    deadline = time.monotonic() + seconds
    done = 0
    while time.monotonic() < deadline:
        results = await asyncio.gather(*(sign(http, base) for base in bases))
        signed_at = time.time()
        for status, config in results:
            assert status == 200, config
            assert_signed_live(sandbox, config, signed_at - slack)
        done += len(results)
        await asyncio.sleep(pause)
    return done


def wechat_sha1(ticket: str, nonce: str, timestamp: int | str, url: str) -> str:
    """The signature by WeChat's documented formula, computed here without the service's code."""
    plain = f"jsapi_ticket={ticket}&noncestr={nonce}&timestamp={timestamp}&url={url}"
    return hashlib.sha1(plain.encode()).hexdigest()


def metric_sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample of `name` with (at least) `labels` in a Prometheus text exposition."""
    for line in text.splitlines():
        found = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if found and all(f'{key}="{value}"' in found.group(1) for key, value in labels.items()):
            return float(found.group(2))
    return None


def logged(caplog: pytest.LogCaptureFixture, phrase: str) -> int:
    """How many captured log records have `phrase` in their message."""
    return len([record for record in caplog.records if phrase in record.getMessage()])


# -- child processes -------------------------------------------------------------------------


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


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def clean_environment(**overrides: str) -> dict[str, str]:
    """This process's environment without the service's own variables and metrics directories, plus `overrides`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("JSSDK_") and k not in ("PROMETHEUS_MULTIPROC_DIR", "XDG_RUNTIME_DIR")}  # fmt: skip
    return {**env, **overrides}


class CommandResult(NamedTuple):
    """How a run of a `jssdk-service` subcommand ended."""

    code: int
    out: str
    err: str


async def run_cli(*args: str, env: dict[str, str]) -> CommandResult:
    """`jssdk-service *args` as a child process in a clean environment plus `env`, to its end."""
    process = await asyncio.create_subprocess_exec(*CLI, *args, env=clean_environment(**env),
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return CommandResult(process.returncode, out.decode(), err.decode())


def sandbox_command(port: int, *args: str) -> list[str]:
    """The command line of `jssdk-service serve --sandbox` on `port` with `args`."""
    return [*CLI, "serve", "--sandbox", "--port", str(port), *args]


async def start_process(log: Path | None, command: Sequence[str], env: dict[str, str]) -> Process:
    """`command` as a child process, its stdout and stderr both into `log` (or nowhere)."""
    if log is None:
        return await asyncio.create_subprocess_exec(*command, env=env, stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.DEVNULL)  # fmt: skip
    with log.open("wb") as output:
        return await asyncio.create_subprocess_exec(*command, env=env, stdout=output, stderr=subprocess.STDOUT)


def log_text(log: Path | None) -> str:
    """What a child process wrote to `log`, for a failure's message ("" without one)."""
    return log.read_text(errors="replace") if log is not None and log.exists() else ""


async def wait_answering(
    process: Process, url: str, *, seconds: float = 20.0, every: float = 0.1, log: Path | None = None
) -> None:
    """Until GET `url` answers 200: a failure (showing `log`) when `process` exits first or `seconds` pass."""
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            assert process.returncode is None, f"the service exited with {process.returncode}: {log_text(log)}"
            assert time.monotonic() < deadline, f"{url} did not answer 200 within {seconds:g} s: {log_text(log)}"
            await asyncio.sleep(every)


async def stop_process(process: Process, *, seconds: float = 10.0) -> int:
    """SIGTERM `process` unless it has exited already; its exit code, which must come within `seconds`."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(process.wait(), seconds)


@contextlib.asynccontextmanager
async def serving(
    log: Path, *args: str, env: dict[str, str] | None = None, ready: str = "/healthz"
) -> AsyncIterator[tuple[str, Process]]:
    """`serve --sandbox *args` on a free port, in a clean environment plus `env`, answering `ready`; stopped at the end."""
    port = free_port()
    process = await start_process(log, sandbox_command(port, *args), clean_environment(**(env or {})))
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_answering(process, f"{url}{ready}", log=log)
        yield url, process
    finally:
        await stop_process(process)


def worker_pids(parent: int) -> list[int]:
    """The worker processes `serve --workers` spawned (multiprocessing's helper process excluded)."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]


class RedisServer:
    """A real redis-server on a free loopback port, that a test may kill and start again."""

    def __init__(self, binary: str, workdir: Path, *, password: str | None = None) -> None:
        self.binary = binary
        self.workdir = workdir
        self.password = password
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: Process | None = None

    async def start(self) -> None:
        """Start redis-server and wait until it answers PING."""
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
        """SIGKILL redis-server, if it runs, and wait for it to go."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
