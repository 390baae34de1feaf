"""Where a warm `/v1/signature` spends its time: py-spy and cProfile of `serve --sandbox` under wrk.

    python bench/profile_signature.py [--seconds 20] [--out /tmp/profile-before] [--rate 200]
                                      [--nonblocking] [--connections 32] [--skip pyspy|cprofile]

Two runs, one after the other, each against a fresh `jssdk-service serve --sandbox` process loaded
by one-thread `wrk` (32 connections) on the URL shape of bench_signature.py:
- py-spy (`py-spy record --format raw`, sampling for all but the first and last second of the load):
  Python frames only, so the C a function calls (orjson, hashlib, multidict, the transport) counts
  as that function's own time;
- cProfile (`python -m cProfile -o ... -m jssdk_service serve --sandbox`, stopped with SIGTERM after
  the load): exact call counts, built-ins listed apart, but every Python call pays the profiler's
  overhead, so Python-heavy code looks dearer than it is; the throughput wrk saw is in the report.
Each writes its raw output and a report to `--out`: the top functions by self and by inclusive time
and the same grouped (aiohttp parsing / routing / request / response, our endpoint wrapper, our
handler, page URL, signing, request id, metrics, asyncio/uvloop, ...). In the cProfile report a
built-in's time goes to the group of its caller unless a group names it (orjson, hashlib, multidict,
the request id's counter and context variable, the metrics' bisect), and functions called less than
once per 10 requests (start-up, background refreshes) are left out. Run by hand, never in CI.
"""

from __future__ import annotations

import argparse
import io
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote

from bench_signature import PAGE, free_port, server, signed_config, wrk

Frame = tuple[str, str]
"""(file, function) of a profiled function, line numbers dropped."""

_ENDPOINT = frozenset({"endpoint", "_endpoint.<locals>.endpoint", "json_response"})
_AIOHTTP_PROTOCOL = ("web_protocol", "http_parser", "_http_parser", "base_protocol", "streams", "tcp_helpers")
# First match wins: (group, file fragments, functions or None for any function in those files).
GROUPS: list[tuple[str, tuple[str, ...], frozenset[str] | None]] = [
    ("socket writes (the transport's write, in C)", ("'write' of 'uvloop", "'writelines' of 'uvloop"), None),
    # Before #10 the wrapper and the handlers were in app.py; now in endpoint.py and public.py.
    ("ours: endpoint wrapper (_endpoint)", ("jssdk_service/app.py", "jssdk_service/endpoint.py"), _ENDPOINT),
    (
        "ours: handler (signature, _resolve, _ticket, signed_config)",
        ("jssdk_service/app.py", "jssdk_service/public.py"),
        None,
    ),
    ("ours: fast lane (fastlane.py)", ("jssdk_service/fastlane.py",), None),
    ("ours: page URL (pageurl.py)", ("jssdk_service/pageurl.py",), None),
    ("ours: sign_url + nonces (signing.py)", ("jssdk_service/signing.py",), None),
    ("ours: request id (logs.py)", ("jssdk_service/logs.py", "'__next__' of 'map'", "_contextvars"), None),
    ("ours: metrics (metrics.py)", ("jssdk_service/metrics.py", "_bisect"), None),
    ("ours: credentials (credentials.py, tokens.py)", ("jssdk_service/credentials", "jssdk_service/tokens"), None),
    ("ours: settings (config.py)", ("jssdk_service/config.py",), None),
    ("ours: other", ("jssdk_service/",), None),
    ("orjson", ("orjson",), None),
    ("hashlib (sha1)", ("_hashlib", "sha1", "hexdigest"), None),
    ("aiohttp: HTTP parsing, protocol", tuple(f"aiohttp/{name}." for name in _AIOHTTP_PROTOCOL), None),
    ("aiohttp: routing, app", ("aiohttp/web_app.py", "aiohttp/web_urldispatcher.py"), None),
    ("aiohttp: request object", ("aiohttp/web_request.py",), None),
    ("aiohttp: response, writer", ("aiohttp/web_response.py", "aiohttp/http_writer.py"), None),
    ("aiohttp: other", ("aiohttp/",), None),
    ("multidict, yarl", ("multidict", "yarl"), None),
    ("asyncio, uvloop", ("asyncio/", "uvloop", "_asyncio", "runpy"), None),
]
OTHER = "other (stdlib, builtins)"
TOP = 40


