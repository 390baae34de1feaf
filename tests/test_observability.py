"""Metrics across processes, request ids in log records, and logs through upstream failures."""

from __future__ import annotations

import asyncio
import io
import logging
import signal
import time
from pathlib import Path

import aiohttp
import orjson

from jssdk_service import logs, metrics
from jssdk_service.config import Secret
from jssdk_service.sandbox import DEMO_APP_ID, WeChatSandbox
from jssdk_service.scheduler import UpstreamScheduler

from .helpers import ACCOUNT_ENV, PAGE, SECRET, ServiceFactory, make_account, metric_sample, serving, sign

ADMIN = "observability-admin-token-0123456789"
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}


async def test_metrics_add_up_over_processes_sharing_a_directory(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """With PROMETHEUS_MULTIPROC_DIR shared, one process's /metrics counts every process's requests and calls."""
    shared = tmp_path / "metrics"
    shared.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(shared), "JSSDK_LOG_LEVEL": "WARNING"}
    async with (
        serving(tmp_path / "a.log", env=env) as (a, a_process),
        serving(tmp_path / "b.log", env=env) as (b, b_process),
    ):
        assert [(await sign(http, a))[0] for _ in range(3)] == [200] * 3
        assert [(await sign(http, b))[0] for _ in range(2)] == [200] * 2
        b_process.send_signal(signal.SIGTERM)  # B writes its numbers as it stops
        assert await asyncio.wait_for(b_process.wait(), 10) == 0
        async with http.get(f"{a}/metrics") as response:
            text = await response.text()
    assert a_process.returncode == 0, (tmp_path / "a.log").read_text()
    assert metric_sample(text, "jssdk_http_requests_total", route="/v1/signature", status="200") == 5
    assert metric_sample(text, "jssdk_http_request_duration_seconds_count", route="/v1/signature") == 5
    assert metric_sample(text, "jssdk_http_request_duration_seconds_bucket", route="/v1/signature", le="+Inf") == 5
    for api in ("stable_token", "getticket"):
        assert metric_sample(text, "jssdk_upstream_calls_total", app=DEMO_APP_ID, api=api, outcome="ok") == 2
    ttl = metric_sample(text, "jssdk_credential_ttl_seconds", app=DEMO_APP_ID, kind="ticket")
    assert ttl is not None and 7000 < ttl <= 7200
    assert text.count("# TYPE jssdk_http_requests_total counter") == 1


