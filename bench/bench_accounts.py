"""Many accounts: start-up, memory, upstream calls and random-account throughput at N accounts.

    python bench/bench_accounts.py [--accounts 1,1000,10000] [--lifetime L] [--lifetimes 3]
                                   [--concurrency 16] [--seconds 5] [--rounds 3] [--mixed]

For each N it writes a TOML config with N `[[accounts]]` (all signing for example.com, one AppSecret
in one environment variable), starts the sandbox (WeChat emulator) as its own process with those N
accounts, tokens and tickets living L seconds and every upstream call taking 0.3 s, and starts
`python -m jssdk_service serve --config FILE` against it (`JSSDK_UPSTREAM_CONCURRENCY`, log level
WARNING). It reports:
- seconds until the port answers (`/healthz` 200) and until every account is ready (`/readyz` 200;
  progress from its `ready`/`total` fields, or from its `accounts` list);
- the most upstream calls in flight at once (the sandbox's `/sandbox/stats` `peakInFlight`);
- the service's RSS once ready (`VmRSS`);
- token and ticket calls per account at start, and per account per lifetime over the next
  `--lifetimes` lifetimes;
- the busiest second of ticket refreshes over those lifetimes against their average per second;
- warm `/v1/signature` throughput for a random account per request (`wrk`, one thread, 32
  connections, a Lua script picking the app) relative to a separately running N = 1 service,
  alternating the two round by round;
- the median latency of 20 GETs of `/metrics` and of `/readyz`.
With `--mixed` the N accounts are of every kind in turn: an official account with its AppSecret, a
WeCom app (ten apps a corp; a corp ticket and an agent ticket each), and an official account whose
token the sandbox's central token server owns (read over HTTP with a bearer). Token calls then count
gettoken and the central server's reads too, and ticket calls WeCom's two ticket APIs.
Run by hand, never in CI. At 10,000 accounts a cold start at concurrency 16 takes about 375 s, so
the default lifetime there is 900 s and three lifetimes take 45 minutes on top.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.error import HTTPError
from urllib.request import urlopen

DELAY = 0.3
"""Seconds every upstream call takes in the sandbox."""
SECRET_ENV = "BENCH_APP_SECRET"  # noqa: S105 (the name of the variable, not a secret)
CONNECTIONS = 32
LATENCY_SAMPLES = 20
ROOT = Path(__file__).resolve().parent.parent

SANDBOX_SERVER = """
import asyncio
import os
import sys

from jssdk_service.sandbox import SandboxAccount, SandboxServer, WeChatSandbox
from jssdk_service.sandbox_central import CentralTokenServer
from jssdk_service.sandbox_wecom import SandboxWeComApp


async def main() -> None:
    ids_path, secret_env, port, lifetime, delay = sys.argv[1:6]
    secret = os.environ[secret_env]
    with open(ids_path) as handle:
        rows = [line.split() for line in handle if line.strip()]
    official = [row[1] for row in rows if row[0] in ("official", "external")]
    wecom = [SandboxWeComApp(corp_id=row[1], agent_id=row[2], secret=secret) for row in rows if row[0] == "wecom"]
    sandbox = WeChatSandbox([SandboxAccount(app_id=app_id, secret=secret) for app_id in official], wecom_apps=wecom,
                            token_expires_in=int(lifetime), ticket_expires_in=int(lifetime))
    sandbox.faults.delay = float(delay)
    owned = [row[1] for row in rows if row[0] == "external"]
    central = CentralTokenServer(sandbox, owned, bearer=secret) if owned else None
    await SandboxServer(sandbox, central=central, port=int(port)).start()
    await asyncio.Event().wait()


asyncio.run(main())
"""

WRK_SCRIPT = """
local count = {count}
local prefix = "/v1/signature?url=https%3A%2F%2Fexample.com%2Fp&app=a"
math.randomseed(os.time())
request = function()
  return wrk.format("GET", prefix .. math.random(0, count - 1))
