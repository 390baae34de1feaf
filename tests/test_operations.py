"""Operating the service: the admin API, /metrics, structured logs and the OpenAPI document, for real."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from jssdk_service.config import Secret
from jssdk_service.sandbox import WeChatSandbox

from .helpers import (
    ACCOUNT_ENV,
    APP_ID,
    PAGE,
    SECRET,
    RunningService,
    ServiceFactory,
    make_account,
    metric_sample,
    serving,
    signing_ticket,
)

ADMIN = "admin-token-for-tests"
BEARER = {"Authorization": f"Bearer {ADMIN}"}


async def call(http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> tuple[int, Any, Any]:
    async with http.request(method, url, **kwargs) as response:
        body = await response.read()
        return response.status, response.headers, orjson.loads(body) if body.startswith(b"{") else body.decode()


async def warm(http: aiohttp.ClientSession, service: RunningService) -> None:
    status, _, _ = await call(http, "GET", f"{service.url}/v1/signature", params={"url": PAGE})
    assert status == 200


async def test_admin_is_off_without_a_token(service: RunningService, http: aiohttp.ClientSession) -> None:
    """Without JSSDK_ADMIN_TOKEN there is no admin API at all."""
    status, _, body = await call(http, "GET", f"{service.url}/admin/apps", headers=BEARER)
    assert (status, body["error"]["code"]) == (404, "not_found")


async def test_admin_needs_the_bearer_token(start_service: ServiceFactory, http: aiohttp.ClientSession) -> None:
    """No token, a wrong token or another scheme get 401 with WWW-Authenticate; the right one gets in."""
    service = await start_service(admin_token=Secret(ADMIN))
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {ADMIN}"}):
        status, response_headers, body = await call(http, "GET", f"{service.url}/admin/apps", headers=headers)
        assert (status, body["error"]["code"]) == (401, "unauthorized")
        assert response_headers["WWW-Authenticate"].startswith("Bearer")
        assert ADMIN not in str(body)
    assert (await call(http, "GET", f"{service.url}/admin/apps", headers=BEARER))[0] == 200


async def test_admin_apps_shows_ages_and_counts_never_values(
    start_service: ServiceFactory, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """GET /admin/apps gives each account's token and ticket age and time left, and calls today, but no credential."""
    service = await start_service(admin_token=Secret(ADMIN))
    await warm(http, service)
    status, _, body = await call(http, "GET", f"{service.url}/admin/apps", headers=BEARER)
    assert status == 200
    (entry,) = body["apps"]
    assert (entry["app"], entry["appId"], entry["ready"]) == ("main", APP_ID, True)
    assert 7000 < entry["ticket"]["expiresIn"] <= 7200 and entry["ticket"]["ageSeconds"] >= 0
    assert 7000 < entry["token"]["expiresIn"] <= 7200
    assert entry["upstreamCallsToday"] == {"token": 0, "stable_token": 1, "getticket": 1}
    assert entry["lastRefresh"].endswith("Z") and entry["lastError"] is None
    text = str(body)
    for value in [SECRET, *(c.value for c in sandbox.issued.values())]:
        assert value not in text