def group_of(frame: Frame) -> str:
    file, function = frame
    for name, fragments, functions in GROUPS:
        in_files = any(f in file or (file == "~" and f in function) for f in fragments)
        if in_files and (functions is None or function in functions):
            return name
    return OTHER


def table(title: str, rows: Iterable[tuple[str, float, float | None]], total: float, unit: str) -> str:
    """Rows of (name, self, inclusive or None) as a text table with shares of `total`."""
    lines = [title, f"{'self ' + unit:>12} {'self %':>7} {'incl ' + unit:>12} {'incl %':>7}  name"]
    for name, own, inclusive in rows:
        incl = "" if inclusive is None else f"{inclusive:12.3f} {100 * inclusive / total:6.1f}%"
        lines.append(f"{own:12.3f} {100 * own / total:6.1f}% {incl:21}  {name}")
    return "\n".join(lines)


def ranked(
    own: Counter[str], inclusive: Counter[str], key: Counter[str], limit: int = TOP
) -> list[tuple[str, float, float | None]]:
    return [(name, float(own[name]), float(inclusive[name])) for name, _ in key.most_common(limit)]


# -- py-spy ----------------------------------------------------------------------------------

_PYSPY_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*?)(?::\d+)?\)$")


def pyspy_frames(stack: str) -> list[Frame]:
    frames = []
    for text in stack.split(";"):
        match = _PYSPY_FRAME.match(text)
        frames.append((match["file"], match["function"]) if match else ("?", text))
    return frames


def pyspy_report(raw: str) -> str:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    group_own: Counter[str] = Counter()
    group_inclusive: Counter[str] = Counter()
    our_lines: Counter[str] = Counter()
    for row in raw.splitlines():
        stack, _, count_text = row.rpartition(" ")
        if not stack:
            continue
        count, frames = int(count_text), pyspy_frames(stack)
        names = [f"{function} ({file})" for file, function in frames]
        own[names[-1]] += count
        leaf = stack.rpartition(";")[2]
        if "jssdk_service/" in leaf:
            our_lines[leaf] += count
        group_own[group_of(frames[-1])] += count
        for name in set(names):
            inclusive[name] += count
        for group in {group_of(frame) for frame in frames}:
            group_inclusive[group] += count
    total = sum(own.values())
    return "\n\n".join([
        f"py-spy: {total} samples (Python frames; a function's C callees count as its own time)",
        table("by group (self = the sampled frame's group; incl = any frame of the group on the stack)",
              ranked(group_own, group_inclusive, group_own), total, "samples"),
        table(f"top {TOP} by self", ranked(own, inclusive, own), total, "samples"),
        table(f"top {TOP} by inclusive", ranked(own, inclusive, inclusive), total, "samples"),
        table("our lines by self (the line running, its C callees included)",
              [(name, float(n), None) for name, n in our_lines.most_common(TOP)], total, "samples"),
    ])  # fmt: skip


# -- cProfile --------------------------------------------------------------------------------

StatKey = tuple[str, int, str]
StatRow = tuple[int, int, float, float, dict[StatKey, tuple[int, int, float, float]]]
"""pstats' (primitive calls, calls, self time, inclusive time, {caller: the same from that caller})"""


def hot(key: StatKey, row: StatRow, requests: int) -> bool:
    """Called at least once per 10 requests, or the event loop itself: not start-up, not background."""
    return row[0] * 10 >= requests or (key[0].endswith("asyncio/runners.py") and key[2] == "run")


