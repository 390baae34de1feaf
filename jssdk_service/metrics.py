"""Prometheus metrics: the names operators alert on. Only this module defines metrics.

    jssdk_upstream_calls_total{app,api,outcome}      every HTTP call to WeChat; outcome is "ok", the
                                                     errcode, "http_<status>" or the exception name
    jssdk_credential_ttl_seconds{app,kind}           seconds until the token / ticket expires
    jssdk_http_requests_total{route,status}          requests answered
    jssdk_http_request_duration_seconds{route}       time from a request's handler start to its response
    jssdk_reports_total{app}                         wx.config failures reported by pages

`app` is the account's name (its appId unless configured); `route` is the registered path, never
the URL asked for ("unmatched" for everything that matched no route), so label sets stay few.

The two HTTP metrics are counted on the hot path, so they are plain numbers (`RouteStats`) turned
into samples only when /metrics is scraped: prometheus_client's locked values cost a warm
/v1/signature several percent of its throughput, a few additions do not. The other metrics are
prometheus_client's own.

With `serve --workers N` every process serves /metrics: `PROMETHEUS_MULTIPROC_DIR` is set before
the workers start (and so before prometheus_client is imported), each process keeps its samples in
files there (its HTTP numbers in `jssdk_http_<pid>.json`, rewritten every second), and
`exposition()` adds up every process's, including those of workers that have exited. Credential
lifetimes are read when /metrics is scraped, from the process that answers (the gauge's
"mostrecent" mode); NaN means that process holds no such credential (one that took the ticket from
the shared cache may never have needed a token).
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from jssdk_service.config import Account
from jssdk_service.credentials import AccountStatus
from jssdk_service.wechat import CallObserver

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
UNMATCHED_ROUTE = "unmatched"
# Read once, as prometheus_client does: the supervisor sets it before it spawns the workers.
MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
PUBLISH_EVERY = 1.0
# Warm signatures take well under a millisecond; a cold one waits for WeChat for up to seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REPORTS = Counter("jssdk_reports_total", "wx.config failures reported by pages through /v1/report", ["app"])
UPSTREAM_CALLS = Counter(
    "jssdk_upstream_calls_total",
    "HTTP calls to WeChat by outcome: ok, the errcode, http_<status> or the exception name",
    ["app", "api", "outcome"],
)
CREDENTIAL_TTL = Gauge(
    "jssdk_credential_ttl_seconds",
    "Seconds until the access_token or jsapi_ticket held by the answering process expires (NaN: none held)",
    ["app", "kind"],
    multiprocess_mode="mostrecent",
)


class RouteStats:
    """One route's requests in this process: counts by status, and latencies in `LATENCY_BUCKETS`.

    The web layer adds each request in place (`statuses[status] += 1`, the latency's bucket
    `bisect_left(LATENCY_BUCKETS, seconds)`, `seconds += seconds`): no call on the hot path.
    """

    __slots__ = ("buckets", "route", "seconds", "statuses")

    def __init__(self, route: str) -> None:
        self.route = route
        self.statuses: dict[int, int] = {}
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # not cumulative; the last one is +Inf
        self.seconds = 0.0

    def to_record(self) -> dict[str, Any]:
        return {
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "buckets": self.buckets,
            "seconds": self.seconds,
        }


_ROUTES: dict[str, RouteStats] = {}


def route_stats(route: str) -> RouteStats:
    """The stats of `route`, shared by every method and every app of this process that serves it."""
    return _ROUTES.setdefault(route, RouteStats(route))


class _HttpCollector(Collector):
    """`jssdk_http_requests_total` and `jssdk_http_request_duration_seconds` from the route stats."""

    def __init__(self, directory: str | None) -> None:
        self._directory = directory

    def collect(self) -> Iterator[Metric]:
        records = [{route: stats.to_record() for route, stats in _ROUTES.items()}]
        if self._directory is not None:
            publish_http_stats(self._directory)
            records = [orjson.loads(path.read_bytes()) for path in Path(self._directory).glob("jssdk_http_*.json")]
        requests = CounterMetricFamily("jssdk_http_requests", "HTTP requests answered, by route and status",
                                       labels=["route", "status"])  # fmt: skip
        latency = HistogramMetricFamily("jssdk_http_request_duration_seconds",
                                        "Time from a request's handler start to its response, by route",
                                        labels=["route"])  # fmt: skip
        for route, (statuses, buckets, seconds) in sorted(_add_up(records).items()):
            for status, count in sorted(statuses.items()):
                requests.add_metric([route, status], count)
            cumulative, total = [], 0
            for bound, count in zip((*map(str, LATENCY_BUCKETS), "+Inf"), buckets, strict=True):
                total += count
                cumulative.append((bound, float(total)))
            latency.add_metric([route], cumulative, seconds)
        yield requests
        yield latency


def _add_up(records: Iterable[dict[str, Any]]) -> dict[str, tuple[dict[str, int], list[int], float]]:
    """Per route: counts by status, bucket counts and the sum of seconds, over every process's record."""
    totals: dict[str, tuple[dict[str, int], list[int], float]] = {}
    for record in records:
        for route, stats in record.items():
            statuses, buckets, seconds = totals.get(route) or ({}, [0] * (len(LATENCY_BUCKETS) + 1), 0.0)
            for status, count in stats["statuses"].items():
                statuses[status] = statuses.get(status, 0) + count
            buckets = [a + b for a, b in zip(buckets, stats["buckets"], strict=True)]
            totals[route] = (statuses, buckets, seconds + stats["seconds"])
    return totals


REGISTRY.register(_HttpCollector(None))


def publish_http_stats(directory: str) -> None:
    """Write this process's HTTP numbers where every process's /metrics finds them (atomically)."""
    target = Path(directory) / f"jssdk_http_{os.getpid()}.json"
    partial = target.with_suffix(".partial")
    partial.write_bytes(orjson.dumps({route: stats.to_record() for route, stats in _ROUTES.items()}))
    partial.replace(target)


async def keep_publishing_http_stats(directory: str) -> None:
    """Publish every `PUBLISH_EVERY` seconds until cancelled, and once more then."""
    try:
        while True:
            publish_http_stats(directory)
            await asyncio.sleep(PUBLISH_EVERY)
    finally:
        publish_http_stats(directory)


def upstream_call_counter(accounts: Iterable[Account]) -> CallObserver:
    """A WeChat client call observer that counts into `jssdk_upstream_calls_total`."""
    names = {account.app_id: account.name for account in accounts}

    def count(app_id: str, api: str, outcome: str) -> None:
        UPSTREAM_CALLS.labels(names.get(app_id, app_id), api, outcome).inc()

    return count


def record_credential_ttls(statuses: Iterable[AccountStatus]) -> None:
    """Set `jssdk_credential_ttl_seconds` from the accounts' statuses, as they are now."""
    for status in statuses:
        for kind, seconds in (("token", status.token_expires_in), ("ticket", status.ticket_expires_in)):
            CREDENTIAL_TTL.labels(status.name, kind).set(math.nan if seconds is None else seconds)


def exposition() -> bytes:
    """Every metric in the Prometheus text format: this process's, or all processes' in multi-process mode."""
    if MULTIPROCESS_DIR is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, MULTIPROCESS_DIR)  # type: ignore[no-untyped-call]
    registry.register(_HttpCollector(MULTIPROCESS_DIR))
    return generate_latest(registry)
