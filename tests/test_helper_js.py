"""The page helper: served as a cacheable script, and its Node test suite run against the live sandbox service."""

from __future__ import annotations

import asyncio
import os
from importlib import resources
from pathlib import Path

import aiohttp
from prometheus_client import REGISTRY

from .helpers import RunningService, ServiceFactory, require_binary

JS_TESTS = Path(__file__).parent / "js"


async def test_the_helper_is_served_as_cacheable_javascript(
    service: RunningService, http: aiohttp.ClientSession
) -> None:
    """/v1/jssdk-share.js is the packaged file, as JavaScript, revalidated by ETag and cached a year at ?v=<ETag>."""
    packaged = resources.files("jssdk_service").joinpath("static", "jssdk-share.js").read_bytes()
    async with http.get(f"{service.url}/v1/jssdk-share.js") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/javascript; charset=utf-8"
        assert response.headers["Cache-Control"] == "public, max-age=3600"
        assert await response.read() == packaged
        etag = response.headers["ETag"]
    async with http.get(f"{service.url}/v1/jssdk-share.js", headers={"If-None-Match": etag}) as response:
        assert (response.status, await response.read()) == (304, b"")
    async with http.get(f"{service.url}/v1/jssdk-share.js", params={"v": etag.strip('"')}) as response:
        assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    async with http.get(f"{service.url}/v1/jssdk-share.js", params={"v": "older"}) as response:
        assert response.headers["Cache-Control"] == "public, max-age=3600"


async def test_the_demo_page_is_served_in_the_sandbox_only(
    start_service: ServiceFactory, http: aiohttp.ClientSession
) -> None:
    """/demo and its stand-in wx exist when the sandbox demo is on, and are 404 otherwise."""
    plain, demo = await start_service(), await start_service(demo=True)
    for path in ("/demo", "/demo/sandbox-wx.js"):
        async with http.get(plain.url + path) as response:
            assert response.status == 404
    async with http.get(f"{demo.url}/demo") as response:
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        page = await response.text()
    assert '<script src="/v1/jssdk-share.js"></script>' in page and "JssdkShare.init(" in page
    async with http.get(f"{demo.url}/demo/sandbox-wx.js") as response:
        assert "SANDBOX STAND-IN" in await response.text()


async def test_the_page_helper_passes_its_node_suite(
    start_service: ServiceFactory, sandbox_url: str, http: aiohttp.ClientSession
) -> None:
    """Under Node's test runner, with iOS and Android WeChat, the helper signs, shares and reports as specified."""
    node = require_binary("node")
    service = await start_service(demo=True)

    def reports() -> float:
        return REGISTRY.get_sample_value("jssdk_reports_total", {"app": "main"}) or 0.0

    before = reports()
    env = {**os.environ, "JSSDK_SERVICE_URL": service.url, "JSSDK_SANDBOX_URL": sandbox_url}
    files = sorted(str(path) for path in JS_TESTS.glob("*.test.mjs"))
    process = await asyncio.create_subprocess_exec(
        node, "--test", *files, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, output.decode()
    assert files, "no Node tests found"
    # The helper's two failure tests each sent one report to the live service.
    assert reports() - before == 2
