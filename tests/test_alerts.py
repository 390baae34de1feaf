"""The alert rules, deploy/prometheus/jssdk-alerts.yml: promtool checks them and runs their tests, they read
only what a live service exports, and each has its runbook in deploy/README.md."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from jssdk_service.sandbox import WeChatSandbox

from .helpers import ServiceFactory, require_binary
from .promql import exported_names, metric_names

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "jssdk-alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "jssdk-alerts.test.yml"
README = DEPLOY / "README.md"
RUNBOOK_SECTION = "Alerts and their runbook"
SEVERITIES = {"critical", "warning"}


def alerts() -> list[dict[str, Any]]:
    """Every alerting rule of every group."""
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def github_anchor(heading: str) -> str:
    """The fragment GitHub links a Markdown heading by: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def runbook_headings() -> list[str]:
    """The headings inside deploy/README.md's runbook section, one per alert."""
    text = README.read_text()
    start = text.index(f"\n## {RUNBOOK_SECTION}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"^### (.+)$", text[start : len(text) if end < 0 else end], re.MULTILINE)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_binary("promtool"), *args], capture_output=True, text=True, check=False)


def test_promtool_accepts_the_rules() -> None:
    """`promtool check rules` finds the rule file valid."""
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_passes_its_promtool_tests() -> None:
    """`promtool test rules` passes the synthetic series of every alert."""
    tested = promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    """The promtool tests evaluate every alert at a time it fires and at a time it does not, and no other alert."""
    document = yaml.safe_load(RULE_TESTS.read_text())
    assert document["rule_files"] == [RULES.name]
    cases = [case for test in document["tests"] for case in test.get("alert_rule_test", [])]
    names = {alert["alert"] for alert in alerts()}
    assert {case["alertname"] for case in cases} == names
    for name in names:
        outcomes = {bool(case["exp_alerts"]) for case in cases if case["alertname"] == name}
        assert outcomes == {True, False}, f"{name} is not tested both firing and not firing"


def test_every_alert_has_a_severity_a_summary_and_its_runbook() -> None:
    """Every alert has a severity, a summary naming what it is about, a description, and its runbook's URL."""
    names = [alert["alert"] for alert in alerts()]
    assert len(set(names)) == len(names)
    for alert in alerts():
        name, annotations = alert["alert"], alert["annotations"]
        assert alert["labels"]["severity"] in SEVERITIES, name
        assert re.search(r"\{\{ \$labels\.(app|instance) \}\}", annotations["summary"]), name
        assert annotations["description"].strip(), name
        assert annotations["runbook_url"] == f"deploy/README.md#{github_anchor(name)}", name


def test_every_alert_has_a_section_in_the_runbook_and_every_section_an_alert() -> None:
    """deploy/README.md's runbook section has one heading per alert, the one its runbook_url points at."""
    headings = runbook_headings()
    assert sorted(headings) == sorted(alert["alert"] for alert in alerts())
    anchors = {github_anchor(heading) for heading in headings}
    for alert in alerts():
        assert alert["annotations"]["runbook_url"].partition("#")[2] in anchors, alert["alert"]


async def test_the_rules_read_only_metrics_the_service_exports(
    start_service: ServiceFactory, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """Every metric name in the alerts' expressions is one a live service answers on /metrics."""
    exported = await exported_names(start_service, sandbox, http)
    for alert in alerts():
        names = metric_names(alert["expr"])
        assert names, alert["alert"]
        assert names <= exported.keys(), f"{alert['alert']}: {sorted(names - exported.keys())} are not exported"
