"""Many accounts: start-up, memory, upstream calls and random-account throughput at N accounts.

    python bench/bench_accounts.py [--accounts 1,1000,10000] [--lifetime L] [--lifetimes 3]
                                   [--concurrency 16] [--seconds 5] [--rounds 3]
                                   [--mixed | --platform [--authorizers-from redis|admin]]

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
- warm `/v1/signature` throughput for a random account and a random one of 10,000 pages per request
  (`wrk`, one thread, 32 connections, a Lua script picking them) relative to a separately running
  N = 1 service asked for the same pages,
  alternating the two round by round;
- the median latency of 20 GETs of `/metrics` and of `/readyz`.
With `--mixed` the N accounts are of every kind in turn: an official account with its AppSecret, a
WeCom app (ten apps a corp; a corp ticket and an agent ticket each), and an official account whose
token the sandbox's central token server owns (read over HTTP with a bearer). Token calls then count
gettoken and the central server's reads too, and ticket calls WeCom's two ticket APIs.
With `--platform` the N accounts are the authorizers of one third-party platform (the config has the
`[[platforms]]` table and no account): the sandbox grants each one a refresh token (no push), and
the service finds them where a restart finds them, in the shared cache's table of authorizers (a
fresh redis-server, prefilled with HSET, and `JSSDK_CACHE_URL` pointing at it), or, without
redis-server or with `--authorizers-from admin`, each added through `POST /admin/platforms/{c}/authorizers`
once it listens. Once the port answers, the sandbox pushes a component_verify_ticket to
`/v1/platform/{c}/events`; the service can fetch nothing before that. Token calls are then the
authorizers' (`api_authorizer_token`); the platform's own (`api_component_token`, one for all of
them) are counted apart, in total. The N = 1 reference stays a configured official account.
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
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import redis

DELAY = 0.3
"""Seconds every upstream call takes in the sandbox."""
SECRET_ENV = "BENCH_APP_SECRET"  # noqa: S105 (the name of the variable, not a secret)
CONNECTIONS = 32
LATENCY_SAMPLES = 20
ROOT = Path(__file__).resolve().parent.parent
COMPONENT_APPID = "wx" + hashlib.sha256(b"bench-platform").hexdigest()[:16]
PLATFORM_TOKEN_ENV = "BENCH_PLATFORM_TOKEN"  # noqa: S105 (names of variables, not secrets)
PLATFORM_AES_KEY_ENV = "BENCH_PLATFORM_AES_KEY"
ADMIN_TOKEN_ENV = "JSSDK_ADMIN_TOKEN"  # noqa: S105
# The service's table of a platform's authorizers in Redis: cache.NAMESPACE, then component.py's key.
AUTHORIZERS_KEY = f"jssdk:component:{COMPONENT_APPID}:authorizers"
HSET_BATCH = 1000
ADMIN_ADDERS = 32
"""Admin requests in flight at once while authorizers are added (twice the default upstream concurrency)."""
VIA = {"redis": "loaded from a prefilled Redis hash at start-up", "admin": "added through the admin API"}
"""How a platform's authorizers reach the service."""

SANDBOX_SERVER = """
import asyncio
import os
import sys

from jssdk_service.sandbox import SandboxAccount, SandboxServer, WeChatSandbox
from jssdk_service.sandbox_central import CentralTokenServer
from jssdk_service.sandbox_platform import SandboxPlatform
from jssdk_service.sandbox_wecom import SandboxWeComApp


async def main() -> None:
    ids_path, secret_env, port, lifetime, delay = sys.argv[1:6]
    secret = os.environ[secret_env]
    with open(ids_path) as handle:
        rows = [line.split() for line in handle if line.strip()]
    official = [row[1] for row in rows if row[0] in ("official", "external")]
    wecom = [SandboxWeComApp(corp_id=row[1], agent_id=row[2], secret=secret) for row in rows if row[0] == "wecom"]
    # platform <component_appid> <token variable> <EncodingAESKey variable> <callback URL> <refresh tokens file>
    listed = [row for row in rows if row[0] == "platform"]
    platforms = [SandboxPlatform(component_appid=row[1], secret=secret, token=os.environ[row[2]],
                                 aes_key=os.environ[row[3]], callback_url=row[4]) for row in listed]
    sandbox = WeChatSandbox([SandboxAccount(app_id=app_id, secret=secret) for app_id in official], wecom_apps=wecom,
                            platforms=platforms, token_expires_in=int(lifetime), ticket_expires_in=int(lifetime))
    sandbox.faults.delay = float(delay)
    # authorizer <component_appid> <appid>: authorized with no push; "<appid> <refresh token>" lines for the bench.
    for platform in listed:
        with open(platform[5], "w") as out:
            for row in rows:
                if row[0] == "authorizer" and row[1] == platform[1]:
                    out.write(f"{row[2]} {sandbox.grant(row[1], row[2])}\\n")
    owned = [row[1] for row in rows if row[0] == "external"]
    central = CentralTokenServer(sandbox, owned, bearer=secret) if owned else None
    await SandboxServer(sandbox, central=central, port=int(port)).start()
    await asyncio.Event().wait()


asyncio.run(main())
"""

