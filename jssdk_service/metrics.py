"""Prometheus metrics: the names operators alert on. Only this module defines metrics.

    jssdk_upstream_calls_total{app,api,outcome}      every HTTP call to WeChat; outcome is "ok", the
                                                     errcode, "http_<status>" or the exception name
    jssdk_credential_ttl_seconds{app,kind}           seconds until the token / ticket (/ WeCom agent_ticket) expires
    jssdk_accounts{state}                            accounts that may sign now ("ready") and not ("unready")
    jssdk_platform_authorizers{platform}             the authorizers a third-party platform signs for
    jssdk_component_token_ttl_seconds{platform}      seconds until a platform's component_access_token expires
    jssdk_upstream_in_flight, jssdk_upstream_waiting refreshes holding an upstream slot, and waiting for one
    jssdk_http_requests_total{route,status}          requests answered
    jssdk_http_request_duration_seconds{route}       time from a request's handler start to its response
    jssdk_reports_total{app}                         wx.config failures reported by pages
    jssdk_refresh_failures_total{app,class}          failed refreshes (each once, not per request; a
                                                     platform's component token under the platform's name):
                                                     class "configuration" (WeChat refuses the setup: fix it),
                                                     "quota" (a quota or limit is spent), "source" (an
                                                     external token source fails), "upstream" (WeChat
                                                     fails); an authorizer failing for its platform's token
                                                     is not counted (the platform's failure is, once)
    jssdk_refresh_failing{app,class}                 while the account's last refresh failed: the processes
                                                     that saw it fail (no series while it works)
    jssdk_quota_used_ratio{app,api,window}           the fleet's calls against a published quota, from 50%:
                                                     window "day" (WeChat's daily quotas) or "hour" (WeCom's),
                                                     until the window is over
    jssdk_cache_up                                   1 while the shared cache answers, 0 while degraded

`app` is the account's name (its appId unless configured); `route` is the registered path, never
the URL asked for ("unmatched" for everything that matched no route), so label sets stay few.

Per account there are two TTL series and one upstream series per API and outcome seen (two while
all is well): about four series an account, some 3 MB of text at 10,000 accounts. They are kept
because they are what an operator alerts on per account (a ticket close to expiry, an account's
calls failing). What grows with the accounts is written out directly when /metrics is scraped
(prometheus_client takes some 13 us a sample, most of a second at 10,000 accounts), a chunk at a
time between turns of the event loop (`exposition`), so a scrape holds a signature up by a few
milliseconds at most; nothing per account is kept up to date between scrapes.

The HTTP metrics and the upstream calls are counted as they happen, so they are plain numbers
(`RouteStats`, `_UPSTREAM`) turned into samples only when /metrics is scraped: prometheus_client's
locked values cost a warm /v1/signature several percent of its throughput, a few additions do not.
The reports are prometheus_client's own.

With `serve --workers N` every process serves /metrics: `PROMETHEUS_MULTIPROC_DIR` is set before
the workers start (and so before prometheus_client is imported), each process keeps its samples in
files there (its HTTP and upstream numbers in `jssdk_http_<pid>.json`, rewritten every second), and
`exposition()` adds up every process's, including those of workers that have exited (a worker
killed outright, SIGKILL, loses what it counted after its last publication; SIGTERM publishes). Credential
lifetimes, accounts and upstream slots are read when /metrics is scraped, from the process that
answers; a TTL of NaN means that process holds no such credential (one that took the ticket from
the shared cache may never have needed a token).
"""

from __future__ import annotations

import asyncio
import os
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import REGISTRY, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from jssdk_service.config import Account
from jssdk_service.scheduler import UpstreamScheduler
from jssdk_service.wechat import CallObserver

if TYPE_CHECKING:  # the credential store counts its failures here
    from jssdk_service.credentials import AccountCredentials

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
UNMATCHED_ROUTE = "unmatched"
# Read once, as prometheus_client does: the supervisor sets it before it spawns the workers.
MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
PUBLISH_EVERY = 1.0
FAILING_FRESH = 5 * PUBLISH_EVERY  # a published record older than this is an exited worker's
# Lines of per-account series written between two turns of the event loop (a few milliseconds).
CHUNK = 250
# Warm signatures take well under a millisecond; a cold one waits for WeChat for up to seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REPORTS = Counter("jssdk_reports_total", "wx.config failures reported by pages through /v1/report", ["app"])
# Failed refreshes by (app, class), and the quotas half spent or more by (app, api, window): both few
# (a failure is counted once per refresh, never per request), kept as plain numbers like the calls.
_FAILURES: dict[tuple[str, str], int] = {}
# The quotas' use by (app, api, window): the ratio, and until when it holds (the end of its China day, or
# an hour for WeCom's sliding hour): an account that makes no more calls does not keep yesterday's figure.
_QUOTAS: dict[tuple[str, str, str], tuple[float, float]] = {}
# The accounts whose last refresh failed, and the failure's class: few (they are in trouble).
_FAILING: dict[str, str] = {}
QUOTA_SHOWN = 0.5
"""A quota's use is a series from half of it on: the ones worth a look, and few."""


