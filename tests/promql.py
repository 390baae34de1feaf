"""PromQL in the deployment files against the service: the metric names an expression reads, and the names
a live service exports, for the alert rules' tests and the dashboard's."""

from __future__ import annotations

import re

import aiohttp

from jssdk_service.config import Secret
from jssdk_service.sandbox import WeChatSandbox

from .helpers import PAGE, ServiceFactory, make_platform, metric_sample, sign

ADMIN = "metrics-admin-token-0123456789"
# A name the service exports; what a query quotes (label values, regular expressions) is no name.
METRIC = re.compile(r"\bjssdk_\w*")
QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
TYPE_LINE = re.compile(r"^# TYPE (\S+) (\S+)$", re.MULTILINE)
# A histogram is queried through its series, never by its own name.
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def metric_names(expr: str) -> set[str]:
    """The service's metric names `expr` reads, as written (a histogram's with its `_bucket` and the like)."""
    return set(METRIC.findall(QUOTED.sub('""', expr)))


def queryable_names(exposition: str) -> dict[str, str]:
    """Every name a query may read, from an exposition's `# TYPE` lines, with the family it belongs to: a
    histogram's `_bucket`, `_sum` and `_count`, every other family's own name (a counter's with its `_total`)."""
    names: dict[str, str] = {}
    for family, kind in TYPE_LINE.findall(exposition):
        for suffix in HISTOGRAM_SERIES if kind == "histogram" else ("",):
            names[family + suffix] = family
    return names


async def exported_names(
    start_service: ServiceFactory, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> dict[str, str]:
    """The names a live service's /metrics lets a query read (`queryable_names`) once every family had its
    event: a signature, a refresh that fails (its account failing since), a page's report, and a platform
    configured (its families exist only then)."""
    service = await start_service(platforms=(make_platform(),), admin_token=Secret(ADMIN))
    assert (await sign(http, service.url))[0] == 200
    sandbox.faults.script.append(40013)  # the forced refresh's ticket call is refused: one failed refresh
    refresh = f"{service.url}/admin/apps/main/refresh"
    async with http.post(refresh, headers={"Authorization": f"Bearer {ADMIN}"}) as response:
        assert response.status >= 400, await response.text()
    async with http.post(f"{service.url}/v1/report", json={"url": PAGE, "errMsg": "config:invalid signature"}) as r:
        assert r.status == 200, await r.text()
    async with http.get(f"{service.url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    for name, labels in (("jssdk_refresh_failures_total", {"app": "main"}), ("jssdk_refresh_failing", {"app": "main"}),
                         ("jssdk_reports_total", {"app": "main"}),
                         ("jssdk_platform_authorizers", {"platform": "platform"})):  # fmt: skip
        assert metric_sample(text, name, **labels) is not None, f"no {name} after its event:\n{text}"
    return queryable_names(text)