# Each request names a random page of PAGES (`?v=`), for every N alike: the N = 1 service sees as many
# distinct request targets as the N-account one, so the ratio is what the accounts cost, not what the
# fast lane's cache of recent targets saves one of them.
PAGES = 10_000
WRK_SCRIPT = """
local count = {count}
local pages = {pages}
local prefix = "/v1/signature?url=https%3A%2F%2Fexample.com%2Fp%3Fv%3D"
math.randomseed(os.time())
request = function()
  return wrk.format("GET", prefix .. math.random(0, pages - 1) .. "&app=a" .. math.random(0, count - 1))
end
"""

# An authorizer is named by its appId: the script holds them all.
WRK_AUTHORIZERS_SCRIPT = """
local apps = {apps}
local pages = {pages}
local prefix = "/v1/signature?url=https%3A%2F%2Fexample.com%2Fp%3Fv%3D"
math.randomseed(os.time())
request = function()
  return wrk.format("GET", prefix .. math.random(0, pages - 1) .. "&app=" .. apps[math.random(1, #apps)])
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
    via: str | None = None
    """how a platform's authorizers reach the service ("redis" or "admin"); None: configured accounts"""
    authorizers: dict[str, str] = field(default_factory=dict)
    """the platform's authorizers: appId -> refresh token"""
    admin_token: str = field(default="", repr=False)

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
    via: str | None = None
    """a platform's authorizers: how they reached the service ("redis" or "admin")"""
    component_start: int | None = None
    component_life: float | None = None
    """the platform's api_component_token calls (one for all its authorizers): until ready, and per lifetime"""
    kb_per_account: float | None = None
    """RSS over the N = 1 service's, per account (KiB)"""
    lifetimes: int = 0
    """how many lifetimes were observed after ready"""


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


def authorizer_id(index: int) -> str:
    """A distinct, stable appId for the platform's authorizer `index`."""
    return "wx" + hashlib.sha256(f"bench-authorizer-{index}".encode()).hexdigest()[:16]


def write_platform_config(path: Path, ids: Path, authorizers: list[str], *, callback_url: str, grants: Path) -> None:
    """The service's TOML (one `[[platforms]]`, no account) and the sandbox's list: the platform, where it
    pushes, where it writes the refresh tokens it grants, and its authorizers."""
    path.write_text("\n".join([
        "[[platforms]]", f'component_appid = "{COMPONENT_APPID}"', 'name = "bench-platform"',
        f'secret_env = "{SECRET_ENV}"', f'token_env = "{PLATFORM_TOKEN_ENV}"',
        f'aes_key_env = "{PLATFORM_AES_KEY_ENV}"', 'web_domains = ["example.com"]', "",
    ]))  # fmt: skip
    rows = [f"platform {COMPONENT_APPID} {PLATFORM_TOKEN_ENV} {PLATFORM_AES_KEY_ENV} {callback_url} {grants}"]
    rows += [f"authorizer {COMPONENT_APPID} {appid}" for appid in authorizers]
    ids.write_text("\n".join(rows))


def aes_key() -> str:
    """An EncodingAESKey: 43 letters and digits."""
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(43))


