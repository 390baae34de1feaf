"""The page side in WeCom: the helper with jweixin, and README's ww.register with @wecom/jssdk, run in Node."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from .helpers import WECOM_KEY, ServiceFactory, make_account, make_wecom_account, require_binary

JS_TESTS = Path(__file__).parent / "js"
PACKAGES = ("jsdom", "weixin-js-sdk", "@wecom/jssdk")


def reports_total() -> float:
    """Every report the service counted, whatever account it was put down to."""
    return sum(
        sample.value
        for metric in REGISTRY.collect()
        if metric.name == "jssdk_reports"
        for sample in metric.samples
        if sample.name == "jssdk_reports_total"
    )


async def test_the_wecom_page_side_passes_its_node_suite(start_service: ServiceFactory, sandbox_url: str) -> None:
    """In an emulated WeCom client that verifies every signature with the sandbox, the helper and ww.register work."""
    node = require_binary("node")
    missing = [name for name in PACKAGES if not (JS_TESTS / "node_modules" / name / "package.json").is_file()]
    if missing:
        pytest.fail(f"tests/js/node_modules lacks {', '.join(missing)}: run `npm ci --prefix tests/js`")
    service = await start_service(accounts=(make_account(), make_wecom_account()))
    before = reports_total()
    urls = {"JSSDK_SERVICE_URL": service.url, "JSSDK_SANDBOX_URL": sandbox_url}
    env = {**os.environ, **urls, "JSSDK_WECOM_APP": WECOM_KEY}
    files = sorted(str(path) for path in (JS_TESTS / "wecom").glob("*.test.mjs"))
    assert files, "no Node tests found"
    process = await asyncio.create_subprocess_exec(
        node, "--test", *files,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, output.decode()
    # The helper's two failure tests each sent one report, and the service took it.
    assert reports_total() - before == 2