def count_refresh_failure(app: str, failure_class: str) -> None:
    """One failed refresh of `app` (its name), of `failure_class` (`errors.failure_class`): counted, and `app`
    failing (`jssdk_refresh_failing`) until `refresh_recovered`."""
    key = (app, failure_class)
    _FAILURES[key] = _FAILURES.get(key, 0) + 1
    _FAILING[app] = failure_class


def refresh_recovered(app: str) -> None:
    """`app`'s refreshes succeed again (or it was removed)."""
    _FAILING.pop(app, None)


def quota_used(app: str, api: str, window: str, ratio: float, *, until: float) -> None:
    """The fleet's use of a published quota of `app`'s `api` in `window` ("day" or "hour"), as a share of it,
    which holds until `until` (epoch seconds) unless told again."""
    labels = (app, api, window)
    kept = _QUOTAS.get(labels)
    if kept is not None and kept[1] == until:  # the same day told again (our count, WeChat's): the larger
        ratio = max(ratio, kept[0])
    if ratio >= QUOTA_SHOWN or kept is not None:
        _QUOTAS[labels] = (round(ratio, 4), until)


def quota_reset(app: str) -> None:
    """`app`'s daily quotas were reset: the ratios told so far no longer hold."""
    for labels in [labels for labels in _QUOTAS if labels[0] == app and labels[2] == "day"]:
        del _QUOTAS[labels]


# Calls to WeChat by (app, api, outcome), counted in place like the route stats; prometheus_client
# would take some 13 us a sample to write them out, which at 10,000 accounts is most of a second.
_UPSTREAM: dict[tuple[str, str, str], int] = {}


class RouteStats:
    """One route's requests in this process: counts by status, and latencies in `LATENCY_BUCKETS`.

    The web layer and the fast lane each `count` every request they answer.
    """

    __slots__ = ("buckets", "route", "seconds", "statuses")

    def __init__(self, route: str) -> None:
        self.route = route
        self.statuses: dict[int, int] = {}
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # not cumulative; the last one is +Inf
        self.seconds = 0.0

    def count(self, status: int, seconds: float) -> None:
        """One request answered with `status` after `seconds`."""
        statuses = self.statuses
        statuses[status] = statuses.get(status, 0) + 1
        self.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.seconds += seconds

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


def _this_process() -> dict[str, Any]:
    """This process's counts, as published for the other workers."""
    return {
        "routes": {route: stats.to_record() for route, stats in _ROUTES.items()},
        "upstream": [[*labels, count] for labels, count in _UPSTREAM.items()],
        "failures": [[*labels, count] for labels, count in _FAILURES.items()],
        "quotas": [[*labels, ratio, until] for labels, (ratio, until) in _QUOTAS.items()],
        "failing": list(_FAILING.items()),
        "at": time.time(),
    }


Calls = dict[tuple[str, str, str], int]


@dataclass(frozen=True, slots=True)
class _Counted:
    """What the processes counted, added up: route stats, upstream calls, refresh failures; and the
    quotas' use (the fleet's, the latest any process saw)."""

    routes: list[dict[str, Any]]
    calls: Calls
    failures: dict[tuple[str, str], int]
    quotas: dict[tuple[str, str, str], float]
    failing: dict[tuple[str, str], int]
    """(app, class) of the accounts whose last refresh failed, in how many processes."""