def fetch(
    url: str, timeout: float = 30.0, *, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """Status and body of a GET (a POST of `data` when given); connection errors raise OSError."""
    try:
        with urlopen(Request(url, data=data, headers=headers or {}), timeout=timeout) as response:
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


@contextmanager
def redis_server(workdir: Path, tag: str) -> Iterator[str]:
    """A fresh redis-server on a free loopback port, nothing saved; its URL once it answers PING."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    log_path = workdir / f"{tag}.redis.log"
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(workdir)]  # fmt: skip
    with log_path.open("w") as log, spawn(command, dict(os.environ), log) as process:
        deadline = time.monotonic() + 10
        with redis.Redis.from_url(url) as client:
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise BenchError(
                            f"redis-server did not answer (exit {process.poll()}):\n{tail(log_path)}"
                        ) from None
                    time.sleep(0.05)
        yield url


def read_grants(path: Path) -> dict[str, str]:
    """The refresh tokens the sandbox granted: appId -> refresh token."""
    lines = (line.partition(" ") for line in path.read_text().splitlines() if line.strip())
    return {appid: token for appid, _, token in lines}


def prefill_authorizers(url: str, grants: dict[str, str]) -> None:
    """The platform's table of authorizers as the service keeps it (as if added through the admin API)."""
    since = time.time()
    records = [(appid, json.dumps({"refresh_token": token, "since": since, "via": "admin"}))
               for appid, token in grants.items()]  # fmt: skip
    with redis.Redis.from_url(url) as client:
        for first in range(0, len(records), HSET_BATCH):
            client.hset(AUTHORIZERS_KEY, mapping=dict(records[first : first + HSET_BATCH]))
        held = client.hlen(AUTHORIZERS_KEY)
    if held != len(grants):
        raise BenchError(f"Redis holds {held} of {len(grants)} authorizers after HSET")


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
    *, mixed: bool = False, via: str | None = None,
) -> Pair:  # fmt: skip
    """Start the sandbox and the service for `accounts` accounts (with `via`, a platform's authorizers,
    loaded from Redis or to be added through the admin API); return once the service's port answers."""
    tag = f"n{accounts}-{len(list(workdir.iterdir()))}"
    config, ids = workdir / f"{tag}.toml", workdir / f"{tag}.ids"
    sandbox_port, service_port = free_port(), free_port()
    sandbox_base, service_base = f"http://127.0.0.1:{sandbox_port}", f"http://127.0.0.1:{service_port}"
    env = base_env(secret)
    grants = workdir / f"{tag}.grants"
    if via is None:
        write_config(config, ids, accounts, mixed=mixed, sandbox_base=sandbox_base)
    else:
        callback_url = f"{service_base}/v1/platform/{COMPONENT_APPID}/events"
        authorizers = [authorizer_id(i) for i in range(accounts)]
        write_platform_config(config, ids, authorizers, callback_url=callback_url, grants=grants)
        env.update({PLATFORM_TOKEN_ENV: secrets.token_hex(16), PLATFORM_AES_KEY_ENV: aes_key()})
    sandbox_log_path = workdir / f"{tag}.sandbox.log"
    sandbox_log = stack.enter_context(sandbox_log_path.open("w"))
    command = [sys.executable, "-c", SANDBOX_SERVER, str(ids), SECRET_ENV, str(sandbox_port), str(lifetime), str(delay)]
    sandbox = stack.enter_context(spawn(command, env, sandbox_log))
    wait_until_answers(f"{sandbox_base}/sandbox/stats", sandbox, sandbox_log_path, 60)
    granted = read_grants(grants) if via is not None else {}  # written before the sandbox answers
    admin_token = ""
    if via == "redis":
        redis_url = stack.enter_context(redis_server(workdir, tag))
        prefill_authorizers(redis_url, granted)
        env["JSSDK_CACHE_URL"] = redis_url
    elif via == "admin":
        admin_token = env[ADMIN_TOKEN_ENV] = secrets.token_hex(16)
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
                log=service_log_path, started=started, port_s=time.monotonic() - started, via=via,
                authorizers=granted, admin_token=admin_token)  # fmt: skip


def push_verify_ticket(pair: Pair) -> None:
    """Have the sandbox push a component_verify_ticket to the service, as WeChat does every 10 minutes."""
    url = f"{pair.sandbox}/sandbox/platform/{COMPONENT_APPID}/push-ticket"
    try:
        answer = json.loads(fetch(url, data=b"")[1])
    except (OSError, ValueError) as error:
        raise BenchError(f"{url}: {error}") from None
    if answer.get("status") != 200 or answer.get("body") != "success":
        raise BenchError(f"the service answered the verify ticket's push {answer}:\n{pair.log_tail()}")