end
"""


class BenchError(Exception):
    """A step could not be measured (a process died, an answer was wrong, a wait ran out)."""


@dataclass
class Pair:
    """A sandbox and a service started against it."""

    accounts: int
    lifetime: int
    sandbox: str
    service: str
    process: subprocess.Popen[bytes]
    log: Path
    started: float
    """monotonic time the service process was started"""
    port_s: float
    """seconds from the start until /healthz answered 200"""

    def log_tail(self) -> str:
        return tail(self.log)


@dataclass
class Measurement:
    """What one N gave; None where it was not measured."""

    accounts: int
    lifetime: int
    port_s: float
    ready_s: float
    rss_mb: float
    peak_in_flight: int
    start_token: float
    start_ticket: float
    metrics_ms: float
    readyz_ms: float
    rps: float = math.nan
    baseline_rps: float = math.nan
    ratio: float = math.nan
    """median over the rounds of rps / baseline_rps"""
    life_token: float | None = None
    life_ticket: float | None = None
    busiest: int | None = None
    average: float | None = None
    stall: tuple[float, float, float, float] | None = None
    """signature p99 and max latency (ms) without, then during, back-to-back /metrics scrapes"""


def say(text: str) -> None:
    print(text, flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def app_id(index: int) -> str:
    """A distinct, stable appId for account `index`: wx and 16 hex characters."""
    return "wx" + hashlib.sha256(f"bench-account-{index}".encode()).hexdigest()[:16]


KINDS = ("official", "wecom", "external")
APPS_PER_CORP = 10


def kind_of(index: int, mixed: bool) -> str:
    return KINDS[index % len(KINDS)] if mixed else "official"


def wecom_app(index: int) -> tuple[str, str]:
    """The corp_id and agent_id of WeCom app `index` (ten apps a corp)."""
    corp = "ww" + hashlib.sha256(f"bench-corp-{index // (APPS_PER_CORP * len(KINDS))}".encode()).hexdigest()[:16]
    return corp, str(1000000 + index)


def write_config(path: Path, ids: Path, accounts: int, *, mixed: bool, sandbox_base: str) -> None:
    """The service's TOML (`[[accounts]]` a0, a1, ...) and the sandbox's list of what it must know."""
    lines: list[str] = []
    rows: list[str] = []
    for i in range(accounts):
        kind = kind_of(i, mixed)
        lines += ["[[accounts]]", f'name = "a{i}"', 'allowed_hosts = ["example.com"]']
        if kind == "wecom":
            corp, agent = wecom_app(i)
            lines += ['kind = "wecom"', f'corp_id = "{corp}"', f"agent_id = {agent}", f'secret_env = "{SECRET_ENV}"']
            rows.append(f"wecom {corp} {agent}")
        elif kind == "external":
            lines += [f'app_id = "{app_id(i)}"', 'token_source = "external"',
                      f'token_url = "{sandbox_base}/sandbox/central/token?app={app_id(i)}"',
                      f'token_url_auth_env = "{SECRET_ENV}"']  # fmt: skip
            rows.append(f"external {app_id(i)}")
        else:
            lines += [f'app_id = "{app_id(i)}"', f'secret_env = "{SECRET_ENV}"']
            rows.append(f"official {app_id(i)}")
        lines.append("")
    path.write_text("\n".join(lines))
    ids.write_text("\n".join(rows))


def fetch(url: str, timeout: float = 30.0) -> tuple[int, bytes]:
    """Status and body of a GET; connection errors raise OSError."""
    try:
        with urlopen(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except HTTPError as error:
        return int(error.code), bytes(error.read())


def fetch_json(url: str, timeout: float = 30.0) -> Any:
    try:
        return json.loads(fetch(url, timeout)[1])
    except (OSError, ValueError) as error:
        raise BenchError(f"{url}: {error}") from None


@contextmanager
def spawn(command: list[str], env: dict[str, str], log: TextIO) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=log)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def base_env(secret: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JSSDK_")}
    env[SECRET_ENV] = secret
    return env


def tail(log: Path, lines: int = 5) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def wait_until_answers(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if fetch(url, timeout=1)[0] == 200:
                return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"{url} did not answer (exit {process.poll()}):\n{tail(log)}")
        time.sleep(0.02)


def start_pair(
    stack: ExitStack, workdir: Path, accounts: int, lifetime: int, concurrency: int, secret: str, delay: float = DELAY,
    *, mixed: bool = False,
) -> Pair:  # fmt: skip
    """Start the sandbox and the service for `accounts` accounts; return once the service's port answers."""
    tag = f"n{accounts}-{len(list(workdir.iterdir()))}"
    config, ids = workdir / f"{tag}.toml", workdir / f"{tag}.ids"
    sandbox_port, service_port = free_port(), free_port()
    sandbox_base, service_base = f"http://127.0.0.1:{sandbox_port}", f"http://127.0.0.1:{service_port}"
    write_config(config, ids, accounts, mixed=mixed, sandbox_base=sandbox_base)
    env = base_env(secret)
    sandbox_log_path = workdir / f"{tag}.sandbox.log"
    sandbox_log = stack.enter_context(sandbox_log_path.open("w"))
    command = [sys.executable, "-c", SANDBOX_SERVER, str(ids), SECRET_ENV, str(sandbox_port), str(lifetime), str(delay)]
    sandbox = stack.enter_context(spawn(command, env, sandbox_log))
    wait_until_answers(f"{sandbox_base}/sandbox/stats", sandbox, sandbox_log_path, 60)
    env.update(JSSDK_WECHAT_API_BASE=sandbox_base, JSSDK_WECOM_API_BASE=sandbox_base,
               JSSDK_UPSTREAM_CONCURRENCY=str(concurrency),
               JSSDK_LOG_LEVEL="WARNING")  # fmt: skip
    service_log_path = workdir / f"{tag}.service.log"
    service_log = stack.enter_context(service_log_path.open("w"))
    command = [sys.executable, "-m", "jssdk_service", "serve", "--config", str(config), "--port", str(service_port)]
    started = time.monotonic()
    service = stack.enter_context(spawn(command, env, service_log))
    wait_until_answers(f"{service_base}/healthz", service, service_log_path, 120)
    return Pair(accounts=accounts, lifetime=lifetime, sandbox=sandbox_base, service=service_base, process=service,
                log=service_log_path, started=started, port_s=time.monotonic() - started)  # fmt: skip