async def test_a_log_record_carries_the_id_of_the_request_it_serves(
    start_service: ServiceFactory, http: aiohttp.ClientSession
) -> None:
    """A record written while a request is served has that request's id, the one its response returns."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.RequestIdFilter())
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        service = await start_service(accounts=(make_account(secret=Secret("not-the-secret")),))
        async with http.get(f"{service.url}/v1/signature", params={"url": PAGE}) as response:
            assert response.status == 503  # logged as a warning by the web layer
            request_id = response.headers["X-Request-Id"]
        async with http.get(f"{service.url}/v1/signature", params={"url": PAGE},
                            headers={"X-Request-Id": "trace-7f3a"}) as response:  # fmt: skip
            assert response.headers["X-Request-Id"] == "trace-7f3a"
    finally:
        root.removeHandler(handler)
    entries = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    served = [e for e in entries if e["logger"] == "jssdk_service.web" and e["level"] == "WARNING"]
    assert [e.get("request_id") for e in served] == [request_id, "trace-7f3a"]
    assert all("40125" in e["message"] and "not-the-secret" not in e["message"] for e in served)


async def test_new_request_ids_are_unique_and_unsafe_ones_are_replaced(
    start_service: ServiceFactory, http: aiohttp.ClientSession
) -> None:
    """Requests without a usable X-Request-Id each get a new id; a long or unsafe one is not echoed."""
    service = await start_service()
    seen = set()
    for incoming in (None, None, None, "x" * 65, "a b", "<script>", "ok.id:1-2_3=+"):
        headers = {} if incoming is None else {"X-Request-Id": incoming}
        async with http.get(f"{service.url}/healthz", headers=headers) as response:
            seen.add(response.headers["X-Request-Id"])
    assert "ok.id:1-2_3=+" in seen and len(seen) == 7
    assert not {"x" * 65, "a b", "<script>"} & seen


async def test_upstream_failures_are_logged_as_json_without_credentials(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """WeChat refusing every call is logged, as JSON lines with request ids, and no secret reaches the log."""
    log = tmp_path / "service.log"
    env = {**ACCOUNT_ENV, "JSSDK_LOG_LEVEL": "DEBUG"}
    async with serving(log, "--sandbox-errors", "40125:1", "--access-log", env=env) as (url, process):
        assert [(await sign(http, url))[0] for _ in range(3)] == [503] * 3
        async with http.get(f"{url}/readyz") as response:
            assert response.status == 503
    assert process.returncode == 0, log.read_text()
    entries = [orjson.loads(line) for line in log.read_text().splitlines()]
    assert any(e["logger"] == "jssdk_service.credentials" and "40125" in e["message"] for e in entries)
    failed = [e for e in entries if e["logger"] == "jssdk_service.access" and e["status"] == 503]
    assert len(failed) == 4 and all(e["request_id"] for e in failed)
    text = log.read_text()
    assert SECRET not in text and "sandbox_token_" not in text and "sandbox_ticket_" not in text


async def test_a_failing_account_is_a_series_until_it_recovers(
    start_service: ServiceFactory, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """jssdk_refresh_failing has a series for the account from its failed refresh (however long WeChat's
    backoff keeps it from trying again) until a refresh works; the failures counted stay."""
    service = await start_service(accounts=(make_account(name="failing-one"),), admin_token=Secret(ADMIN))
    assert (await sign(http, service.url, app="failing-one"))[0] == 200
    refresh = f"{service.url}/admin/apps/failing-one/refresh"
    sandbox.faults.script.append(40013)
    async with http.post(refresh, headers=ADMIN_AUTH) as response:
        assert response.status >= 400
    text = await metrics_text(http, service.url)
    assert metric_sample(text, "jssdk_refresh_failing", app="failing-one", **{"class": "configuration"}) == 1
    assert metric_sample(text, "jssdk_refresh_failures_total", app="failing-one", **{"class": "configuration"}) == 1
    async with http.post(refresh, headers=ADMIN_AUTH) as response:
        assert response.status == 200, await response.text()
    text = await metrics_text(http, service.url)
    assert 'jssdk_refresh_failing{app="failing-one"' not in text
    assert metric_sample(text, "jssdk_refresh_failures_total", app="failing-one", **{"class": "configuration"}) == 1


async def test_a_quotas_use_is_shown_until_its_window_is_over() -> None:
    """A quota's ratio is exported until the end of its window: an account that stops calling does not keep
    yesterday's figure (which would keep an alert firing)."""
    now = time.time()
    metrics.quota_used("window-test", "getticket", "day", 0.85, until=now + 60)
    metrics.quota_used("window-test", "get_jsapi_ticket", "hour", 0.9, until=now - 1)
    text = (await metrics.exposition([], UpstreamScheduler(1), now)).decode()
    assert metric_sample(text, "jssdk_quota_used_ratio", app="window-test", api="getticket", window="day") == 0.85
    assert (
        metric_sample(text, "jssdk_quota_used_ratio", app="window-test", api="get_jsapi_ticket", window="hour") is None
    )
    text = (await metrics.exposition([], UpstreamScheduler(1), now + 61)).decode()
    assert 'app="window-test"' not in text


async def metrics_text(http: aiohttp.ClientSession, base: str) -> str:
    async with http.get(f"{base}/metrics") as response:
        assert response.status == 200
        return await response.text()
