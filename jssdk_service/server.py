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
import socket
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

import aiohttp
import msgspec
import uvloop
from aiohttp import web
from msgspec import Meta

from jssdk_service import logs
from jssdk_service.app import create_app
from jssdk_service.config import Account, Platform, Settings, Table, TokenURL, convert, layered, load_settings
from jssdk_service.demo import DEMO_AUTHORIZERS, DEMO_PLATFORM_APPID, demo_settings
from jssdk_service.errors import ConfigError
from jssdk_service.fastlane import FastLaneListener
from jssdk_service.keys import LIFECYCLE, STORE
from jssdk_service.sandbox import (
    DEMO_APP_ID,
    SandboxAccount,
    SandboxServer,
    SandboxWeComApp,
    WeChatSandbox,
    closed_port_url,
)
from jssdk_service.sandbox_central import TOKEN_PATH as CENTRAL_TOKEN_PATH
from jssdk_service.sandbox_central import CentralTokenServer
from jssdk_service.sandbox_platform import SandboxPlatform

log = logging.getLogger("jssdk_service.server")

DEMO_ALLOWED_HOSTS = "localhost,127.0.0.1,example.com"
# After the drain: how long connections accepted before the listener closed may still send a request.
CLOSE_GRACE = 0.5
# How many accounts the sandbox's start-up line describes (the rest are counted).
LOGGED_ACCOUNTS = 5
# How often the emulator pushes each platform a component_verify_ticket (every 10 minutes upstream).
PUSH_EVERY = 600.0


Rate = Annotated[float, Meta(ge=0, le=1)]


class SandboxOptions(Table, frozen=True, kw_only=True):
    """How the in-process WeChat emulator of `serve --sandbox` behaves (and fails, for rehearsals).

    Each is a flag `--sandbox-<name>` and a variable `JSSDK_SANDBOX_<NAME>`; `errors` is
    `ERRCODE:RATE,...`, the share of calls answered with each errcode.
    """

    expires_in: Annotated[int, Meta(ge=1, le=86400)] = 7200
    error_rates: dict[int, Rate] = msgspec.field(default_factory=dict, name="errors")
    http500_rate: Rate = 0.0
    reset_rate: Rate = 0.0
    delay: Annotated[float, Meta(ge=0, le=60)] = 0.0
    dead_base: bool = False


_SANDBOX_VARIABLES = {"expires_in": "JSSDK_SANDBOX_EXPIRES_IN", "errors": "JSSDK_SANDBOX_ERRORS",
                      "http500_rate": "JSSDK_SANDBOX_HTTP500_RATE", "reset_rate": "JSSDK_SANDBOX_RESET_RATE",
                      "delay": "JSSDK_SANDBOX_DELAY", "dead_base": "JSSDK_SANDBOX_DEAD_BASE"}  # fmt: skip


def sandbox_options(flags: Mapping[str, str | None], env: Mapping[str, str]) -> SandboxOptions:
    """Options from `--sandbox-*` flags (by option name: the flag's text, or None), else `JSSDK_SANDBOX_*` variables."""
    data, names = layered(SandboxOptions, _SANDBOX_VARIABLES, env, {}, flags)
    if "errors" in data:
        data["errors"] = _error_rates(data["errors"], names["errors"])
    options = convert(data, SandboxOptions, lambda path: names[str(path[0])])
    if sum(options.error_rates.values()) > 1:
        raise ConfigError(names["errors"], "rates must be from 0 to 1 and add up to at most 1")
    return options


def _error_rates(text: str, where: str) -> dict[str, str]:
    """`-1:0.3,45011:0.05` as `{"-1": "0.3", "45011": "0.05"}`, for the conversion to check."""
    rates = {}
    for item in filter(None, (item.strip() for item in text.split(","))):
        code, colon, rate = item.partition(":")
        if not colon or not code.removeprefix("-").isdigit():
            raise ConfigError(where, f"{item!r} is not ERRCODE:RATE (e.g. -1:0.3,45011:0.05)")
        rates[code] = rate
    return rates


