"""Warm `/v1/signature` throughput and latency against a baseline, in one run.

    python bench/bench_signature.py [--against bare|redis|node] [--rounds 5] [--seconds 5] [--connections 32]

`--against bare` (the default) compares the service with a bare aiohttp JSON handler;
`--against redis` compares the service on `memory://` with the service on `redis://` (a
redis-server started on a free port), which shows what the shared cache costs a warm signature;
`--against node` compares the service with the Node peer (wechat-jssdk 5.1.0 behind node's `http`,
bench/node-peer/, `npm ci` there first) and with the bare handler on uvloop, three processes.
`--distinct` appends a counter to the page URL of every request, so that no server can answer
from a signature (or a parsed URL) it made before. The
Node peer gets its token and ticket from a sandbox started as its own process (the demo appId, a
secret made for the run); its warm signature is checked with the sandbox's `POST /sandbox/verify`
before anything is measured. wechat-jssdk keeps one signature per page URL for 1 h 59 min, so its
warm answer is a lookup; `--node-fresh` makes it sign every request anew, as the service does.

Every server runs as a separate single process on loopback; `wrk` (Debian package `wrk`) loads
them with one thread, one after the other in each round (the starting one rotating from round to
round) so all see the same machine noise. The bare handler is the plain aiohttp way:
`web.json_response` of a dict of the same shape, on the default asyncio loop (on uvloop against
node), access log off (as the service's). The report gives each round, the medians of the rounds
and, for each pair compared, the median of the rounds' ratios of throughput (and of p99 against
node).
"""

from __future__ import annotations

import argparse
import json
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
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote
from urllib.request import Request, urlopen

from bench_accounts import SANDBOX_SERVER, SECRET_ENV

from jssdk_service.sandbox import DEMO_APP_ID

BARE_SERVER = """
import asyncio
import sys
from aiohttp import web

BODY = {"appId": "wxd0000000000000de", "timestamp": 1700000000, "nonceStr": "0123456789abcdef",
        "signature": "0f9de62fce790f9a083d5c99e95740ceb90c27ed",
        "jsApiList": ["updateAppMessageShareData", "updateTimelineShareData"]}

async def handler(request: web.Request) -> web.Response:
    return web.json_response(BODY)

async def loop_name(request: web.Request) -> web.Response:
    return web.json_response({"loop": type(asyncio.get_running_loop()).__module__})

app = web.Application()
app.router.add_get("/v1/signature", handler)
app.router.add_get("/readyz", handler)
app.router.add_get("/loop", loop_name)
loop = None
if sys.argv[2:] == ["uvloop"]:
    import uvloop
    loop = uvloop.new_event_loop()
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, loop=loop)
"""

PAGE = "https://example.com/product/42?from=timeline&utm_source=wechat"
NODE_PEER = Path(__file__).resolve().parent / "node-peer"
SIGNATURE = re.compile(r"[0-9a-f]{40}")


@dataclass
class Running:
    """A server process that answers: its base URL and its pid."""

    base: str
    pid: int


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def server(command: list[str], port: int, ready: str = "/readyz", **env_overrides: str) -> Iterator[Running]:
    """Start `command`, wait until `ready` answers 200 on `port`, yield it, then stop it with SIGTERM."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JSSDK_")}
    env.update(JSSDK_LOG_LEVEL="WARNING", **env_overrides)
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed below, after the process)
    process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urlopen(f"{base}{ready}", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    output = log.read().decode(errors="replace")[-2000:]
                    raise SystemExit(f"server did not start: {' '.join(command)}\n{output}") from None
                time.sleep(0.1)
        yield Running(base=base, pid=process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
        log.close()


def wrk(url: str, seconds: int, connections: int, script: str | None = None) -> Result:
    options = ["-s", script] if script else []
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", *options, url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    if re.search(r"Non-2xx or 3xx responses", out):
        raise SystemExit(f"{url} answered errors under load:\n{out}")
    return Result(rps=rps, p50_ms=_percentile(out, "50"), p99_ms=_percentile(out, "99"))


def _percentile(out: str, pct: str) -> float:
    value, unit = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def summary(results: list[Result]) -> Result:
    return Result(
        rps=statistics.median(r.rps for r in results),
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=statistics.median(r.p99_ms for r in results),
    )


def get_json(url: str, body: dict[str, Any] | None = None) -> Any:
    """The JSON answer to a GET of `url`, or to a POST of `body` as JSON."""
    data = None if body is None else json.dumps(body).encode()
    request = Request(url, data=data, headers={"Content-Type": "application/json"})
    with urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def signed_config(url: str) -> dict[str, Any]:
    """The wx.config object `url` answers, refused unless it carries a 40-hex SHA-1 signature."""
    config = get_json(url)
    if not isinstance(config, dict) or not SIGNATURE.fullmatch(str(config.get("signature", ""))):
        raise SystemExit(f"{url} did not answer a signature: {config!r}")
    return config


@contextmanager
def redis_server() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


def bare_server(stack: ExitStack, *, uvloop: bool = False) -> str:
    script = Path(tempfile.gettempdir()) / "jssdk_bench_bare.py"
    script.write_text(BARE_SERVER)
    port = free_port()
    command = [sys.executable, str(script), str(port), *(["uvloop"] if uvloop else [])]
    base = stack.enter_context(server(command, port)).base
    loop = get_json(f"{base}/loop")["loop"]
    if loop != ("uvloop" if uvloop else "asyncio.unix_events"):
        raise SystemExit(f"the bare handler runs on {loop}")
    return base


def service_server(stack: ExitStack, **env_overrides: str) -> str:
    port = free_port()
    command = [sys.executable, "-m", "jssdk_service", "serve", "--sandbox", "--port", str(port)]
    return stack.enter_context(server(command, port, **env_overrides)).base


def node_peer(stack: ExitStack, path: str, *, fresh: bool = False) -> str:
    """A sandbox with the demo account, and the Node peer against it; returns the peer's base URL
    once its warm signature has passed the sandbox's check. `fresh`: a new signature per request."""
    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="jssdk-bench-node-")))
    ids, secret = workdir / "app-ids", secrets.token_hex(16)
    ids.write_text(DEMO_APP_ID)
    sandbox_port, peer_port = free_port(), free_port()
    sandbox_command = [sys.executable, "-c", SANDBOX_SERVER, str(ids), SECRET_ENV, str(sandbox_port), "7200", "0"]
    sandbox = stack.enter_context(server(sandbox_command, sandbox_port, "/sandbox/stats", **{SECRET_ENV: secret})).base
    peer = stack.enter_context(server(
        ["node", str(NODE_PEER / "server.js")], peer_port,
        NODE_PEER_PORT=str(peer_port), NODE_PEER_WECHAT_BASE=sandbox, NODE_PEER_STORE_DIR=str(workdir),
        NODE_PEER_APP_ID=DEMO_APP_ID, NODE_PEER_APP_SECRET=secret, NODE_PEER_FRESH="1" if fresh else "0",
    )).base  # fmt: skip
    config = signed_config(peer + path)
    verdict = get_json(f"{sandbox}/sandbox/verify", {"appId": DEMO_APP_ID, "url": PAGE, **config})
    if config.get("url") != PAGE or verdict.get("errMsg") != "config:ok":
        raise SystemExit(f"the Node peer's signature does not verify: {config!r} -> {verdict!r}")
    print(f"node peer: signature verified by the sandbox ({config['signature']})", flush=True)
    return peer