async def _counts(directory: str | None, now: float) -> _Counted:
    """Every process's counts: this one's, or with workers, every worker's; quotas past their window left out."""
    for labels in [labels for labels, (_, until) in _QUOTAS.items() if until <= now]:
        del _QUOTAS[labels]
    if directory is None:
        routes = [{route: stats.to_record() for route, stats in _ROUTES.items()}]
        quotas = {labels: ratio for labels, (ratio, _) in _QUOTAS.items()}
        return _Counted(routes, dict(_UPSTREAM), dict(_FAILURES), quotas, {item: 1 for item in _FAILING.items()})
    counted = _Counted([], {}, {}, {}, {})
    for published in _published(directory):
        record = orjson.loads(published)
        counted.routes.append(record["routes"])
        for app, api, outcome, count in record["upstream"]:
            counted.calls[(app, api, outcome)] = counted.calls.get((app, api, outcome), 0) + count
        for app, failure_class, count in record.get("failures", ()):
            counted.failures[(app, failure_class)] = counted.failures.get((app, failure_class), 0) + count
        for app, api, window, ratio, until in record.get("quotas", ()):
            if until > now:
                counted.quotas[(app, api, window)] = max(ratio, counted.quotas.get((app, api, window), 0.0))
        # A worker's failing accounts are its state now: a worker that exited (its file no longer rewritten)
        # has none, however it left.
        if time.time() - record.get("at", 0.0) <= FAILING_FRESH:
            for app, failure_class in record.get("failing", ()):
                counted.failing[(app, failure_class)] = counted.failing.get((app, failure_class), 0) + 1
        await asyncio.sleep(0)  # a worker's file holds a line per account and API: one at a time
    return counted


def _published(directory: str) -> list[bytes]:
    """What every worker published in `directory` (memory-backed: reading it does not block), this one now."""
    publish_http_stats(directory)
    return [path.read_bytes() for path in Path(directory).glob("jssdk_http_*.json")]


class _HttpCollector(Collector):
    """`jssdk_http_requests_total` and `jssdk_http_request_duration_seconds` from the route stats."""

    def __init__(self, routes: list[dict[str, Any]]) -> None:
        self._routes = routes

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("jssdk_http_requests", "HTTP requests answered, by route and status",
                                       labels=["route", "status"])  # fmt: skip
        latency = HistogramMetricFamily("jssdk_http_request_duration_seconds",
                                        "Time from a request's handler start to its response, by route",
                                        labels=["route"])  # fmt: skip
        for route, (statuses, buckets, seconds) in sorted(_add_up(self._routes).items()):
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


def publish_http_stats(directory: str) -> None:
    """Write this process's HTTP numbers where every process's /metrics finds them (atomically)."""
    target = Path(directory) / f"jssdk_http_{os.getpid()}.json"
    partial = target.with_suffix(".partial")
    partial.write_bytes(orjson.dumps(_this_process()))
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
    names = {account.key: account.name for account in accounts}

    def count(app_id: str, api: str, outcome: str) -> None:
        key = (names.get(app_id, app_id), api, outcome)
        _UPSTREAM[key] = _UPSTREAM.get(key, 0) + 1

    return count


def _label(value: str) -> str:
    """A label value in the text format: names and outcomes need no escaping, anything else gets it."""
    if '"' in value or "\\" in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


async def _per_account_text(
    calls: Calls, accounts: Sequence[AccountCredentials], now: float
) -> tuple[list[bytes], int]:
    """The series that grow with the accounts, written out directly (upstream calls and credential
    TTLs), and how many accounts are ready. `CHUNK` lines at a time, serving requests in between."""
    ready = 0
    parts = [
        b"# HELP jssdk_upstream_calls_total HTTP calls to WeChat by outcome: ok, the errcode, http_<status> or the "
        b"exception name\n# TYPE jssdk_upstream_calls_total counter\n"
    ]
    items = list(calls.items())
    for first in range(0, len(items), CHUNK):
        parts.append("".join(
            f'jssdk_upstream_calls_total{{app="{_label(app)}",api="{api}",outcome="{_label(outcome)}"}} {count}\n'
            for (app, api, outcome), count in items[first : first + CHUNK]
        ).encode())  # fmt: skip
        await asyncio.sleep(0)
    parts.append(
        b"# HELP jssdk_credential_ttl_seconds Seconds until the access_token or jsapi_ticket held by the answering "
        b"process expires (NaN: none held)\n# TYPE jssdk_credential_ttl_seconds gauge\n"
    )
    for first in range(0, len(accounts), CHUNK):
        lines = []
        for creds in accounts[first : first + CHUNK]:
            ready += creds.ready(now)
            app = _label(creds.account.name)
            ticket, token = creds.ttls(now)
            lines.append(
                f'jssdk_credential_ttl_seconds{{app="{app}",kind="token"}} {"NaN" if token is None else token}\n'
                f'jssdk_credential_ttl_seconds{{app="{app}",kind="ticket"}} {"NaN" if ticket is None else ticket}\n'
            )
            if creds.account.wecom:  # its ticket is the corp ticket; the agent ticket is its own
                agent = creds.agent_ttl(now)
                value = "NaN" if agent is None else agent
                lines.append(f'jssdk_credential_ttl_seconds{{app="{app}",kind="agent_ticket"}} {value}\n')
        parts.append("".join(lines).encode())
        await asyncio.sleep(0)
    return parts, ready