def sandbox_settings(
    env: Mapping[str, str], config_path: str | None, *, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """The settings of `serve --sandbox`: the configured accounts, or the demo's when nothing names
    one (no setup needed): the official account as the environment would give it, and the demo
    WeCom app and external account (`demo.demo_settings`)."""
    if config_path or env.get("JSSDK_CONFIG") or env.get("JSSDK_APP_ID"):
        return load_settings(env, config_path, overrides=overrides)
    demo_env = {
        **env,
        "JSSDK_APP_ID": DEMO_APP_ID,
        "JSSDK_APP_SECRET": secrets.token_hex(16),
        "JSSDK_ALLOWED_HOSTS": env.get("JSSDK_ALLOWED_HOSTS") or DEMO_ALLOWED_HOSTS,
        "JSSDK_SHARE_TITLE": env.get("JSSDK_SHARE_TITLE") or "jssdk-service demo",
        "JSSDK_SHARE_DESC": env.get("JSSDK_SHARE_DESC") or "A page signed by the jssdk-service sandbox",
    }
    return demo_settings(load_settings(demo_env, None, overrides=overrides))


def build_sandbox(settings: Settings, options: SandboxOptions) -> tuple[WeChatSandbox, CentralTokenServer | None]:
    """An emulator that knows every configured account, and the central token server of the
    external accounts whose token_url names it (`at_central`).

    Official accounts and WeCom apps are known with their secrets; an external account holds none,
    so the emulator knows it with a secret nobody is told (only the central server mints its tokens).
    """

    def secret(account: Account) -> str:
        return secrets.token_hex(16) if account.secret is None else account.secret.reveal()

    sandbox = WeChatSandbox(
        [SandboxAccount(app_id=a.app_id, secret=secret(a)) for a in settings.accounts if not a.wecom],
        wecom_apps=[SandboxWeComApp(corp_id=a.app_id, agent_id=a.agent_id or "", secret=secret(a))
                    for a in settings.accounts if a.wecom],
        platforms=[SandboxPlatform(component_appid=p.component_appid, secret=p.secret.reveal(), token=p.token.reveal(),
                                   aes_key=p.aes_key.reveal(), callback_url=_events_url(settings, p))
                   for p in settings.platforms],
        token_expires_in=options.expires_in,
        ticket_expires_in=options.expires_in,
    )  # fmt: skip
    faults = sandbox.faults
    faults.error_rates = dict(options.error_rates)
    faults.http500_rate, faults.reset_rate, faults.delay = options.http500_rate, options.reset_rate, options.delay
    readers = [a for a in settings.accounts if at_central(a)]
    if not readers:
        return sandbox, None
    return sandbox, CentralTokenServer(sandbox, [a.key for a in readers], bearer=_central_bearer(readers))


def _events_url(settings: Settings, platform: Platform) -> str:
    """Where the emulator pushes to a platform: this service's events endpoint, on loopback when it
    listens on every address."""
    host = "127.0.0.1" if settings.host in ("", "0.0.0.0") else "[::1]" if settings.host == "::" else settings.host  # noqa: S104
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{host}:{settings.port}/v1/platform/{platform.component_appid}/events"


async def rehearse_platforms(sandbox: WeChatSandbox, settings: Settings, *, every: float = PUSH_EVERY) -> None:
    """What WeChat does for the platforms of `serve --sandbox`: once the service answers, a
    component_verify_ticket for each, the demo platform's authorizations, then a ticket every `every` s."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        host = _events_url(settings, settings.platforms[0]).split("/v1/")[0]
        for _ in range(300):
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(f"{host}/healthz") as response:
                    if response.status == 200:
                        break
            await asyncio.sleep(0.1)
    first = True
    while True:
        for platform in settings.platforms:
            pushed = await sandbox.push_verify_ticket(platform.component_appid)
            if pushed.status != 200:
                log.warning("sandbox: the push to platform %s was answered %d %s", platform.component_appid,
                            pushed.status, pushed.body[:100])  # fmt: skip
            if first and platform.component_appid == DEMO_PLATFORM_APPID:
                for app_id in DEMO_AUTHORIZERS:
                    await sandbox.authorize(platform.component_appid, app_id)
        first = False
        await asyncio.sleep(every)


def at_central(account: Account) -> bool:
    """Whether `account` reads its token from the sandbox's central token server: its token_url has
    the server's path (whatever the host: the sandbox's port is chosen when it starts)."""
    return isinstance(account.source, TokenURL) and urlsplit(account.source.url).path == CENTRAL_TOKEN_PATH


def _central_bearer(readers: list[Account]) -> str | None:
    """The bearer the central token server asks for: the one its readers send (None: they send none)."""
    bearers = {a.source.auth.reveal() if isinstance(a.source, TokenURL) and a.source.auth else None for a in readers}
    if len(bearers) > 1:
        raise ConfigError("--sandbox", f"the sandbox's central token server ({CENTRAL_TOKEN_PATH}) takes one "
                          "bearer: give each token_url naming it the same token_url_auth_env (or none)")  # fmt: skip
    return bearers.pop()


def _read_from(account: Account, base: str) -> Account:
    """`account` reading its token from the central token server of the sandbox at `base`."""
    assert isinstance(account.source, TokenURL)
    url = f"{base}{CENTRAL_TOKEN_PATH}?app={quote(account.key, safe='')}"
    return replace(account, source=TokenURL(url=url, auth=account.source.auth))


async def start_sandbox(settings: Settings, options: SandboxOptions) -> tuple[SandboxServer, Settings]:
    """Serve the emulator on loopback and point `settings` at it (behind a dead base if asked): its
    WeChat and WeCom APIs, and its central token server for the accounts that read from it."""
    sandbox, central = build_sandbox(settings, options)
    server = SandboxServer(sandbox, central=central)
    base = await server.start()
    bases = (closed_port_url(), base) if options.dead_base else (base,)
    accounts = tuple(_read_from(a, base) if at_central(a) else a for a in settings.accounts)
    settings = replace(settings, api_bases=bases, wecom_api_bases=bases, accounts=accounts)
    listed = "; ".join(a.describe() for a in accounts[:LOGGED_ACCOUNTS])
    more = f"; and {len(accounts) - LOGGED_ACCOUNTS} more" if len(accounts) > LOGGED_ACCOUNTS else ""
    log.info("sandbox: WeChat and WeCom emulator at %s; accounts: %s%s", base, listed, more)
    if settings.platforms:
        _rehearsals[server] = asyncio.get_running_loop().create_task(rehearse_platforms(server.sandbox, settings))
        log.info("sandbox: platforms %s, pushed to at %s", ", ".join(p.describe() for p in settings.platforms),
                 _events_url(settings, settings.platforms[0]).split("/v1/")[0])  # fmt: skip
    return server, settings


# The platforms' rehearsal of each running sandbox, stopped with it.
_rehearsals: dict[SandboxServer, asyncio.Task[None]] = {}


async def stop_sandbox(server: SandboxServer) -> None:
    rehearsal = _rehearsals.pop(server, None)
    if rehearsal is not None:
        rehearsal.cancel()
        await asyncio.gather(rehearsal, return_exceptions=True)
    await server.stop()


class Signals:
    """The process's stop signals: the first asks for a graceful stop, a second one exits at once."""

    def __init__(self, stops: tuple[signal.Signals, ...], *, on_second: Callable[[], None] | None = None) -> None:
        self.stop = asyncio.Event()
        self.hangup = asyncio.Event()
        self._on_second = on_second
        loop = asyncio.get_running_loop()
        for signum in stops:
            loop.add_signal_handler(signum, self._stop, signum)

    def __repr__(self) -> str:
        return f"Signals(stop={self.stop.is_set()})"

    def listen_for_hangup(self) -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.hangup.set)

    def _stop(self, signum: signal.Signals) -> None:
        if not self.stop.is_set():
            self.stop.set()
            return
        log.warning("%s again: exiting now", signum.name)
        if self._on_second is not None:
            self._on_second()
        os._exit(1)