def add_authorizers(pair: Pair) -> None:
    """Add every authorizer through the admin API (each add fetches its token from WeChat first)."""
    url = f"{pair.service}/admin/platforms/{COMPONENT_APPID}/authorizers"
    headers = {"Authorization": f"Bearer {pair.admin_token}", "Content-Type": "application/json"}

    def add(grant: tuple[str, str]) -> None:
        body = json.dumps({"appid": grant[0], "refresh_token": grant[1]}).encode()
        try:
            status, answer = fetch(url, 120, data=body, headers=headers)
        except OSError as error:
            raise BenchError(f"POST {url}: {error}") from None
        if status != 201:
            raise BenchError(f"POST {url} for {grant[0]}: {status} {answer[:300]!r}")

    with ThreadPoolExecutor(ADMIN_ADDERS) as adders:
        for _ in adders.map(add, pair.authorizers.items()):
            pass


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
            _, total = readiness(body, pair.accounts)
            if total != pair.accounts:  # every account the service holds is ready: are they all there?
                raise BenchError(f"/readyz says ready with {total} of {pair.accounts} held:\n{pair.log_tail()}")
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
    """Tokens fetched (stable_token, token, WeCom's gettoken, an authorizer's api_authorizer_token) or read
    from the central server."""
    return calls(stats, "stable_token", "token", "gettoken", "central", "api_authorizer_token")


def component_calls(stats: Any) -> int:
    """The platform's own token calls: one token for all its authorizers."""
    return calls(stats, "api_component_token")


def failures(stats: Any) -> str:
    """The calls the sandbox answered with an error, per API ("" when none was)."""
    failed = {api: int(n.get("failed", 0)) for api, n in stats.get("calls", {}).items() if n.get("failed")}
    return ", ".join(f"{n} {api}" for api, n in sorted(failed.items()))


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
    script = wrk_script(workdir, pair)
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


def wrk_script(workdir: Path, pair: Pair) -> Path:
    """A wrk script asking for a random one of the pair's accounts (or authorizers) per request."""
    if pair.authorizers:
        path = workdir / f"random-authorizers-{pair.accounts}.lua"
        apps = ", ".join(f'"{appid}"' for appid in pair.authorizers)
        path.write_text(WRK_AUTHORIZERS_SCRIPT.replace("{apps}", f"{{{apps}}}").replace("{pages}", str(PAGES)))
        return path
    path = workdir / f"random-{pair.accounts}.lua"
    path.write_text(WRK_SCRIPT.replace("{count}", str(pair.accounts)).replace("{pages}", str(PAGES)))
    return path


def throughput(pair: Pair, baseline: Pair, workdir: Path, seconds: int, rounds: int) -> tuple[float, float, float]:
    """Median req/s of `pair` and of the N = 1 `baseline`, alternating round by round, and the median of
    the rounds' ratios (each round's pair of runs saw the same machine)."""
    scripts = {pair.service: wrk_script(workdir, pair), baseline.service: wrk_script(workdir, baseline)}
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
        platform = "" if pair.via is None else f"{component_calls(stats)} component token, "
        say(f"  ... {time.time() - ready_at:5.0f} s after ready: {platform}{token_calls(stats)} token, "
            f"{ticket_calls(stats)} ticket calls so far; {stats.get('inFlight', 0)} in flight")  # fmt: skip


