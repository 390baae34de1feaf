"""Warm `/v1/signature` throughput and latency against a baseline, in one run.

    python bench/bench_signature.py [--against bare|redis] [--rounds 3] [--seconds 5] [--connections 32]

`--against bare` (the default) compares the service with a bare aiohttp JSON handler;
`--against redis` compares the service on `memory://` with the service on `redis://` (a
redis-server started on a free port), which shows what the shared cache costs a warm signature.

Both servers run as separate single processes on loopback; `wrk` (Debian package `wrk`) loads them
with one thread, alternating bare, service, bare, service ... so both see the same machine noise.
The bare handler is the plain aiohttp way: `web.json_response` of a dict of the same shape, on the
default asyncio loop, access log off (as the service's). The report gives the median of the rounds
and the service/bare ratio of throughput.
"""

from __future__ import annotations

import argparse
import os
import re
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
from urllib.parse import quote
from urllib.request import urlopen

BARE_SERVER = """
import sys
from aiohttp import web

BODY = {"appId": "wxd0000000000000de", "timestamp": 1700000000, "nonceStr": "0123456789abcdef",
        "signature": "0f9de62fce790f9a083d5c99e95740ceb90c27ed",
        "jsApiList": ["updateAppMessageShareData", "updateTimelineShareData"]}

async def handler(request: web.Request) -> web.Response:
    return web.json_response(BODY)

app = web.Application()
app.router.add_get("/v1/signature", handler)
app.router.add_get("/readyz", handler)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""

PAGE = "https://example.com/product/42?from=timeline&utm_source=wechat"


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
def server(command: list[str], port: int, **env_overrides: str) -> Iterator[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JSSDK_")}
    env.update(JSSDK_LOG_LEVEL="WARNING", **env_overrides)
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urlopen(f"{base}/readyz", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"server did not start: {' '.join(command)}") from None
                time.sleep(0.1)
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)


def wrk(url: str, seconds: int, connections: int) -> Result:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", choices=("bare", "redis"), default="bare")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    needed = ["wrk"] + (["redis-server"] if args.against == "redis" else [])
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if missing:
        print(f"bench needs {' and '.join(missing)}: apt-get install {' '.join(missing)}", file=sys.stderr)
        return 2

    baseline_port, candidate_port = free_port(), free_port()
    service = [sys.executable, "-m", "jssdk_service", "serve", "--sandbox", "--port"]
    path = f"/v1/signature?url={quote(PAGE, safe='')}"
    with ExitStack() as stack:
        if args.against == "bare":
            bare_script = Path(tempfile.gettempdir()) / "jssdk_bench_bare.py"
            bare_script.write_text(BARE_SERVER)
            names = ("bare aiohttp", "jssdk-service")
            baseline = stack.enter_context(
                server([sys.executable, str(bare_script), str(baseline_port)], baseline_port)
            )
            candidate = stack.enter_context(server([*service, str(candidate_port)], candidate_port))
        else:
            names = ("memory://", "redis://")
            redis_url = stack.enter_context(redis_server())
            baseline = stack.enter_context(server([*service, str(baseline_port)], baseline_port))
            candidate = stack.enter_context(
                server([*service, str(candidate_port)], candidate_port, JSSDK_CACHE_URL=redis_url)
            )
        targets = dict(zip(names, (baseline + path, candidate + path), strict=True))
        runs: dict[str, list[Result]] = {name: [] for name in names}
        for url in targets.values():
            wrk(url, 1, args.connections)  # warm-up
        for round_no in range(1, args.rounds + 1):
            for name, url in targets.items():
                result = wrk(url, args.seconds, args.connections)
                runs[name].append(result)
                print(f"round {round_no} {name:14} {result.rps:9.0f} req/s  p50 {result.p50_ms:6.2f} ms  "
                      f"p99 {result.p99_ms:6.2f} ms", flush=True)  # fmt: skip
    medians = {name: summary(results) for name, results in runs.items()}
    print()
    for name, res in medians.items():
        print(f"median {name:14} {res.rps:9.0f} req/s  p50 {res.p50_ms:6.2f} ms  p99 {res.p99_ms:6.2f} ms")
    print(f"ratio {names[1]} / {names[0]} throughput: {medians[names[1]].rps / medians[names[0]].rps:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