async def serve(
    settings: Settings,
    *,
    sandbox: SandboxOptions | None = None,
    sock: socket.socket | None = None,
    ready: Connection | None = None,
    demo: bool = False,
) -> None:
    """Serve in this process until SIGTERM (or SIGINT, unless a supervisor runs it), then drain and stop.

    With a sandbox (here or in the supervisor), the demo page too. Under a supervisor, `sock` is the
    listening socket every worker shares, and `ready` is told once this worker's accounts are ready.

    The stop: /readyz turns 503 at once; for `drain_seconds` the service still answers everything,
    each answer with `Connection: close`; then it stops listening, lets the requests in progress
    finish, cancels its refreshes and closes its clients, and returns (exit 0).
    """
    signals = Signals((signal.SIGTERM,) if sock is not None else (signal.SIGTERM, signal.SIGINT))
    sandbox_server = None
    if sandbox is not None:
        sandbox_server, settings = await start_sandbox(settings, sandbox)
    app = create_app(settings, demo=demo or sandbox is not None)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=settings.keepalive_timeout,
                           shutdown_timeout=settings.request_wait + 5)  # fmt: skip
    await runner.setup()
    listening = _listening_socket(settings.host, settings.port) if sock is None else sock
    site = FastLaneListener(runner, listening, keepalive_timeout=settings.keepalive_timeout)
    try:
        await site.start()
        log.info("jssdk-service listening on http://%s:%d (pid %d)", settings.host, settings.port, os.getpid())
        # What start-up built lives as long as the process: keep the collector from rescanning it.
        # (No gc.collect() first: with thousands of accounts it would hold the new listener for 0.5 s.)
        gc.freeze()
        settled = asyncio.get_running_loop().create_task(_settle(app, ready, signals.stop, settings.request_wait))
        await signals.stop.wait()
        settled.cancel()
        app[LIFECYCLE].draining = True
        log.info("stopping: draining for %gs (a second signal stops at once)", settings.drain_seconds)
        await asyncio.sleep(settings.drain_seconds)
        # Stop listening first, and let the connections accepted until now deliver their requests:
        # closing the server at once would drop a request that arrived with its connection.
        site.stop()
        await asyncio.sleep(CLOSE_GRACE)
    finally:
        site.close_connections()
        await runner.cleanup()
        if sandbox_server is not None:
            await stop_sandbox(sandbox_server)
    log.info("jssdk-service stopped (pid %d)", os.getpid())


