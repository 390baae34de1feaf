"""The process's life, for real: draining on SIGTERM, a second signal, SIGHUP's rolling replacement of
workers, where `--workers` keeps its metrics, and connections that go quiet.

The load comes from a small raw HTTP/1.1 keep-alive client built on asyncio streams: aiohttp's client
retries and pools connections behind the test's back, and would hide exactly the failures looked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from jssdk_service.demo import DEMO_AUTHORIZERS

from .helpers import (
    Process,
    RedisServer,
    clean_environment,
    free_port,
    require_binary,
    sandbox_command,
    start_process,
    wait_answering,
    worker_pids,
)

SIGN_TARGET = "/v1/signature?url=http%3A%2F%2Flocalhost%2F"
REQUEST = f"GET {SIGN_TARGET} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
# Answers that arrive this long after SIGTERM was sent were surely written while draining.
SIGNAL_LATENCY = 0.5
CONNECTIONS = 16
DRAIN_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Answer:
    """One HTTP answer as read off the wire."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def closes(self) -> bool:
        return "close" in self.headers.get("connection", "").lower()


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    """The status line, headers and Content-Length body of the next answer on `reader`."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status_line, *lines = head.split("\r\n")
    headers = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Answer(int(status_line.split()[1]), headers, body)


async def fetch(port: int, target: str, *, within: float = 5.0) -> Answer:
    """GET `target` over a fresh connection of its own."""
    async with asyncio.timeout(within):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            await writer.drain()
            return await read_answer(reader)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def wait_signing(port: int, process: Process) -> None:
    """Until /v1/signature answers 200 on `port`, for the demo platform's last authorizer too (the sandbox
    authorizes them once the port answers, one after the other), and then /readyz (every demo account is ready)."""
    for target in (SIGN_TARGET, f"{SIGN_TARGET}&app={DEMO_AUTHORIZERS[-1]}", "/readyz"):
        await wait_answering(process, f"http://127.0.0.1:{port}{target}", seconds=30.0)


@dataclass
class Load:
    """K keep-alive connections asking for signatures, each reconnecting whenever an answer says `Connection: close`.

    A failed connect counts as `refused`; a request written but not answered in full (EOF, reset,
    no answer within 10 s) is `unanswered`, kept with the time it was written, what happened, and
    whether its connection had been answered before (a kept-alive connection) or was new.
    """

    port: int
    statuses: Counter[int] = field(default_factory=Counter)
    answers: list[tuple[float, bool]] = field(default_factory=list)  # (monotonic time, Connection: close)
    unanswered: list[tuple[float, str, bool]] = field(default_factory=list)  # (time written, what happened, reused)
    refused: int = 0
    first_refused_at: float | None = None
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self, connections: int) -> None:
        self._tasks = [asyncio.create_task(self._connection()) for _ in range(connections)]

    async def stop(self) -> None:
        """Ends the load: every connection finishes its request in flight, then closes."""
        self._stopping.set()
        async with asyncio.timeout(15):
            await asyncio.gather(*self._tasks)

    def kill(self) -> None:
        for task in self._tasks:
            task.cancel()

    def closing_answers(self, after: float = 0.0, before: float = float("inf")) -> tuple[int, int]:
        """How many answers arrived between the two times, and how many of them said `Connection: close`."""
        window = [closes for at, closes in self.answers if after < at < before]
        return len(window), sum(window)

    async def _connection(self) -> None:
        while not self._stopping.is_set():
            try:
                async with asyncio.timeout(5):
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except (OSError, TimeoutError):
                self.refused += 1
                if self.first_refused_at is None:
                    self.first_refused_at = time.monotonic()
                await asyncio.sleep(0.01)
                continue
            try:
                await self._requests(reader, writer)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reused = False
        while not self._stopping.is_set():
            written_at = time.monotonic()
            try:
                writer.write(REQUEST)
                async with asyncio.timeout(10):
                    await writer.drain()
                    answer = await read_answer(reader)
            except (OSError, EOFError, TimeoutError) as exc:
                self.unanswered.append((written_at, repr(exc), reused))
                return
            reused = True
            self.statuses[answer.status] += 1
            self.answers.append((time.monotonic(), answer.closes))
            if answer.closes:
                return


def assert_clean_exit(exit_code: int | None, log: Path) -> None:
    """The process exited 0 and wrote nothing that looks like a traceback."""
    output = log.read_text()
    assert exit_code == 0, output
    assert "Traceback" not in output, output


def quiet_environment(**overrides: str) -> dict[str, str]:
    """A clean environment for the service, logging warnings only unless `overrides` say otherwise."""
    return clean_environment(**{"JSSDK_LOG_LEVEL": "WARNING", **overrides})


def children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def descendants(pid: int) -> list[int]:
    found = children(pid)
    for child in list(found):
        found.extend(descendants(child))
    return found


def environment_of(pid: int) -> dict[str, str]:
    items = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    return dict(item.partition("=")[::2] for item in items if item)


def current_workers(supervisor: int) -> set[int]:
    """`worker_pids`, tolerating a worker that exits while it is read."""
    for _ in range(5):
        with contextlib.suppress(OSError):
            return set(worker_pids(supervisor))
    return set()


async def finish(process: Process) -> None:
    """Kill what is left of a test's service: the process and everything it started."""
    if process.returncode is None:
        for pid in [*descendants(process.pid), process.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await process.wait()


async def test_sigterm_under_keepalive_load_drains_without_dropping_a_request(tmp_path: Path) -> None:
    """SIGTERM under keep-alive load: /readyz turns 503 "draining", every request written while draining is
    answered 200 with `Connection: close`, then the listener closes and the process exits 0 without a traceback."""
    port, log = free_port(), tmp_path / "service.log"
    process = await start_process(
        log, sandbox_command(port), quiet_environment(JSSDK_DRAIN_SECONDS=f"{DRAIN_SECONDS:g}")
    )
    load = Load(port)
    try:
        await wait_signing(port, process)
        ready = await fetch(port, "/readyz")
        assert (ready.status, orjson.loads(ready.body)["status"]) == (200, "ready")
        load.start(CONNECTIONS)
        await asyncio.sleep(1.0)
        signalled_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        draining = await fetch(port, "/readyz")
        assert draining.status == 503 and orjson.loads(draining.body)["status"] == "draining"
        assert draining.closes
        async with asyncio.timeout(15):
            exit_code = await process.wait()
        exited_at = time.monotonic()
        await load.stop()
    finally:
        load.kill()
        await finish(process)
    assert_clean_exit(exit_code, log)
    # Every request on a connection that was open (answered before) is answered. Only a connection
    # opened in the very moment the listener closes may be lost: the kernel resets those still in its
    # accept queue, before the service ever sees them.
    listener_closes = signalled_at + DRAIN_SECONDS
    lost = [(round(at - signalled_at, 3), why, reused) for at, why, reused in load.unanswered]
    assert not [entry for entry in lost if entry[2]], f"requests on open connections went unanswered: {lost}"
    assert all(at > listener_closes - 0.1 for at, _, _ in load.unanswered), (
        f"requests written while draining were not answered (seconds after SIGTERM, what happened): {lost}"
    )
    assert len(load.unanswered) <= CONNECTIONS, lost
    assert set(load.statuses) == {200}, load.statuses
    before, closed_before = load.closing_answers(before=signalled_at)
    assert before > 100 and closed_before == 0, "keep-alive answers before the signal"
    during, closed_during = load.closing_answers(after=signalled_at + SIGNAL_LATENCY)
    assert during > 20 and closed_during == during, "every answer while draining closes its connection"
    assert load.answers[-1][0] > listener_closes - 0.5, "the service stopped answering before its drain was over"
    assert load.first_refused_at is None or load.first_refused_at > listener_closes - 0.1, "refused while draining"
    assert exited_at - signalled_at < 10


async def test_a_second_sigterm_exits_at_once(tmp_path: Path) -> None:
    """A second SIGTERM during a 30-second drain ends the process within seconds, with exit code 1."""
    port, log = free_port(), tmp_path / "service.log"
    process = await start_process(log, sandbox_command(port), quiet_environment(JSSDK_DRAIN_SECONDS="30"))
    try:
        await wait_signing(port, process)
        process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        assert process.returncode is None, "the first SIGTERM did not drain"
        second_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(5):
            exit_code = await process.wait()
        assert time.monotonic() - second_at < 5
    finally:
        await finish(process)
    assert exit_code == 1, log.read_text()


async def test_sighup_replaces_every_worker_without_failing_a_request(
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    """SIGHUP replaces both workers one at a time under keep-alive load: no request is refused or lost, all are 200."""
    port, log = free_port(), tmp_path / "service.log"
    env = quiet_environment(JSSDK_CACHE_URL=redis_server.url, JSSDK_DRAIN_SECONDS="1")
    process = await start_process(log, sandbox_command(port, "--workers", "2"), env)
    load = Load(port)
    try:
        deadline = time.monotonic() + 30
        while len(current_workers(process.pid)) < 2:
            assert time.monotonic() < deadline, "the workers did not start"
            await asyncio.sleep(0.2)
        await wait_signing(port, process)
        first = current_workers(process.pid)
        load.start(CONNECTIONS)
        await asyncio.sleep(1.0)
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while True:
            now = current_workers(process.pid)
            if len(now) == 2 and not now & first:
                break
            assert process.returncode is None, f"the supervisor exited with {process.returncode}"
            assert time.monotonic() < deadline, f"workers {first} were not all replaced (now {now})"
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        await load.stop()
        assert (load.unanswered, load.refused) == ([], 0), log.read_text()
        assert set(load.statuses) == {200}, load.statuses
        assert load.statuses[200] > 100
        assert any(closes for _, closes in load.answers), "no answer came from a draining worker"
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            exit_code = await process.wait()
    finally:
        load.kill()
        await finish(process)
    assert_clean_exit(exit_code, log)


def private_mount_namespace() -> list[str]:
    """The command prefix running a command in a mount namespace of its own: its mounts do not leak."""
    unshare = require_binary("unshare")
    if os.geteuid() != 0:  # mounting, even in a namespace of our own, takes root (CI runs as root)
        if os.environ.get("CI") == "true":
            pytest.fail("a private mount namespace needs root under CI=true")
        pytest.skip("a private mount namespace needs root")
    usage = subprocess.run([unshare, "--help"], capture_output=True, text=True, check=False).stdout
    return [unshare, "--mount", *(["--propagation", "private"] if "--propagation" in usage else []), "--fork"]


def read_only(*directories: str) -> list[str]:
    """`sh -c` making each of `directories` read-only, then running its arguments. A read-only bind of
    the directory onto itself keeps what is in it (this checkout, its venv) where it is."""
    mounts = "".join(f"mount --bind {d} {d} && mount -o remount,ro,bind {d} && " for d in directories)
    return ["sh", "-c", f'{mounts}exec "$@"', "sh"]


async def test_workers_keep_their_metrics_in_dev_shm_when_tmp_is_read_only(
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    """With a read-only /tmp, `serve --workers 2` keeps its metrics in /dev/shm, signs, serves /metrics and exits 0."""
    port, log = free_port(), tmp_path / "service.log"
    command = [*private_mount_namespace(), *read_only("/tmp"), *sandbox_command(port, "--workers", "2")]
    process = await start_process(log, command, quiet_environment(JSSDK_CACHE_URL=redis_server.url))
    try:
        await wait_signing(port, process)
        # unshare's child execs sh, which execs the supervisor.
        (supervisor,) = children(process.pid)
        workers = current_workers(supervisor)
        assert workers, "no worker"
        metrics_dir = environment_of(min(workers))["PROMETHEUS_MULTIPROC_DIR"]
        assert metrics_dir.startswith("/dev/shm/jssdk-metrics-"), metrics_dir
        assert stat.S_IMODE((await asyncio.to_thread(os.stat, metrics_dir)).st_mode) == 0o700, "not private"
        metrics = await fetch(port, "/metrics")
        assert metrics.status == 200 and b"# TYPE jssdk_http_requests_total counter" in metrics.body
        os.kill(supervisor, signal.SIGTERM)
        async with asyncio.timeout(20):
            exit_code = await process.wait()
    finally:
        await finish(process)
    assert_clean_exit(exit_code, log)
    assert not await asyncio.to_thread(os.path.exists, metrics_dir), "the metrics directory outlived the supervisor"
    # The read-only /tmp stayed in its namespace.
    (tmp_path / "still-writable").write_text("yes")


def assert_one_line_naming_metrics_dir(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "JSSDK_METRICS_DIR" in lines[0], result.stderr


def test_workers_exit_2_when_no_place_for_metrics_is_writable() -> None:
    """With /tmp and /dev/shm read-only and no XDG_RUNTIME_DIR, `serve --workers 2` exits 2 with one line naming JSSDK_METRICS_DIR."""
    command = [
        *private_mount_namespace(),
        *read_only("/tmp", "/dev/shm"),
        *sandbox_command(free_port(), "--workers", "2"),
    ]
    # It stops before any worker starts, so the Redis it is pointed at need not exist.
    env = quiet_environment(JSSDK_CACHE_URL=f"redis://127.0.0.1:{free_port()}/0")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert_one_line_naming_metrics_dir(result)


@pytest.mark.parametrize("kind", ["missing", "a file"])
def test_workers_exit_2_when_jssdk_metrics_dir_is_not_a_writable_directory(tmp_path: Path, kind: str) -> None:
    """JSSDK_METRICS_DIR naming a missing directory, or a file, makes `serve --workers 2` exit 2 with one line naming it."""
    configured = tmp_path / "metrics"
    if kind == "a file":
        configured.write_text("not a directory")
    env = quiet_environment(JSSDK_CACHE_URL=f"redis://127.0.0.1:{free_port()}/0", JSSDK_METRICS_DIR=str(configured))
    result = subprocess.run(sandbox_command(free_port(), "--workers", "2"), env=env, capture_output=True, text=True,
                            timeout=30, check=False)  # fmt: skip
    assert_one_line_naming_metrics_dir(result)
    assert str(configured) in result.stderr


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> float:
    """How long the server took to close the connection (it must send nothing more first)."""
    started = time.monotonic()
    async with asyncio.timeout(seconds):
        assert await reader.read() == b"", "the server answered instead of closing"
    return time.monotonic() - started


async def test_slow_headers_and_idle_connections_are_closed_after_the_keepalive_timeout(tmp_path: Path) -> None:
    """With JSSDK_KEEPALIVE_TIMEOUT=1, a connection with unfinished headers (new, or after an answer) or idle
    after an answer is closed by the server within seconds."""
    port, log = free_port(), tmp_path / "service.log"
    process = await start_process(
        log, sandbox_command(port), quiet_environment(JSSDK_KEEPALIVE_TIMEOUT="1", JSSDK_DRAIN_SECONDS="0")
    )
    connections: list[asyncio.StreamWriter] = []
    try:
        await wait_signing(port, process)

        async def case(answered_first: bool, partial: bytes) -> float:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            connections.append(writer)
            if answered_first:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = await read_answer(reader)
                assert answer.status == 200 and not answer.closes
            writer.write(partial)
            await writer.drain()
            return await closed_within(reader, 3.0)

        slow_new, slow_after_answer, idle = await asyncio.gather(
            case(False, b"GET /healthz HTTP/1.1\r\nHo"),
            case(True, b"GET /healthz HTTP/1.1\r\nHo"),
            case(True, b""),
        )
        assert min(slow_new, slow_after_answer, idle) > 0.5, "closed before the timeout"
        assert (await fetch(port, "/healthz")).status == 200
    finally:
        for writer in connections:
            writer.close()
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(15):
                    await process.wait()
        await finish(process)
    assert process.returncode == 0, log.read_text()