class _StateCollector(Collector):
    """What this process holds now: ready accounts, upstream slots."""

    def __init__(
        self, ready: int, total: int, scheduler: UpstreamScheduler, platforms: Sequence[PlatformSample],
        cache_up: bool, counted: _Counted,
    ) -> None:  # fmt: skip
        self._ready = ready
        self._total = total
        self._scheduler = scheduler
        self._platforms = platforms
        self._cache_up = cache_up
        self._counted = counted

    def collect(self) -> Iterator[Metric]:
        accounts = GaugeMetricFamily("jssdk_accounts", "Accounts that may sign now, and not", labels=["state"])
        accounts.add_metric(["ready"], self._ready)
        accounts.add_metric(["unready"], self._total - self._ready)
        yield accounts
        yield GaugeMetricFamily("jssdk_upstream_in_flight", "Refreshes holding an upstream slot in this process",
                                value=self._scheduler.in_flight)  # fmt: skip
        yield GaugeMetricFamily("jssdk_upstream_waiting", "Refreshes waiting for an upstream slot in this process",
                                value=self._scheduler.waiting)  # fmt: skip
        yield GaugeMetricFamily("jssdk_cache_up", "1 while the shared cache answers, 0 while it is degraded",
                                value=1.0 if self._cache_up else 0.0)  # fmt: skip
        failures = CounterMetricFamily("jssdk_refresh_failures_total", "Failed refreshes by class: configuration, "
                                       "quota, source, upstream", labels=["app", "class"])  # fmt: skip
        for (app, failure_class), count in self._counted.failures.items():
            failures.add_metric([app, failure_class], count)
        yield failures
        failing = GaugeMetricFamily("jssdk_refresh_failing", "Processes whose last refresh of the account "
                                    "failed, by the failure's class (no series while it works)",
                                    labels=["app", "class"])  # fmt: skip
        for (app, failure_class), count in self._counted.failing.items():
            failing.add_metric([app, failure_class], count)
        yield failing
        quotas = GaugeMetricFamily("jssdk_quota_used_ratio", "The fleet's calls as a share of a published quota "
                                   "(from half of it on)", labels=["app", "api", "window"])  # fmt: skip
        for (app, api, window), ratio in self._counted.quotas.items():
            quotas.add_metric([app, api, window], ratio)
        yield quotas
        if self._platforms:
            authorizers = GaugeMetricFamily("jssdk_platform_authorizers", "Authorizers a third-party platform "
                                            "signs for, in this process", labels=["platform"])  # fmt: skip
            ttl = GaugeMetricFamily("jssdk_component_token_ttl_seconds", "Seconds until the platform's "
                                    "component_access_token held here expires (NaN: none held)",
                                    labels=["platform"])  # fmt: skip
            for name, count, left in self._platforms:
                authorizers.add_metric([name], count)
                ttl.add_metric([name], float("nan") if left is None else left)
            yield authorizers
            yield ttl


PlatformSample = tuple[str, int, float | None]
"""A platform's name, its authorizers, and its component token's seconds left (None: none held)."""


async def exposition(
    accounts: Sequence[AccountCredentials],
    scheduler: UpstreamScheduler,
    now: float,
    platforms: Sequence[PlatformSample] = (),
    *,
    cache_up: bool = True,
) -> bytes:
    """Every metric in the Prometheus text format: this process's, or all processes' in multi-process mode.

    What grows with the accounts is written a chunk at a time, with the event loop serving requests
    in between, so that a scrape holds a signature up by a few milliseconds at most. (A worker thread
    would do worse: the event loop would wait for the interpreter lock at every system call.)
    """
    counted = await _counts(MULTIPROCESS_DIR, now)
    registry = REGISTRY
    if MULTIPROCESS_DIR is not None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, MULTIPROCESS_DIR)  # type: ignore[no-untyped-call]
    parts = [generate_latest(registry), generate_latest(_HttpCollector(counted.routes))]
    per_account, ready = await _per_account_text(counted.calls, accounts, now)
    parts.append(generate_latest(_StateCollector(ready, len(accounts), scheduler, platforms, cache_up, counted)))
    return b"".join(parts + per_account)