async def _settle(app: web.Application, ready: Connection | None, stop: asyncio.Event, wait: float) -> None:
    """Once every account may sign: tell the supervisor, if any (or after `wait` seconds at least 10,
    whatever the accounts say), and freeze what the start-up built out of the collector's way.

    The credentials and refresher tasks of thousands of accounts outlive everything else; left in the
    collector's oldest generation, each full collection would scan them all (tens of milliseconds,
    on the event loop) whenever enough short-lived objects had come and gone.
    """
    give_up = time.monotonic() + max(wait, 10.0)
    store = app[STORE]
    while not stop.is_set():
        readiness = store.readiness(limit=0)
        if readiness.ready == readiness.total:
            break
        if ready is not None and time.monotonic() > give_up:
            _tell(ready)
            ready = None
        await asyncio.sleep(0.2)  # a count over every account: not too often
    if ready is not None:
        _tell(ready)
    gc.freeze()


def _tell(ready: Connection) -> None:
    with contextlib.suppress(OSError):
        ready.send_bytes(b"ready")
    ready.close()


class Workers:
    """`serve --workers N`: N worker processes sharing one listening socket, looked after.

    One socket, bound here and inherited by every worker, means one accept queue: a worker that
    stops listening leaves the connections waiting in it to the others, so replacing workers drops
    nothing (SO_REUSEPORT would give each worker a queue of its own, lost when it closes).
    """

    def __init__(self, settings: Settings, sock: socket.socket, *, demo: bool) -> None:
        self._settings = settings
        self._sock = sock
        self._demo = demo
        self._spawn = multiprocessing.get_context("spawn")
        self.processes: list[multiprocessing.process.BaseProcess] = []

    def __repr__(self) -> str:
        return f"Workers({len(self.processes)})"

    def start(self, number: int) -> tuple[multiprocessing.process.BaseProcess, Connection]:
        """Worker `number`, started; the connection answers once it is ready."""
        told, tell = self._spawn.Pipe(duplex=False)
        process = self._spawn.Process(target=_worker, args=(self._settings, self._sock, tell, self._demo),
                                      name=f"jssdk-worker-{number}")  # fmt: skip
        process.start()
        tell.close()
        return process, told

    def start_all(self, count: int) -> None:
        self.processes = [self.start(n)[0] for n in range(count)]

    async def replace_all(self) -> None:
        """SIGHUP: each worker in turn is replaced by a new one, stopped once the new one is ready."""
        settings = self._settings
        for number, old in enumerate(self.processes):
            new, told = self.start(number)
            loop = asyncio.get_running_loop()
            if not await loop.run_in_executor(None, told.poll, max(settings.request_wait, 10.0) + 30):
                log.warning("worker %d (pid %s) did not say it was ready; replacing the old one anyway", number,
                            new.pid)  # fmt: skip
            told.close()
            self.processes[number] = new
            old.terminate()  # it drains, then exits
            await loop.run_in_executor(None, old.join, self.stop_timeout)
            log.info("worker %d replaced (pid %s -> %s)", number, old.pid, new.pid)

    def restart_dead(self, stopping: bool) -> None:
        for number, process in enumerate(self.processes):
            if not process.is_alive() and not stopping:
                log.warning("worker %d (pid %s) exited with %s; starting another", number, process.pid,
                            process.exitcode)  # fmt: skip
                self.processes[number] = self.start(number)[0]

    @property
    def stop_timeout(self) -> float:
        """How long a worker may take to drain and stop before it is killed."""
        return self._settings.drain_seconds + self._settings.request_wait + 10

    async def stop_all(self) -> None:
        for process in self.processes:
            process.terminate()
        loop = asyncio.get_running_loop()
        for process in self.processes:
            await loop.run_in_executor(None, process.join, self.stop_timeout)
            if process.is_alive():
                process.kill()

    def kill_all(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.kill()


async def supervise(settings: Settings, *, workers: int, sandbox: SandboxOptions | None = None) -> None:
    """Run `workers` processes on one port, restarting any that dies, until a signal.

    They share credentials through the configured Redis; the sandbox, if any, runs here once so
    that every worker talks to the same emulator. SIGHUP replaces the workers one at a time; SIGTERM
    or SIGINT stops them (each drains first); a second one kills them at once.
    """
    metrics_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = metrics_directory(settings.metrics_dir, os.environ)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir

    def remove_metrics_dir() -> None:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)

    sandbox_server = None
    try:
        sock = _listening_socket(settings.host, settings.port)
        if sandbox is not None:
            sandbox_server, settings = await start_sandbox(settings, sandbox)
    except BaseException:
        remove_metrics_dir()
        raise
    pool = Workers(settings, sock, demo=sandbox is not None)

    def kill_now() -> None:
        pool.kill_all()
        remove_metrics_dir()

    signals = Signals((signal.SIGTERM, signal.SIGINT), on_second=kill_now)
    signals.listen_for_hangup()
    pool.start_all(workers)
    log.info("jssdk-service: %d workers on http://%s:%d", workers, settings.host, settings.port)
    try:
        while not signals.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(signals.stop.wait(), 0.5)
            if signals.hangup.is_set() and not signals.stop.is_set():
                signals.hangup.clear()
                log.info("SIGHUP: replacing the workers one at a time")
                await pool.replace_all()
            pool.restart_dead(signals.stop.is_set())
    finally:
        await pool.stop_all()
        sock.close()
        if sandbox_server is not None:
            await stop_sandbox(sandbox_server)
        remove_metrics_dir()


