"""Running the service: one process on a port, optionally next to an in-process sandbox."""

from __future__ import annotations

import asyncio
import gc
import logging
import secrets
import signal
from collections.abc import Mapping
from dataclasses import dataclass, replace

import uvloop
from aiohttp import web

from jssdk_service.config import Settings, load_settings
from jssdk_service.sandbox import DEMO_APP_ID, SandboxAccount, SandboxServer, WeChatSandbox
from jssdk_service.web import create_app

log = logging.getLogger("jssdk_service.server")

DEMO_ALLOWED_HOSTS = "localhost,127.0.0.1,example.com"


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxOptions:
    """How the in-process WeChat emulator of `serve --sandbox` behaves."""

    token_expires_in: int = 7200
    ticket_expires_in: int = 7200
    error_rate: float = 0.0
    errcode: int = -1
    http500_rate: float = 0.0
    delay: float = 0.0


def sandbox_environment(env: Mapping[str, str], config_path: str | None) -> dict[str, str]:
    """`env` plus the demo account when nothing names an account: `serve --sandbox` needs no setup."""
    merged = dict(env)
    if not (config_path or env.get("JSSDK_CONFIG") or env.get("JSSDK_APP_ID")):
        merged.update(
            JSSDK_APP_ID=DEMO_APP_ID,
            JSSDK_APP_SECRET=secrets.token_hex(16),
            JSSDK_ALLOWED_HOSTS=env.get("JSSDK_ALLOWED_HOSTS") or DEMO_ALLOWED_HOSTS,
            JSSDK_SHARE_TITLE=env.get("JSSDK_SHARE_TITLE") or "jssdk-service demo",
            JSSDK_SHARE_DESC=env.get("JSSDK_SHARE_DESC") or "A page signed by the jssdk-service sandbox",
        )
    return merged


def build_sandbox(settings: Settings, options: SandboxOptions) -> WeChatSandbox:
    """An emulator that knows every configured account and its secret."""
    sandbox = WeChatSandbox(
        [SandboxAccount(app_id=a.app_id, secret=a.secret.reveal()) for a in settings.accounts],
        token_expires_in=options.token_expires_in,
        ticket_expires_in=options.ticket_expires_in,
    )
    sandbox.faults.error_rate = options.error_rate
    sandbox.faults.errcode = options.errcode
    sandbox.faults.http500_rate = options.http500_rate
    sandbox.faults.delay = options.delay
    return sandbox


async def serve(settings: Settings, *, sandbox: SandboxOptions | None = None) -> None:
    """Serve until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    sandbox_server = None
    if sandbox is not None:
        sandbox_server = SandboxServer(build_sandbox(settings, sandbox))
        base = await sandbox_server.start()
        settings = replace(settings, api_bases=(base,))
        log.info("sandbox: WeChat emulator at %s; demo appId %s", base, settings.accounts[0].app_id)
    runner = web.AppRunner(create_app(settings), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
        log.info("jssdk-service listening on http://%s:%d", settings.host, settings.port)
        # What start-up built lives as long as the process: keep the collector from rescanning it.
        gc.collect()
        gc.freeze()
        await stop.wait()
    finally:
        await runner.cleanup()
        if sandbox_server is not None:
            await sandbox_server.stop()


def run(env: Mapping[str, str], config_path: str | None, *, sandbox: SandboxOptions | None = None) -> None:
    """Load the settings and serve them on uvloop."""
    if sandbox is not None:
        env = sandbox_environment(env, config_path)
    settings = load_settings(env, config_path)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(settings, sandbox=sandbox))