def start(args: argparse.Namespace, stack: ExitStack, path: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """The servers to load (name -> base URL) and the pairs (numerator, denominator) to compare."""
    if args.against == "bare":
        bases = {"bare aiohttp": bare_server(stack), "jssdk-service": service_server(stack)}
        return bases, [("jssdk-service", "bare aiohttp")]
    if args.against == "redis":
        redis_url = stack.enter_context(redis_server())
        bases = {"memory://": service_server(stack), "redis://": service_server(stack, JSSDK_CACHE_URL=redis_url)}
        return bases, [("redis://", "memory://")]
    bases = {"jssdk-service": service_server(stack), "bare uvloop": bare_server(stack, uvloop=True),
             "node": node_peer(stack, path, fresh=args.node_fresh)}  # fmt: skip
    return bases, [("jssdk-service", "node"), ("bare uvloop", "node"), ("jssdk-service", "bare uvloop")]


@contextmanager
def distinct_pages(path: str) -> Iterator[str]:
    """A wrk script asking for `path` with a counter appended to its page URL: no two requests alike."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(f'n = 0\nrequest = function()\n  n = n + 1\n  return wrk.format("GET", "{path}" .. n)\nend\n')
        script.flush()
        yield script.name


def line(label: str, name: str, result: Result) -> str:
    return f"{label} {name:14} {result.rps:9.0f} req/s  p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", choices=("bare", "redis", "node"), default="bare")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--node-fresh", action="store_true", help="the Node peer signs every request afresh")
    parser.add_argument("--distinct", action="store_true", help="every request a new page URL: nothing to reuse")
    args = parser.parse_args()
    needed = ["wrk", *{"redis": ["redis-server"], "node": ["node"]}.get(args.against, [])]
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if missing:
        print(f"bench needs {' and '.join(missing)}: apt-get install {' '.join(missing)}", file=sys.stderr)
        return 2
    if args.against == "node" and not (NODE_PEER / "node_modules" / "wechat-jssdk").is_dir():
        print(f"the Node peer is not installed: cd {NODE_PEER} && npm ci", file=sys.stderr)
        return 2

    path = f"/v1/signature?url={quote(PAGE, safe='')}"
    with ExitStack() as stack:
        bases, pairs = start(args, stack, path)
        targets = {name: base + path for name, base in bases.items()}
        for url in targets.values():
            signed_config(url)
            wrk(url, 1, args.connections)  # warm-up
        script = stack.enter_context(distinct_pages(path)) if args.distinct else None
        runs: dict[str, list[Result]] = {name: [] for name in targets}
        names = list(targets)
        for round_no in range(1, args.rounds + 1):
            shift = (round_no - 1) % len(names)
            for name in names[shift:] + names[:shift]:
                runs[name].append(wrk(targets[name], args.seconds, args.connections, script))
                print(line(f"round {round_no}", name, runs[name][-1]), flush=True)
    print()
    for name, results in runs.items():
        print(line("median", name, summary(results)))
    for top, bottom in pairs:
        rps = statistics.median(a.rps / b.rps for a, b in zip(runs[top], runs[bottom], strict=True))
        p99 = statistics.median(a.p99_ms / b.p99_ms for a, b in zip(runs[top], runs[bottom], strict=True))
        print(f"ratio {top} / {bottom}: throughput {rps:.2f}, p99 {p99:.2f} (median of the rounds' ratios)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