def measure(
    stack: ExitStack, workdir: Path, baseline: Pair, accounts: int, lifetime: int, args: argparse.Namespace,
    secret: str, via: str | None = None,
) -> Measurement:  # fmt: skip
    cold_start = 2 * accounts * args.delay / args.concurrency
    what = "account(s)" if via is None else f"authorizer(s) of one platform, {VIA[via]}"
    say(f"\n== {accounts} {what}: lifetime {lifetime} s, upstream concurrency {args.concurrency}, "
        f"{args.delay} s per upstream call (cold start >= {cold_start:.0f} s)")  # fmt: skip
    if lifetime < 1.5 * cold_start:
        say(f"  warning: a lifetime of {lifetime} s leaves little room for a {cold_start:.0f} s cold start")
    pair = start_pair(stack, workdir, accounts, lifetime, args.concurrency, secret, args.delay, mixed=args.mixed,
                      via=via)  # fmt: skip
    say(f"  port answered in {pair.port_s:.2f} s")
    if via is not None:
        # Nothing can be fetched before the first ticket: the component token needs it.
        push_verify_ticket(pair)
        say(f"  component_verify_ticket pushed and taken {time.monotonic() - pair.started:.2f} s after the start")
        if via == "admin":
            began = time.monotonic()
            add_authorizers(pair)
            say(f"  {accounts} authorizers added through the admin API in {time.monotonic() - began:.1f} s")
    ready_s = wait_ready(pair, args.ready_timeout)
    ready_at = time.time()
    at_ready = fetch_json(f"{pair.sandbox}/sandbox/stats")
    rss = rss_mb(pair.process.pid)
    platform = "" if via is None else f"{component_calls(at_ready)} component token, "
    say(f"  all {accounts} ready in {ready_s:.1f} s; RSS {rss:.1f} MB; {platform}{token_calls(at_ready)} token and "
        f"{ticket_calls(at_ready)} ticket calls; peak {at_ready.get('peakInFlight', 0)} calls in flight")  # fmt: skip
    if failed := failures(at_ready):
        say(f"  calls answered with an error so far: {failed}")
    reference = rss_mb(baseline.process.pid)
    kb_per_account = (rss - reference) * 1024 / accounts
    say(f"  RSS over the N=1 service's {reference:.1f} MB: {kb_per_account:.1f} KiB per account")
    metrics_ms, readyz_ms = median_ms(f"{pair.service}/metrics"), median_ms(f"{pair.service}/readyz")
    say(f"  /metrics median {metrics_ms:.2f} ms, /readyz median {readyz_ms:.2f} ms")
    result = Measurement(
        accounts=accounts, lifetime=lifetime, port_s=pair.port_s, ready_s=ready_s, rss_mb=rss,
        peak_in_flight=int(at_ready.get("peakInFlight", 0)), start_token=token_calls(at_ready) / accounts,
        start_ticket=ticket_calls(at_ready) / accounts, metrics_ms=metrics_ms, readyz_ms=readyz_ms, via=via,
        component_start=None if via is None else component_calls(at_ready), kb_per_account=kb_per_account,
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
        result.lifetimes = args.lifetimes
        platform = ""
        if via is not None:
            result.component_life = (component_calls(at_end) - component_calls(at_ready)) / args.lifetimes
            platform = f"platform: {result.component_life:.2f} component token calls per lifetime; "
        say(f"  {platform}per account per lifetime: {result.life_token:.2f} token, {result.life_ticket:.2f} ticket "
            f"calls; busiest second {result.busiest} tickets, average {result.average:.2f}/s; "
            f"RSS now {rss_mb(pair.process.pid):.1f} MB")  # fmt: skip
        if failed := failures(at_end):
            say(f"  calls answered with an error so far: {failed}")
    result.rps, result.baseline_rps, result.ratio = throughput(pair, baseline, workdir, args.seconds, args.rounds)
    result.stall = scrape_stall(pair, workdir, args.seconds)
    return result


def refreshes_per_lifetime(lifetime: int) -> float:
    """What "one call per lifetime" comes to for a service that refreshes ahead of expiry: one call per
    lifetime less two refresh margins (a margin is the lesser of 300 s and a fifth of the lifetime)."""
    margin = min(300.0, lifetime / 5)
    return lifetime / (lifetime - 2 * margin)


def component_renewals(lifetime: int, seconds: float) -> int:
    """The most renewals a token fetched at the start may have in `seconds`: the first one a third of a
    lifetime after it at the earliest (a cold token's window), the others a refresh period apart."""
    margin = min(300.0, lifetime / 5)
    first = lifetime / 3
    return 0 if seconds < first else 1 + int((seconds - first) // (lifetime - 2 * margin))


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
    platform = any(r.via is not None for r in results)
    if platform:
        headers += ["via", "comp tok start/per-L", "KiB/acct"]
        for row, r in zip(rows, results, strict=True):
            row += [r.via or "-", f"{number(r.component_start, 'd')}/{number(r.component_life, '.2f')}",
                    number(r.kb_per_account, ".1f")]  # fmt: skip
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    say("")
    for row in [headers, *rows]:
        say(" | ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
    say("tok/tkt: token and ticket calls per account, until ready (start) and per lifetime after it (per-L); "
        "peak: most upstream calls in flight at once")  # fmt: skip
    if platform:
        say("platform: N is its authorizers; tok is api_authorizer_token; comp tok: api_component_token calls, "
            "the platform's one token for all of them, in total until ready and per lifetime after it; "
            "KiB/acct: RSS over the N=1 service's, per authorizer")  # fmt: skip
    say("\ntargets:")
    for r in results:
        checks: list[tuple[str, bool]] = [(f"port answers in {r.port_s:.2f} s (< 2 s)", r.port_s < 2)]
        ready_target = {1000: 60.0, 10000: 600.0}.get(r.accounts)
        if ready_target is not None and concurrency == 16:
            checks.append((f"ready in {r.ready_s:.0f} s (< {ready_target:.0f} s)", r.ready_s < ready_target))
        rss_target = {1000: 100.0, 10000: 400.0}.get(r.accounts)
        if rss_target is not None:
            checks.append((f"RSS {r.rss_mb:.0f} MB (< {rss_target:.0f} MB)", r.rss_mb < rss_target))
        if r.component_start is not None:
            allowed = 1 + component_renewals(r.lifetime, r.ready_s)
            checks.append((f"{r.component_start} component token call(s) until ready (one for the whole platform, "
                           f"and one per refresh due in a {r.ready_s:.0f} s start-up: <= {allowed})",
                           r.component_start <= allowed))  # fmt: skip
        if r.component_life is not None and r.lifetimes:
            # One token, so whole calls: at most one per refresh period, the window's fraction of one rounded up.
            allowed = math.ceil(r.lifetimes * refreshes_per_lifetime(r.lifetime) - 0.01)
            made = round(r.component_life * r.lifetimes)
            checks.append((f"{made} component token call(s) in {r.lifetimes} lifetime(s) (one per refresh period: "
                           f"<= {allowed})", made <= allowed))  # fmt: skip
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
    parser.add_argument("--platform", action="store_true", help="the N accounts are one platform's authorizers")
    parser.add_argument(
        "--authorizers-from", choices=tuple(VIA),
        help="--platform: the authorizers prefilled in Redis (default when redis-server is installed) or added "
        "through the admin API",
    )  # fmt: skip
    parser.add_argument("--ready-timeout", type=float, default=1800, help="give up waiting for /readyz after S")
    args = parser.parse_args()
    try:
        counts = [int(part) for part in args.accounts.split(",") if part.strip()]
    except ValueError:
        parser.error("--accounts takes comma-separated integers")
    if not counts or min(counts) < 1 or args.rounds < 1 or args.seconds < 1 or args.lifetimes < 0:
        parser.error("account counts, --rounds and --seconds must be positive, --lifetimes at least 0")
    if args.platform and args.mixed:
        parser.error("--platform and --mixed are separate modes")
    if args.authorizers_from and not args.platform:
        parser.error("--authorizers-from goes with --platform")
    if shutil.which("wrk") is None:
        print("bench needs wrk: apt-get install wrk", file=sys.stderr)
        return 2
    via = None
    if args.platform:
        via = args.authorizers_from or ("redis" if shutil.which("redis-server") else "admin")
        if via == "redis" and shutil.which("redis-server") is None:
            print("--authorizers-from redis needs redis-server: apt-get install redis-server", file=sys.stderr)
            return 2
        found = "" if args.authorizers_from or via == "redis" else " (no redis-server: apt-get install redis-server)"
        say(f"platform mode: the authorizers are {VIA[via]}{found}")

    secret = secrets.token_hex(16)
    results: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="jssdk-bench-accounts-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        say("starting the N=1 baseline service (throughput reference)")
        try:
            baseline = start_pair(stack, workdir, 1, 7200, args.concurrency, secret)
            wait_ready(baseline, 120)
            say(f"  N=1 baseline ready; RSS {rss_mb(baseline.process.pid):.1f} MB")
        except BenchError as error:
            print(f"baseline: {error}", file=sys.stderr)
            return 1
        failed = []
        for accounts in counts:
            lifetime = args.lifetime or (120 if accounts <= 1000 else 900)
            with ExitStack() as run:
                try:
                    results.append(measure(run, workdir, baseline, accounts, lifetime, args, secret, via))
                except BenchError as error:
                    say(f"  N={accounts} not measured: {error}")
                    failed.append(accounts)
    report(results, args.concurrency)
    if failed:
        say(f"\nnot measured: N={', '.join(map(str, failed))}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
