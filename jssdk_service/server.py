"""Running the service: one process, or N workers on one port, optionally next to an in-process sandbox."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import secrets
import shutil
import signal
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import uvloop
from aiohttp import web

from jssdk_service import logs
from jssdk_service.config import Settings, load_settings
from jssdk_service.errors import ConfigError
from jssdk_service.sandbox import DEMO_APP_ID, SandboxAccount, SandboxServer, WeChatSandbox, closed_port_url
from jssdk_service.web import create_app

log = logging.getLogger("jssdk_service.server")

DEMO_ALLOWED_HOSTS = "localhost,127.0.0.1,example.com"


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxOptions:
    """How the in-process WeChat emulator of `serve --sandbox` behaves (and fails, for rehearsals)."""

    expires_in: int = 7200
    error_rates: Mapping[int, float] = field(default_factory=dict)
    http500_rate: float = 0.0
    reset_rate: float = 0.0
    delay: float = 0.0
    dead_base: bool = False


def sandbox_options(flags: Mapping[str, str | None], env: Mapping[str, str]) -> SandboxOptions:
    """Options from `--sandbox-*` flags, falling back to `JSSDK_SANDBOX_*` variables.

    `flags` maps option names (`errors`, `http500_rate`, ...) to the flag's text or None.
    """

    def value(name: str) -> tuple[str, str | None]:
        flag = flags.get(name)
        env_name = f"JSSDK_SANDBOX_{name.upper()}"
        if flag is not None:
            return f"--sandbox-{name.replace('_', '-')}", flag
        return env_name, env.get(env_name) or None

    def number(name: str, default: float, upper: float) -> float:
        where, text = value(name)
        if text is None:
            return default
        try:
            parsed = float(text)
        except ValueError:
            parsed = -1.0
        if not 0 <= parsed <= upper:
            raise ConfigError(where, f"has value {text!r}; expected a number from 0 to {upper:g}")
        return parsed

    where, errors_text = value("errors")
    error_rates: dict[int, float] = {}
    for item in (errors_text or "").split(","):
        if not item.strip():
            continue
        code, _, rate = item.partition(":")
        try:
            error_rates[int(code)] = float(rate)
        except ValueError:
            raise ConfigError(where, f"{item.strip()!r} is not ERRCODE:RATE (e.g. -1:0.3,45011:0.05)") from None
    if sum(error_rates.values()) > 1 or any(rate < 0 for rate in error_rates.values()):
        raise ConfigError(where, "rates must be from 0 to 1 and add up to at most 1")
    _, dead_base = value("dead_base")
    return SandboxOptions(
        expires_in=int(number("expires_in", 7200, 86400)) or 7200,
        error_rates=error_rates,
        http500_rate=number("http500_rate", 0.0, 1.0),
        reset_rate=number("reset_rate", 0.0, 1.0),
        delay=number("delay", 0.0, 60.0),
        dead_base=dead_base not in (None, "", "0", "false", "no"),
    )


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
        token_expires_in=options.expires_in,
        ticket_expires_in=options.expires_in,
    )
    faults = sandbox.faults
    faults.error_rates = dict(options.error_rates)
    faults.http500_rate, faults.reset_rate, faults.delay = options.http500_rate, options.reset_rate, options.delay
    return sandbox


async def start_sandbox(settings: Settings, options: SandboxOptions) -> tuple[SandboxServer, Settings]:
    """Serve the emulator on loopback and point `settings` at it (behind a dead base if asked)."""
    server = SandboxServer(build_sandbox(settings, options))
    base = await server.start()
    bases = (closed_port_url(), base) if options.dead_base else (base,)
    log.info("sandbox: WeChat emulator at %s; demo appId %s", base, settings.accounts[0].app_id)
    return server, replace(settings, api_bases=bases)


async def serve(
    settings: Settings, *, sandbox: SandboxOptions | None = None, reuse_port: bool = False, demo: bool = False
) -> None:
    """Serve in this process until SIGINT or SIGTERM; with a sandbox (here or in the supervisor), the demo page too."""
    stop = _stop_on_signals()
    sandbox_server = None
    if sandbox is not None:
        sandbox_server, settings = await start_sandbox(settings, sandbox)
    app = create_app(settings, demo=demo or sandbox is not None)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.port, reuse_port=reuse_port).start()
        log.info("jssdk-service listening on http://%s:%d (pid %d)", settings.host, settings.port, os.getpid())
        # What start-up built lives as long as the process: keep the collector from rescanning it.
        gc.collect()
        gc.freeze()
        await stop.wait()
    finally:
        await runner.cleanup()
        if sandbox_server is not None:
            await sandbox_server.stop()


async def supervise(settings: Settings, *, workers: int, sandbox: SandboxOptions | None = None) -> None:
    """Run `workers` processes on one port (SO_REUSEPORT), restarting any that dies, until a signal.

    They share credentials through the configured Redis; the sandbox, if any, runs here once so
    that every worker talks to the same emulator.
    """
    stop = _stop_on_signals()
    sandbox_server = None
    if sandbox is not None:
        sandbox_server, settings = await start_sandbox(settings, sandbox)
    metrics_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="jssdk-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    spawn = multiprocessing.get_context("spawn")

    def start(number: int) -> multiprocessing.process.BaseProcess:
        process = spawn.Process(target=_worker, args=(settings, sandbox is not None), name=f"jssdk-worker-{number}")
        process.start()
        return process

    processes = [start(n) for n in range(workers)]
    log.info("jssdk-service: %d workers on http://%s:%d", workers, settings.host, settings.port)
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            for number, process in enumerate(processes):
                if not process.is_alive() and not stop.is_set():
                    log.warning("worker %d (pid %s) exited with %s; starting another", number, process.pid,
                                process.exitcode)  # fmt: skip
                    processes[number] = start(number)
    finally:
        for process in processes:
            process.terminate()
        loop = asyncio.get_running_loop()
        for process in processes:
            await loop.run_in_executor(None, process.join, 10)
        if sandbox_server is not None:
            await sandbox_server.stop()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _worker(settings: Settings, demo: bool) -> None:
    configure_logging(settings)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(settings, reuse_port=True, demo=demo))


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop


def configure_logging(settings: Settings) -> None:
    logs.configure(level=settings.log_level, log_format=settings.log_format)


def run(
    env: Mapping[str, str], config_path: str | None, *, sandbox: SandboxOptions | None = None, workers: int = 1
) -> None:
    """Load the settings and serve them on uvloop, in one process or `workers`."""
    if sandbox is not None:
        env = sandbox_environment(env, config_path)
    settings = load_settings(env, config_path)
    if workers > 1 and settings.cache_url.startswith("memory:"):
        raise ConfigError(
            "--workers",
            f"{workers} processes cannot share credentials through memory://; set JSSDK_CACHE_URL=redis://host:port/db "
            "(independent refreshes would waste the quota and knock each other's tokens out)",
        )
    configure_logging(settings)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        if workers > 1:
            runner.run(supervise(settings, workers=workers, sandbox=sandbox))
        else:
            runner.run(serve(settings, sandbox=sandbox))