def readiness(body: bytes, total: int) -> tuple[int, int]:
    """(ready, total) from a /readyz body: its summary fields, else its per-account list."""
    try:
        document = json.loads(body)
    except ValueError:
        return 0, total
    if not isinstance(document, dict):
        return 0, total
    ready, count = document.get("ready"), document.get("total")
    if isinstance(ready, int) and isinstance(count, int):
        return ready, count
    entries = document.get("accounts")
    if isinstance(entries, list):
        return sum(1 for e in entries if isinstance(e, dict) and e.get("ready") is True), len(entries)
    return 0, total


def wait_ready(pair: Pair, timeout: float) -> float:
    """Seconds from the service's start until /readyz says 200; progress every 10 s."""
    interval, every = (0.25, 10) if pair.accounts <= 1000 else (1.0, 30)
    deadline = time.monotonic() + timeout
    next_note = time.monotonic() + every
    while True:
        try:
            status, body = fetch(f"{pair.service}/readyz", timeout=60)
        except OSError as error:
            raise BenchError(f"/readyz: {error} (exit {pair.process.poll()}):\n{pair.log_tail()}") from None
        now = time.monotonic()
        if status == 200:
            return now - pair.started
        if now > deadline:
            ready, total = readiness(body, pair.accounts)
            raise BenchError(f"not ready after {timeout:.0f} s: {ready}/{total} accounts ready:\n{pair.log_tail()}")
        if now >= next_note:
            ready, total = readiness(body, pair.accounts)
            say(f"  ... {ready}/{total} ready after {now - pair.started:.0f} s")
            next_note = now + every
        time.sleep(interval)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def calls(stats: Any, *apis: str) -> int:
    """All calls (ok and failed) the sandbox counted for `apis`."""
    counted = stats.get("calls", {})
    return sum(int(counted.get(api, {}).get(key, 0)) for api in apis for key in ("ok", "failed"))


def token_calls(stats: Any) -> int:
    """Tokens fetched (stable_token, token, WeCom's gettoken) or read from the central server."""
    return calls(stats, "stable_token", "token", "gettoken", "central")


def ticket_calls(stats: Any) -> int:
    return calls(stats, "getticket", "get_jsapi_ticket", "get_agent_ticket")


def spread(stats: Any, start: float, end: float) -> tuple[int, float]:
    """The most tickets issued in one whole second of [start, end), and the average per second there."""
    first, last = math.ceil(start), math.floor(end)
    per_second = {int(second): int(n) for second, n in stats.get("ticketsIssuedPerSecond", {}).items()}
    inside = [n for second, n in per_second.items() if first <= second < last]
    seconds = max(1, last - first)
    return max(inside, default=0), sum(inside) / seconds


def median_ms(url: str) -> float:
    samples = []
    for _ in range(LATENCY_SAMPLES):
        began = time.perf_counter()
        fetch(url, timeout=60)
        samples.append((time.perf_counter() - began) * 1000)
    return statistics.median(samples)


