"""The Grafana dashboard, deploy/grafana/jssdk-service.json: its variables, its panels, and its queries read
only what a live service exports, and all of it."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from jssdk_service.sandbox import WeChatSandbox

from .helpers import ServiceFactory, require_binary
from .promql import exported_names, metric_names

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "jssdk-service.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# `$name` and `${name}` in a query: a variable of the dashboard's, or one of Grafana's own.
VARIABLE = re.compile(r"\$\{?(\w+)")
GRAFANA_VARIABLES = {"__rate_interval": "5m", "__interval": "1m", "__range": "6h"}


def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def variables() -> dict[str, dict[str, Any]]:
    """The dashboard's templating variables by name."""
    return {variable["name"]: variable for variable in dashboard()["templating"]["list"]}


def panel_queries() -> list[tuple[str, str]]:
    """Every panel target's PromQL, with its panel's title."""
    return [(panel["title"], target["expr"]) for panel in dashboard()["panels"] for target in panel["targets"]]


def variable_query(variable: dict[str, Any]) -> str:
    """A query variable's query, whether Grafana saved it as text or as its query editor's object."""
    query = variable["query"]
    return query if isinstance(query, str) else str(query["query"])


def test_metric_names_are_read_from_promql_as_written() -> None:
    """`metric_names` finds the service's metrics in PromQL, as written, and not in quoted label values."""
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(jssdk_http_request_duration_seconds_bucket{route=~"$route"}[5m])))'
        ' / on () group_left max(jssdk_accounts{state="jssdk_accounts_unready"}) and process_open_fds'
        " unless jssdk_cache_up{instance='jssdk_x'}"
    )
    assert metric_names(expr) == {"jssdk_http_request_duration_seconds_bucket", "jssdk_accounts", "jssdk_cache_up"}


def test_the_dashboard_chooses_its_prometheus_and_its_accounts() -> None:
    """The dashboard is a schema 39 document whose datasource is a variable and whose `app` lists the accounts."""
    document = dashboard()
    assert document["schemaVersion"] >= 39 and document["title"] and document["uid"]
    chosen = variables()
    assert (chosen["datasource"]["type"], chosen["datasource"]["query"]) == ("datasource", "prometheus")
    app = chosen["app"]
    assert (app["type"], app["datasource"]) == ("query", DATASOURCE)
    assert variable_query(app) == app["definition"] == "label_values(jssdk_credential_ttl_seconds, app)"
    assert app["multi"] and app["includeAll"] and app["allValue"] == ".*"


def test_every_panel_has_a_title_a_datasource_and_queries() -> None:
    """Every panel has a title, the datasource variable, and targets that each have a query and that datasource."""
    panels = dashboard()["panels"]
    assert panels
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        assert panel.get("title"), panel
        assert panel.get("datasource") == DATASOURCE, panel["title"]
        assert panel.get("targets"), panel["title"]
        for target in panel["targets"]:
            assert target.get("expr") and target.get("refId"), panel["title"]
            assert target.get("datasource") == DATASOURCE, panel["title"]


def test_every_variable_a_query_uses_is_defined() -> None:
    """A `$variable` in a panel's query is one of the dashboard's or one of Grafana's built-in ones."""
    known = set(variables()) | set(GRAFANA_VARIABLES)
    for title, expr in panel_queries():
        assert set(VARIABLE.findall(expr)) <= known, (title, expr)


def test_every_query_is_promql_that_promtool_accepts(tmp_path: Path) -> None:
    """Every panel's query, its variables filled in, parses: `promtool check rules` takes them as recording rules."""
    promtool = require_binary("promtool")
    values = {**GRAFANA_VARIABLES, **{name: ".*" for name in variables()}}
    rules = [{"record": f"dashboard:panel_{n}", "expr": VARIABLE.sub(lambda m: values[m.group(1)], expr)}
             for n, (_, expr) in enumerate(panel_queries())]  # fmt: skip
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_the_queries_read_every_exported_metric_and_nothing_else(
    start_service: ServiceFactory, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """Every query names only metrics a live service exports, each names one at least, and each metric is shown."""
    exported = await exported_names(start_service, sandbox, http)
    shown: set[str] = set()
    for title, expr in [*panel_queries(), ("app variable", variable_query(variables()["app"]))]:
        names = metric_names(expr)
        assert names, (title, expr)
        assert names <= exported.keys(), f"{title}: {sorted(names - exported.keys())} are not exported"
        shown |= {exported[name] for name in names}
    # prometheus_client's `_created` timestamps are not worth a panel.
    ours = {family for family in exported.values() if family.startswith("jssdk_") and not family.endswith("_created")}
    assert ours <= shown, f"not on the dashboard: {sorted(ours - shown)}"