def metrics_directory(configured: str | None, env: Mapping[str, str]) -> str:
    """A new private directory for the workers' metrics: inside `configured` (JSSDK_METRICS_DIR), or
    else under $XDG_RUNTIME_DIR or /dev/shm (memory-backed, so a read-only root filesystem is fine)."""
    bases = [configured] if configured else [env.get("XDG_RUNTIME_DIR") or "", "/dev/shm"]  # noqa: S108
    for base in bases:
        if base and os.path.isdir(base) and os.access(base, os.W_OK | os.X_OK):
            return tempfile.mkdtemp(prefix="jssdk-metrics-", dir=base)
    where = f"{configured!r} is not a writable directory" if configured else (
        "neither $XDG_RUNTIME_DIR nor /dev/shm is writable")  # fmt: skip
    raise ConfigError("JSSDK_METRICS_DIR", f"{where}; --workers keeps its metrics there: point it at a writable "
                      "directory (a tmpfs, or an emptyDir in Kubernetes)")  # fmt: skip


def _listening_socket(host: str, port: int) -> socket.socket:
    """The one listening socket: on the first address `host` names (a name may be IPv4 or IPv6)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]  # fmt: skip
    except socket.gaierror as exc:
        raise ConfigError("JSSDK_HOST", f"cannot listen on {host!r}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError("JSSDK_PORT", f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def _worker(settings: Settings, sock: socket.socket, ready: Connection, demo: bool) -> None:
    # Ctrl-C reaches the whole process group: the supervisor handles it and stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(settings)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(settings, sock=sock, ready=ready, demo=demo))


def configure_logging(settings: Settings) -> None:
    logs.configure(level=settings.log_level, log_format=settings.log_format)


def run(
    env: Mapping[str, str],
    config_path: str | None,
    *,
    overrides: Mapping[str, Any] | None = None,
    sandbox: SandboxOptions | None = None,
    workers: int = 1,
) -> None:
    """Load the settings (`overrides`: `[service]` values from flags) and serve them on uvloop, in one
    process or `workers`."""
    if sandbox is not None:
        settings = sandbox_settings(env, config_path, overrides=overrides)
    else:
        settings = load_settings(env, config_path, overrides=overrides)
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