def wrk(base: str, script: Path, seconds: int) -> float:
    """Requests per second; non-2xx answers or socket errors make the figure meaningless, so they stop the bench."""
    command = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "-s", str(script), base]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"wrk against {base} exited {done.returncode}: {done.stderr.strip()}")
    out = done.stdout
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if bad:
        raise BenchError(f"wrk against {base}: {bad.group(1)} answers were not 2xx")
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise BenchError(f"wrk printed no throughput:\n{out}")
    return float(found.group(1))


def wrk_latency(base: str, script: Path, seconds: int) -> tuple[float, float]:
    """The p99 and the max latency (ms) of a `wrk --latency` run."""
    command = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-s", str(script), base]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    unit = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    latency = re.search(r"Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)\b", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    if latency is None or p99 is None:
        raise BenchError(f"wrk printed no latency:\n{out}")
    return float(p99.group(1)) * unit[p99.group(2)], float(latency.group(1)) * unit[latency.group(2)]


def scrape_stall(pair: Pair, workdir: Path, seconds: int) -> tuple[float, float, float, float]:
    """Signature p99 and max latency with no scrape, then while /metrics is scraped back to back."""
    script = wrk_script(workdir, pair.accounts)
    quiet = wrk_latency(pair.service, script, seconds)
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            fetch(f"{pair.service}/metrics", timeout=60)

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    try:
        busy = wrk_latency(pair.service, script, seconds)
    finally:
        stop.set()
        scraper.join()
    say(f"  signature p99/max {quiet[0]:.2f}/{quiet[1]:.2f} ms without scrapes, "
        f"{busy[0]:.2f}/{busy[1]:.2f} ms during back-to-back /metrics scrapes")  # fmt: skip
    return (*quiet, *busy)


def wrk_script(workdir: Path, accounts: int) -> Path:
    path = workdir / f"random-{accounts}.lua"
    path.write_text(WRK_SCRIPT.replace("{count}", str(accounts)))
    return path


def throughput(pair: Pair, baseline: Pair, workdir: Path, seconds: int, rounds: int) -> tuple[float, float, float]:
    """Median req/s of `pair` and of the N = 1 `baseline`, alternating round by round, and the median of
    the rounds' ratios (each round's pair of runs saw the same machine)."""
    scripts = {pair.service: wrk_script(workdir, pair.accounts), baseline.service: wrk_script(workdir, 1)}
    for base, script in scripts.items():
        wrk(base, script, 1)  # warm-up
    mine: list[float] = []
    theirs: list[float] = []
    for round_no in range(1, rounds + 1):
        theirs.append(wrk(baseline.service, scripts[baseline.service], seconds))
        mine.append(wrk(pair.service, scripts[pair.service], seconds))
        say(f"  round {round_no}: N=1 {theirs[-1]:8.0f} req/s   N={pair.accounts} {mine[-1]:8.0f} req/s   "
            f"ratio {mine[-1] / theirs[-1]:.2f}")  # fmt: skip
    ratios = [a / b for a, b in zip(mine, theirs, strict=True)]
    return statistics.median(mine), statistics.median(theirs), statistics.median(ratios)


def observe(pair: Pair, lifetimes: int, ready_at: float) -> None:
    """Wait `lifetimes` lifetimes from `ready_at` (epoch), noting the sandbox's ticket count now and then."""
    end = ready_at + lifetimes * pair.lifetime
    until = time.strftime("%H:%M:%S", time.localtime(end))
    say(f"  observing {lifetimes} lifetime(s) of {pair.lifetime} s: until {until}")
    step = max(10.0, min(60.0, pair.lifetime / 4))
    while (left := end - time.time()) > 0:
        time.sleep(min(step, left))
        stats = fetch_json(f"{pair.sandbox}/sandbox/stats")
        say(f"  ... {time.time() - ready_at:5.0f} s after ready: {token_calls(stats)} token, "
            f"{ticket_calls(stats)} ticket calls so far; {stats.get('inFlight', 0)} in flight")  # fmt: skip