async def test_admin_refresh_gets_a_new_ticket_and_keeps_stable_token_limits(
    start_service: ServiceFactory, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """POST refresh fetches a ticket now; a forced stable token is refused locally within 30 s of the last one."""
    service = await start_service(admin_token=Secret(ADMIN))
    await warm(http, service)
    url = f"{service.url}/admin/apps/main/refresh"
    status, _, body = await call(http, "POST", url, headers=BEARER)
    assert (status, body["tokenRefreshed"]) == (200, False)
    assert sandbox.count("getticket") == 2 and sandbox.count("stable_token") == 1
    status, _, body = await call(http, "POST", url, params={"token": "1"}, headers=BEARER)
    assert (status, body["tokenRefreshed"]) == (200, True)
    assert sandbox.count("stable_token") == 2 and sandbox.count("getticket") == 3
    status, headers, body = await call(http, "POST", url, params={"token": "1"}, headers=BEARER)
    assert (status, body["error"]["code"]) == (429, "refresh_limited")
    assert 0 < int(headers["Retry-After"]) <= 30
    assert sandbox.count("stable_token") == 2
    status, _, body = await call(http, "POST", f"{service.url}/admin/apps/nobody/refresh", headers=BEARER)
    assert (status, body["error"]["code"]) == (404, "unknown_app")
    status, _, body = await call(http, "POST", url, params={"token": "maybe"}, headers=BEARER)
    assert (status, body["error"]["code"]) == (400, "invalid_request")
    # The new ticket signs.
    status, _, config = await call(http, "GET", f"{service.url}/v1/signature", params={"url": PAGE})
    ticket = signing_ticket(sandbox, config)
    assert ticket is not None and ticket.value == sandbox.tickets(APP_ID)[-1].value


async def test_metrics_count_upstream_calls_requests_latency_and_ttls(
    start_service: ServiceFactory, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """/metrics has one upstream sample per WeChat call, credential TTLs, request counts and a latency histogram."""
    sandbox.faults.script.append(-1)
    # Metrics live as long as the process: a name of its own keeps this account's samples apart.
    service = await start_service(accounts=(make_account(name="metered"),))
    await warm(http, service)
    before = (await call(http, "GET", f"{service.url}/metrics"))[2]
    for _ in range(5):
        await warm(http, service)
    await call(http, "GET", f"{service.url}/v1/signature", params={"url": "https://evil.com/"})
    status, headers, text = await call(http, "GET", f"{service.url}/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert metric_sample(text, "jssdk_upstream_calls_total", app="metered", api="stable_token", outcome="-1") == 1
    assert metric_sample(text, "jssdk_upstream_calls_total", app="metered", api="stable_token", outcome="ok") == 1
    assert metric_sample(text, "jssdk_upstream_calls_total", app="metered", api="getticket", outcome="ok") == 1
    ticket_ttl = metric_sample(text, "jssdk_credential_ttl_seconds", app="metered", kind="ticket")
    assert ticket_ttl is not None and 7000 < ticket_ttl <= 7200

    def grew(name: str, **labels: str) -> float:
        return (metric_sample(text, name, **labels) or 0) - (metric_sample(before, name, **labels) or 0)

    assert grew("jssdk_http_requests_total", route="/v1/signature", status="200") == 5
    assert grew("jssdk_http_requests_total", route="/v1/signature", status="403") == 1
    assert grew("jssdk_http_request_duration_seconds_bucket", route="/v1/signature", le="+Inf") == 6
    assert "example.com" not in text and SECRET not in text


async def test_json_logs_carry_request_ids_and_never_a_credential(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """Every log line is a JSON object; access lines carry the request id; no secret, token or ticket is logged."""
    log = tmp_path / "service.log"
    env = {**ACCOUNT_ENV, "JSSDK_LOG_LEVEL": "DEBUG"}
    async with serving(log, "--access-log", "--sandbox-expires-in", "3", env=env, ready="/readyz") as (url, _):
        status, headers, _ = await call(http, "GET", f"{url}/v1/share", params={"url": PAGE},
                                        headers={"X-Request-Id": "page-load-42"})  # fmt: skip
        assert (status, headers["X-Request-Id"]) == (200, "page-load-42")
        status, headers, _ = await call(http, "GET", f"{url}/v1/share", params={"url": "https://evil.com/"},
                                        headers={"X-Request-Id": "bad id with spaces"})  # fmt: skip
        assert status == 403 and re.fullmatch(r"[A-Za-z0-9._:=+-]{1,64}", headers["X-Request-Id"])
        await asyncio.sleep(3)  # a refresh or two
    lines = log.read_text().splitlines()
    entries = [orjson.loads(line) for line in lines]
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in entries)
    access = [e for e in entries if e["logger"] == "jssdk_service.access"]
    assert any(e.get("request_id") == "page-load-42" and e["route"] == "/v1/share" and e["status"] == 200
               for e in access)  # fmt: skip
    assert any("jsapi_ticket" in e["message"] and "refreshed" in e["message"] for e in entries)
    text = log.read_text()
    assert SECRET not in text
    assert "sandbox_token_" not in text and "sandbox_ticket_" not in text


async def test_text_logs_on_request(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """`--log-format text` writes plain lines with the request id in brackets."""
    log = tmp_path / "service.log"
    async with serving(log, "--log-format", "text", "--access-log", env=ACCOUNT_ENV, ready="/readyz") as (url, _):
        await call(http, "GET", f"{url}/healthz", headers={"X-Request-Id": "abc-1"})
    lines = log.read_text().splitlines()
    assert lines and not any(line.startswith("{") for line in lines)
    assert any("[abc-1]" in line and "/healthz" in line for line in lines)


@pytest.mark.parametrize("admin", [False, True])
async def test_openapi_document_lists_the_routes(
    start_service: ServiceFactory, http: aiohttp.ClientSession, admin: bool
) -> None:
    """/openapi.json is OpenAPI 3 and documents the public routes, and the admin routes when they exist."""
    service = await start_service(admin_token=Secret(ADMIN) if admin else None)
    status, _, document = await call(http, "GET", f"{service.url}/openapi.json")
    assert status == 200 and document["openapi"].startswith("3.")
    paths = set(document["paths"])
    assert {"/v1/signature", "/v1/share", "/healthz", "/readyz", "/metrics"} <= paths
    assert ("/admin/apps" in paths) is admin


async def test_the_live_service_matches_its_openapi_document(
    start_service: ServiceFactory, sandbox: WeChatSandbox, tmp_path: Path
) -> None:
    """Schemathesis fuzzes every documented operation: no 5xx, every response matches the document, data the
    document allows is accepted and data it forbids is refused (so the document and the handlers cannot drift)."""
    require_schemathesis = Path(sys.executable).with_name("st")
    assert require_schemathesis.exists(), "schemathesis is a test dependency"
    sandbox.daily_quota.update(getticket=10**9, stable_token=10**9)
    service = await start_service(admin_token=Secret(ADMIN))
    checks = ",".join(("not_a_server_error", "status_code_conformance", "content_type_conformance",
                       "response_schema_conformance", "response_headers_conformance",
                       "positive_data_acceptance", "negative_data_rejection"))  # fmt: skip
    # A body over the limit is refused with 413, which schemathesis does not count as a refusal by default.
    (tmp_path / "schemathesis.toml").write_text(
        "[checks.negative_data_rejection]\n"
        'expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]\n'
    )
    process = await asyncio.create_subprocess_exec(
        str(require_schemathesis), "run", f"{service.url}/openapi.json", "--checks", checks,
        "--header", f"Authorization: Bearer {ADMIN}", "--max-examples", "25", "--seed", "7",
        # One worker: with two, hypothesis's ast.parse in two threads at once can hit CPython 3.11's
        # "AST constructor recursion depth mismatch" SystemError (cpython#106905), a failure of the tool.
        "--phases", "examples,coverage,fuzzing", "--max-time", "40", "--workers", "1",
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()[-6000:]
