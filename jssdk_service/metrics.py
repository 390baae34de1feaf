"""Prometheus metrics: the names operators alert on. Only this module defines metrics.

    jssdk_upstream_calls_total{app,api,outcome}      every HTTP call to WeChat; outcome is "ok", the
                                                     errcode, "http_<status>" or the exception name
    jssdk_credential_ttl_seconds{app,kind}           seconds until the token / ticket expires
    jssdk_http_requests_total{route,status}          requests answered
    jssdk_http_request_duration_seconds{route}       time from a request's handler start to its response
    jssdk_reports_total{app}                         wx.config failures reported by pages

`app` is the account's name (its appId unless configured); `route` is the registered path, never
the URL asked for ("unmatched" for everything that matched no route), so label sets stay few.

With `serve --workers N` every process serves /metrics: `PROMETHEUS_MULTIPROC_DIR` is set before
the workers start (and before prometheus_client is imported), each process writes its samples to
files there, and `exposition()` adds up the counters and histograms of all of them. Credential
lifetimes are read when /metrics is scraped, from the process that answers it (the gauge's
"mostrecent" mode); NaN means that process holds no such credential (a process that took the
ticket from the shared cache may never have needed a token).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector

from jssdk_service.config import Account
from jssdk_service.credentials import AccountStatus
from jssdk_service.wechat import CallObserver

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
UNMATCHED_ROUTE = "unmatched"

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
HTTP_REQUESTS = Counter("jssdk_http_requests_total", "HTTP requests answered, by route and status", ["route", "status"])
HTTP_DURATION = Histogram(
    "jssdk_http_request_duration_seconds",
    "Time from a request's handler start to its response, by route",
    ["route"],
    # Warm signatures take well under a millisecond; a cold one waits for WeChat for up to seconds.
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)


class RouteMetrics:
    """Counts and times the requests of one route; label children are looked up once per status."""

    __slots__ = ("_count", "_observe", "_route")

    def __init__(self, route: str) -> None:
        self._route = route
        self._observe = HTTP_DURATION.labels(route).observe
        self._count: dict[int, Callable[[], None]] = {}

    def __call__(self, status: int, seconds: float) -> None:
        count = self._count.get(status)
        if count is None:
            count = self._count[status] = HTTP_REQUESTS.labels(self._route, str(status)).inc
        count()
        self._observe(seconds)


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
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path)  # type: ignore[no-untyped-call]
    return generate_latest(registry)