def measure(
    stack: ExitStack, workdir: Path, baseline: Pair, accounts: int, lifetime: int, args: argparse.Namespace,
    secret: str,
) -> Measurement:  # fmt: skip
    cold_start = 2 * accounts * args.delay / args.concurrency
    say(f"\n== {accounts} account(s): lifetime {lifetime} s, upstream concurrency {args.concurrency}, "
        f"{args.delay} s per upstream call (cold start >= {cold_start:.0f} s)")  # fmt: skip
    if lifetime < 1.5 * cold_start:
        say(f"  warning: a lifetime of {lifetime} s leaves little room for a {cold_start:.0f} s cold start")
    pair = start_pair(stack, workdir, accounts, lifetime, args.concurrency, secret, args.delay, mixed=args.mixed)
    say(f"  port answered in {pair.port_s:.2f} s")
    ready_s = wait_ready(pair, args.ready_timeout)
    ready_at = time.time()
    at_ready = fetch_json(f"{pair.sandbox}/sandbox/stats")
    rss = rss_mb(pair.process.pid)
    say(f"  all {accounts} ready in {ready_s:.1f} s; RSS {rss:.1f} MB; {token_calls(at_ready)} token and "
        f"{ticket_calls(at_ready)} ticket calls; peak {at_ready.get('peakInFlight', 0)} calls in flight")  # fmt: skip
    metrics_ms, readyz_ms = median_ms(f"{pair.service}/metrics"), median_ms(f"{pair.service}/readyz")
    say(f"  /metrics median {metrics_ms:.2f} ms, /readyz median {readyz_ms:.2f} ms")
    result = Measurement(
        accounts=accounts, lifetime=lifetime, port_s=pair.port_s, ready_s=ready_s, rss_mb=rss,
        peak_in_flight=int(at_ready.get("peakInFlight", 0)), start_token=token_calls(at_ready) / accounts,
        start_ticket=ticket_calls(at_ready) / accounts, metrics_ms=metrics_ms, readyz_ms=readyz_ms,
    )  # fmt: skip
    if args.lifetimes > 0:
        # Before the load: wrk and the service take both cores, which would move refreshes around.
        observe(pair, args.lifetimes, ready_at)
        at_end = fetch_json(f"{pair.sandbox}/sandbox/stats")
        per = args.lifetimes * accounts
        result.life_token = (token_calls(at_end) - token_calls(at_ready)) / per
        result.life_ticket = (ticket_calls(at_end) - ticket_calls(at_ready)) / per
        result.busiest, result.average = spread(at_end, ready_at, time.time())
        result.peak_in_flight = int(at_end.get("peakInFlight", result.peak_in_flight))
        say(f"  per account per lifetime: {result.life_token:.2f} token, {result.life_ticket:.2f} ticket calls; "
            f"busiest second {result.busiest} tickets, average {result.average:.2f}/s; "
            f"RSS now {rss_mb(pair.process.pid):.1f} MB")  # fmt: skip
    result.rps, result.baseline_rps, result.ratio = throughput(pair, baseline, workdir, args.seconds, args.rounds)
    result.stall = scrape_stall(pair, workdir, args.seconds)
    return result


def refreshes_per_lifetime(lifetime: int) -> float:
    """What "one call per lifetime" comes to for a service that refreshes ahead of expiry: one call per
    lifetime less two refresh margins (a margin is the lesser of 300 s and a fifth of the lifetime)."""
    margin = min(300.0, lifetime / 5)
    return lifetime / (lifetime - 2 * margin)