def cprofile_report(path: Path, requests: int) -> str:
    entries: dict[StatKey, StatRow] = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    group_own: defaultdict[str, float] = defaultdict(float)
    left_out = 0.0
    for key, row in entries.items():
        tottime, callers = row[2], row[4]
        if not hot(key, row, requests):
            left_out += tottime
            continue
        group = group_of((key[0], key[2]))
        if key[0] != "~" or group != OTHER or not callers:
            group_own[group] += tottime
            continue
        called = sum(c[2] for c in callers.values()) or 1.0
        for caller, from_caller in callers.items():
            group_own[group_of((caller[0], caller[2]))] += tottime * from_caller[2] / called
    total = sum(group_own.values())
    out = io.StringIO()
    listing = pstats.Stats(str(path), stream=out)
    listing.sort_stats("tottime").print_stats(TOP)
    listing.sort_stats("cumulative").print_stats(TOP)
    rows = sorted(((name, seconds, None) for name, seconds in group_own.items()), key=lambda r: -r[1])
    return "\n\n".join([
        f"cProfile: {total:.2f} s of profiled time on the request path ({requests} requests); {left_out:.2f} s "
        "of start-up and background work (functions called less than once per 10 requests) left out",
        table("by group (self time; a built-in no group names goes to its caller's group)", rows, total, "s"),
        out.getvalue(),
    ])  # fmt: skip


# -- the runs --------------------------------------------------------------------------------


def load(url: str, seconds: int, connections: int, out: Path, name: str) -> subprocess.Popen[str]:
    """wrk in the background; its output goes to `out/name`."""
    handle = (out / name).open("w")
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, text=True)


def throughput(out: Path, name: str) -> tuple[str, int]:
    """wrk's summary line of the run written to `out/name`, and its number of requests."""
    text = (out / name).read_text()
    rps, requests = re.search(r"Requests/sec:\s+([\d.]+)", text), re.search(r"(\d+) requests in", text)
    line = f"{name}: {rps.group(1) if rps else '?'} req/s under the profiler"
    return line, int(requests.group(1)) if requests else 0


def pyspy_run(args: argparse.Namespace, out: Path, path: str) -> str:
    port = free_port()
    command = [sys.executable, "-m", "jssdk_service", "serve", "--sandbox", "--port", str(port)]
    with server(command, port) as running:
        url = running.base + path
        signed_config(url)
        wrk(url, 1, args.connections)  # warm-up
        loader = load(url, args.seconds, args.connections, out, "wrk-pyspy.txt")
        time.sleep(1)
        sampler = [shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy")), "record", "--format", "raw",
                   "-o", str(out / "pyspy.raw"), "--pid", str(running.pid), "--duration", str(max(1, args.seconds - 2)),
                   "--rate", str(args.rate), *(["--nonblocking"] if args.nonblocking else [])]  # fmt: skip
        subprocess.run(sampler, check=True, stdout=subprocess.DEVNULL)
        loader.wait()
    report = throughput(out, "wrk-pyspy.txt")[0] + "\n" + pyspy_report((out / "pyspy.raw").read_text())
    (out / "pyspy-report.txt").write_text(report)
    return report


def cprofile_run(args: argparse.Namespace, out: Path, path: str) -> str:
    port, prof = free_port(), out / "cprofile.prof"
    command = [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "jssdk_service", "serve", "--sandbox",
               "--port", str(port)]  # fmt: skip
    with server(command, port, JSSDK_DRAIN_SECONDS="0") as running:
        url = running.base + path
        signed_config(url)
        load(url, args.seconds, args.connections, out, "wrk-cprofile.txt").wait()
    deadline = time.monotonic() + 30
    while not prof.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    line, requests = throughput(out, "wrk-cprofile.txt")
    report = line + "\n" + cprofile_report(prof, requests)
    (out / "cprofile-report.txt").write_text(report)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "profile-before")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--nonblocking", action="store_true", help="py-spy samples without pausing the process")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--skip", choices=("pyspy", "cprofile"))
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("the profile needs wrk: apt-get install wrk", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    path = f"/v1/signature?url={quote(PAGE, safe='')}"
    if args.skip != "pyspy":
        print(pyspy_run(args, args.out, path), flush=True)
    if args.skip != "cprofile":
        print(cprofile_run(args, args.out, path), flush=True)
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