def number(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def report(results: list[Measurement], concurrency: int) -> None:
    headers = ["N", "lifetime s", "port s", "ready s", "RSS MB", "peak", "start tok/tkt", "per-L tok/tkt",
               "busiest/avg tkt/s", "rand req/s", "N=1 req/s", "ratio", "/metrics ms", "/readyz ms"]  # fmt: skip
    rows = [
        [str(r.accounts), str(r.lifetime), f"{r.port_s:.2f}", f"{r.ready_s:.1f}", f"{r.rss_mb:.1f}",
         str(r.peak_in_flight), f"{r.start_token:.2f}/{r.start_ticket:.2f}",
         "-" if r.life_token is None else f"{r.life_token:.2f}/{number(r.life_ticket, '.2f')}",
         "-" if r.busiest is None else f"{r.busiest}/{number(r.average, '.2f')}",
         f"{r.rps:.0f}", f"{r.baseline_rps:.0f}", f"{r.ratio:.2f}", f"{r.metrics_ms:.2f}", f"{r.readyz_ms:.2f}"]
        for r in results
    ]  # fmt: skip
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    say("")
    for row in [headers, *rows]:
        say(" | ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
    say("tok/tkt: token and ticket calls per account, until ready (start) and per lifetime after it (per-L); "
        "peak: most upstream calls in flight at once")  # fmt: skip
    say("\ntargets:")
    for r in results:
        checks: list[tuple[str, bool]] = [(f"port answers in {r.port_s:.2f} s (< 2 s)", r.port_s < 2)]
        ready_target = {1000: 60.0, 10000: 600.0}.get(r.accounts)
        if ready_target is not None and concurrency == 16:
            checks.append((f"ready in {r.ready_s:.0f} s (< {ready_target:.0f} s)", r.ready_s < ready_target))
        rss_target = {1000: 100.0, 10000: 400.0}.get(r.accounts)
        if rss_target is not None:
            checks.append((f"RSS {r.rss_mb:.0f} MB (< {rss_target:.0f} MB)", r.rss_mb < rss_target))
        if r.life_token is not None and r.life_ticket is not None:
            bound = refreshes_per_lifetime(r.lifetime)
            checks.append((f"{r.life_token:.2f} token, {r.life_ticket:.2f} ticket calls per account per lifetime "
                           f"(one each per refresh period: <= {bound:.2f}, +10% for the window's edges)",
                           max(r.life_token, r.life_ticket) <= 1.1 * bound))  # fmt: skip
        if r.busiest is not None and r.average is not None and r.average >= 1:
            checks.append((f"busiest second {r.busiest / r.average:.2f}x the average refresh rate (<= 2x)",
                           r.busiest <= 2 * r.average))  # fmt: skip
        if r.accounts == 10000:
            checks.append((f"random-account throughput {r.ratio:.2f}x N=1 (>= 0.9x)", r.ratio >= 0.9))
        if r.stall is not None:
            checks.append((f"a /metrics scrape adds {r.stall[3] - r.stall[1]:.1f} ms to the slowest signature "
                           f"(p99 {r.stall[0]:.2f} -> {r.stall[2]:.2f} ms; a few ms at most)",
                           r.stall[3] - r.stall[1] <= 10))  # fmt: skip
        for text, ok in checks:
            say(f"  N={r.accounts:<5} {'ok    ' if ok else 'MISSED'} {text}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", default="1,1000,10000", help="comma-separated account counts")
    parser.add_argument(
        "--lifetime", type=int, help="sandbox expires_in, s (default 120 up to 1,000 accounts, else 900)"
    )
    parser.add_argument("--lifetimes", type=int, default=3, help="lifetimes to observe after ready (0: skip)")
    parser.add_argument("--concurrency", type=int, default=16, help="JSSDK_UPSTREAM_CONCURRENCY")
    parser.add_argument("--seconds", type=int, default=5, help="seconds per wrk round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--delay", type=float, default=DELAY, help="seconds every upstream call takes (default 0.3)")
    parser.add_argument(
        "--mixed", action="store_true", help="accounts of every kind in turn (official, WeCom, external)"
    )
    parser.add_argument("--ready-timeout", type=float, default=1800, help="give up waiting for /readyz after S")
    args = parser.parse_args()
    try:
        counts = [int(part) for part in args.accounts.split(",") if part.strip()]
    except ValueError:
        parser.error("--accounts takes comma-separated integers")
    if not counts or min(counts) < 1 or args.rounds < 1 or args.seconds < 1 or args.lifetimes < 0:
        parser.error("account counts, --rounds and --seconds must be positive, --lifetimes at least 0")
    if shutil.which("wrk") is None:
        print("bench needs wrk: apt-get install wrk", file=sys.stderr)
        return 2

    secret = secrets.token_hex(16)
    results: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="jssdk-bench-accounts-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        say("starting the N=1 baseline service (throughput reference)")
        try:
            baseline = start_pair(stack, workdir, 1, 7200, args.concurrency, secret)
            wait_ready(baseline, 120)
        except BenchError as error:
            print(f"baseline: {error}", file=sys.stderr)
            return 1
        failed = []
        for accounts in counts:
            lifetime = args.lifetime or (120 if accounts <= 1000 else 900)
            with ExitStack() as run:
                try:
                    results.append(measure(run, workdir, baseline, accounts, lifetime, args, secret))
                except BenchError as error:
                    say(f"  N={accounts} not measured: {error}")
                    failed.append(accounts)
    report(results, args.concurrency)
    if failed:
        say(f"\nnot measured: N={', '.join(map(str, failed))}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
