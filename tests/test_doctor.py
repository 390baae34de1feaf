"""The signature doctor and page reports: each cause named from real signatures of the service, over HTTP."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from prometheus_client import REGISTRY

from jssdk_service.config import Secret
from jssdk_service.reports import RECENT_REPORTS
from jssdk_service.sandbox import WeChatSandbox

from .helpers import APP_ID, CLI, OTHER_APP_ID, OTHER_SECRET, RunningService, ServiceFactory, make_account, wechat_sha1

PAGE = "https://example.com/shop/item?id=7"
IOS = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 MicroMessenger/8.0.47"
ANDROID = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/120.0 Mobile MicroMessenger/8.0.47"


async def signed(http: aiohttp.ClientSession, service: RunningService, url: str, app: str = "main") -> dict[str, Any]:
    """The evidence a page has after passing the service's signature for `url` to wx.config."""
    async with http.get(f"{service.url}/v1/signature", params={"url": url, "app": app}) as response:
        assert response.status == 200
        config = await response.json()
    return {key: config[key] for key in ("appId", "signature", "nonceStr", "timestamp")}


async def ask(http: aiohttp.ClientSession, service: RunningService, path: str = "/v1/doctor", **body: Any) -> Any:
    async with http.post(service.url + path, json=body) as response:
        assert response.status == 200, await response.text()
        return await response.json()


def codes(answer: Any) -> list[str]:
    return [finding["code"] for finding in answer["findings"]]


def by_code(answer: Any, code: str) -> dict[str, str]:
    return next(finding for finding in answer["findings"] if finding["code"] == code)


def sign_as_given(ticket: str, evidence: dict[str, Any], url: str) -> str:
    """The signature a hand-rolled signer that makes `url`'s mistake computes with the same ticket and nonce."""
    return wechat_sha1(ticket, evidence["nonceStr"], evidence["timestamp"], url)


def current_ticket(sandbox: WeChatSandbox) -> str:
    return max(sandbox.tickets(APP_ID), key=lambda t: t.issued_at).value


async def test_a_fresh_signature_is_valid_and_no_ticket_is_shown(
    service: RunningService, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """A config the service just signed is `signature_valid` (severity ok), and no ticket appears in the answer."""
    evidence = await signed(http, service, PAGE)
    async with http.post(f"{service.url}/v1/doctor", json={"url": PAGE, **evidence}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        assert response.headers["Cache-Control"] == "no-store"
        text = await response.text()
        answer = await response.json()
    assert answer["findings"] == [
        {"code": "signature_valid", "severity": "ok", "message": by_code(answer, "signature_valid")["message"]}
    ]
    assert all(ticket.value not in text for ticket in sandbox.tickets(APP_ID))


@pytest.mark.parametrize("field", ["nonceStr", "timestamp", "signature"])
async def test_values_changed_on_the_way_are_a_signature_mismatch(
    service: RunningService, http: aiohttp.ClientSession, field: str
) -> None:
    """A config whose nonceStr, timestamp or signature differs from the service's answer is `signature_mismatch`."""
    evidence = await signed(http, service, PAGE)
    changed = {"nonceStr": "0123456789abcdef", "timestamp": evidence["timestamp"] + 1, "signature": "0" * 40}
    answer = await ask(http, service, url=PAGE, **{**evidence, field: changed[field]})
    assert codes(answer) == ["signature_mismatch"]
    assert by_code(answer, "signature_mismatch")["severity"] == "error"


async def test_a_config_older_than_every_kept_ticket_is_stale(
    service: RunningService, http: aiohttp.ClientSession
) -> None:
    """A signature no kept ticket made, with a timestamp from before all of them, is `stale_ticket`."""
    evidence = await signed(http, service, PAGE)
    answer = await ask(http, service, url=PAGE, **{**evidence, "timestamp": evidence["timestamp"] - 86400})
    assert codes(answer) == ["stale_ticket"]
    assert "older than the oldest" in by_code(answer, "stale_ticket")["message"]


async def test_a_signature_from_an_earlier_ticket_is_stale(
    start_service: ServiceFactory, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """A config signed before the ticket was replaced is `stale_ticket`: a warning while it lives, an error after."""
    sandbox.ticket_expires_in = 2
    service = await start_service()
    evidence = await signed(http, service, PAGE)
    # Only the first ticket is short-lived: its successor outlives the test, so no third one arrives
    # (a first ticket may be renewed after a third of its life, its successor again before it expires).
    sandbox.ticket_expires_in = 7200
    credentials = service.credentials()
    deadline = time.monotonic() + 5
    while len(credentials.recent_tickets) < 2:
        assert time.monotonic() < deadline, "the ticket was not renewed"
        await asyncio.sleep(0.05)
    old = credentials.recent_tickets[1]
    if time.time() < old.expires_at - 0.1:
        answer = await ask(http, service, url=PAGE, **evidence)
        assert codes(answer) == ["stale_ticket"]
        assert by_code(answer, "stale_ticket")["severity"] == "warning"
    await asyncio.sleep(max(0.0, old.expires_at - time.time()) + 0.1)
    answer = await ask(http, service, url=PAGE, **evidence)
    stale = by_code(answer, "stale_ticket")
    assert (codes(answer)[0], stale["severity"]) == ("stale_ticket", "error")
    assert "the ticket before the current one" in stale["message"] and "expired" in stale["message"]
    assert all(ticket.value not in str(answer) for ticket in sandbox.tickets(APP_ID))


@pytest.mark.parametrize(
    ("page", "signed_for", "code"),
    [
        ("https://example.com/p?q=%E4%B8%AD", "https://example.com/p?q=中", "url_decoded"),
        ("https://example.com/a", "https://example.com:443/a", "port_in_url"),
        ("https://example.com/", "https://example.com", "trailing_slash"),
        ("https://example.com/a/", "https://example.com/a", "trailing_slash"),
        ("https://example.com/a", "http://example.com/a", "scheme_mismatch"),
    ],
)
async def test_a_signature_for_a_variant_of_the_page_url_names_the_variant(
    service: RunningService, http: aiohttp.ClientSession, page: str, signed_for: str, code: str
) -> None:
    """The service's signature for a decoded, ported, slashed or re-schemed URL is diagnosed as that mistake."""
    evidence = await signed(http, service, signed_for)
    answer = await ask(http, service, url=page, **evidence)
    assert codes(answer)[0] == code
    assert by_code(answer, code)["severity"] == "error"
    assert "signature_valid" not in codes(answer)


@pytest.mark.parametrize(
    ("page", "signed_for", "code"),
    [
        ("https://example.com/a?x=1#/route", "https://example.com/a?x=1#/route", "fragment_in_url"),
        ("https://example.com/a?x=1", quote("https://example.com/a?x=1", safe=""), "url_encoded"),
    ],
)
async def test_a_hand_rolled_signature_with_the_fragment_or_still_encoded_is_named(
    service: RunningService,
    sandbox: WeChatSandbox,
    http: aiohttp.ClientSession,
    page: str,
    signed_for: str,
    code: str,
) -> None:
    """A signer that keeps the #fragment or signs the encodeURIComponent form (which the service never does) is named."""
    evidence = await signed(http, service, page)
    evidence["signature"] = sign_as_given(current_ticket(sandbox), evidence, signed_for)
    answer = await ask(http, service, url=page, **evidence)
    assert codes(answer) == [code]


async def test_a_url_sent_percent_encoded_is_decoded_and_said(
    service: RunningService, http: aiohttp.ClientSession
) -> None:
    """A url sent still percent-encoded gets a `url_encoded` warning and is diagnosed as the URL it stands for."""
    evidence = await signed(http, service, PAGE)
    answer = await ask(http, service, url=quote(PAGE, safe=""), **evidence)
    assert codes(answer) == ["url_encoded", "signature_valid"]
    assert by_code(answer, "url_encoded")["severity"] == "warning"


@pytest.mark.parametrize(
    ("signed_for", "user_agent", "expected"),
    [
        ("landing", IOS, [("signature_valid", "ok")]),
        ("current", IOS, [("ios_landing_url", "error")]),
        ("current", ANDROID, [("signature_valid", "ok")]),
        ("landing", ANDROID, [("ios_landing_url", "error")]),
        ("current", None, [("ios_landing_url", "warning"), ("signature_valid", "ok")]),
        ("landing", None, [("ios_landing_url", "warning")]),
    ],
)
async def test_landing_and_current_url_are_judged_by_the_client(
    service: RunningService,
    http: aiohttp.ClientSession,
    signed_for: str,
    user_agent: str | None,
    expected: list[tuple[str, str]],
) -> None:
    """A single-page app's signature is right for the URL its WeChat verifies: the landing URL on iOS only."""
    landing, current = "https://example.com/app/", "https://example.com/app/orders/42"
    evidence = await signed(http, service, landing if signed_for == "landing" else current)
    body = {"url": current, "landingUrl": landing, **evidence}
    if user_agent is not None:
        body["userAgent"] = user_agent
    answer = await ask(http, service, **body)
    assert [(f["code"], f["severity"]) for f in answer["findings"]] == expected


async def test_the_appid_must_be_the_one_whose_ticket_signed(
    start_service: ServiceFactory, http: aiohttp.ClientSession
) -> None:
    """A signature by one account passed with another account's (or an unknown) appId is `app_id_mismatch`."""
    other = make_account(name="other", app_id=OTHER_APP_ID, secret=Secret(OTHER_SECRET), allowed_hosts=("example.com",))
    service = await start_service(accounts=(make_account(), other))
    evidence = await signed(http, service, PAGE, app="other")
    answer = await ask(http, service, url=PAGE, **{**evidence, "appId": APP_ID})
    assert codes(answer) == ["app_id_mismatch"]
    assert OTHER_APP_ID in by_code(answer, "app_id_mismatch")["message"]
    answer = await ask(http, service, url=PAGE, **{**evidence, "appId": "wx0000000000000000"})
    assert codes(answer) == ["app_id_mismatch"]
    assert codes(await ask(http, service, url=PAGE, **evidence)) == ["signature_valid"]


async def test_with_several_accounts_only_the_named_accounts_tickets_are_tried(
    start_service: ServiceFactory, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """The appId's account alone is re-computed with: another account's ticket, off the page's host, is never tried."""
    other = make_account(name="other", app_id=OTHER_APP_ID, secret=Secret(OTHER_SECRET), allowed_hosts=("shop.test",))
    service = await start_service(accounts=(make_account(), other))
    own = await signed(http, service, "https://shop.test/cart", app="other")
    answer = await ask(http, service, url="https://shop.test/cart", **own)
    assert codes(answer) == ["signature_valid"]
    assert OTHER_APP_ID in by_code(answer, "signature_valid")["message"]
    # The same nonce and timestamp signed for PAGE with the other account's ticket, passed with main's appId.
    evidence = await signed(http, service, PAGE)
    ticket = max(sandbox.tickets(OTHER_APP_ID), key=lambda t: t.issued_at).value
    foreign = {**evidence, "signature": sign_as_given(ticket, evidence, PAGE)}
    answer = await ask(http, service, url=PAGE, **foreign)
    assert codes(answer) == ["signature_mismatch"]
    assert APP_ID in by_code(answer, "signature_mismatch")["message"]
    assert OTHER_APP_ID not in str(answer)
    assert codes(await ask(http, service, url=PAGE, **evidence)) == ["signature_valid"]


async def test_with_several_accounts_the_appid_is_needed_unless_the_host_tells(
    start_service: ServiceFactory, http: aiohttp.ClientSession
) -> None:
    """Without appId the doctor uses the only account signing for the page's host, else says it needs the appId."""
    other = make_account(name="other", app_id=OTHER_APP_ID, secret=Secret(OTHER_SECRET), allowed_hosts=("example.com",))
    service = await start_service(accounts=(make_account(), other))
    evidence = await signed(http, service, PAGE)
    del evidence["appId"]
    answer = await ask(http, service, url=PAGE, **evidence)
    assert codes(answer) == ["signature_not_checked"]
    assert "send appId" in by_code(answer, "signature_not_checked")["message"]
    localhost = "http://localhost/p"
    evidence = await signed(http, service, localhost)
    del evidence["appId"]
    assert codes(await ask(http, service, url=localhost, **evidence)) == ["signature_valid"]
    answer = await ask(http, service, url="https://evil.test/p")
    assert codes(answer) == ["host_not_allowed"]
    assert "any account of this service" in by_code(answer, "host_not_allowed")["message"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://shop.evil.com/p", [("host_not_allowed", "error")]),
        ("http://localhost:8080/p", [("port_in_url", "error")]),
        ("https://example.com:443/p", [("port_in_url", "warning")]),
        ("https://a.example.com/p?x=1#top", []),
    ],
)
async def test_url_findings_need_no_signature(
    service: RunningService, http: aiohttp.ClientSession, url: str, expected: list[tuple[str, str]]
) -> None:
    """From the URL alone the doctor names a host outside the JS secure domains and an explicit port."""
    answer = await ask(http, service, url=url)
    assert [(f["code"], f["severity"]) for f in answer["findings"]] == expected


@pytest.mark.parametrize(
    ("err_msg", "code"),
    [
        ("updateAppMessageShareData:the permission value is offline verifying", "offline_verifying"),
        ("config:invalid url domain", "invalid_url_domain"),
        ("updateTimelineShareData:permission denied", "permission_denied"),
        ("config:invalid signature", "signature_not_checked"),
    ],
)
async def test_wechat_error_messages_are_explained(
    service: RunningService, http: aiohttp.ClientSession, err_msg: str, code: str
) -> None:
    """errMsg values WeChat gives are explained in plain words, each under its own code."""
    answer = await ask(http, service, url=PAGE, errMsg=err_msg)
    assert codes(answer) == [code]
    assert len(by_code(answer, code)["message"]) > 60


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json", "invalid_request"),
        (b"[]", "invalid_request"),
        (b"{}", "invalid_url"),
        (b'{"url": 7}', "invalid_url"),
        (b'{"url": "ftp://example.com/"}', "invalid_url"),
        (b'{"url": "https://example.com/", "landingUrl": "/relative"}', "invalid_url"),
        (b'{"url": "https://example.com/", "nonce": "abc"}', "invalid_request"),
        (b'{"url": "https://example.com/", "timestamp": "soon"}', "invalid_request"),
        (b'{"url": "https://example.com/", "timestamp": true}', "invalid_request"),
        (b'{"url": "https://example.com/", "signature": ["a"]}', "invalid_request"),
        (b'{"url": "https://example.com/", "userAgent": "' + b"x" * 2000 + b'"}', "invalid_request"),
    ],
)
async def test_bad_questions_are_400(
    service: RunningService, http: aiohttp.ClientSession, body: bytes, code: str
) -> None:
    """Malformed bodies, unknown fields, wrong types and bad URLs are 400 with a code and a message, never 500."""
    # A report must say what WeChat answered; with that given, it fails on the same fault as the question.
    report = body.replace(b'{"url"', b'{"errMsg": "config:invalid signature", "url"', 1)
    for path, data in (("/v1/doctor", body), ("/v1/report", report)):
        async with http.post(service.url + path, data=data, headers={"Content-Type": "application/json"}) as response:
            answer = await response.json()
            assert (response.status, answer["error"]["code"]) == (400, code)
            assert answer["error"]["message"]


async def test_a_report_is_diagnosed_counted_and_replayed(
    service: RunningService, http: aiohttp.ClientSession, all_logs: pytest.LogCaptureFixture
) -> None:
    """/v1/report answers the diagnosis, counts jssdk_reports_total, logs it, and the doctor replays it for the URL."""
    page = "https://example.com/spa/cart"
    evidence = await signed(http, service, "https://example.com/spa/")

    def counted() -> float:
        return REGISTRY.get_sample_value("jssdk_reports_total", {"app": "main"}) or 0.0

    before = counted()
    report = {"url": page, "landingUrl": "https://example.com/spa/", "errMsg": "config:invalid signature", **evidence}
    async with http.post(f"{service.url}/v1/report", json=report, headers={"User-Agent": ANDROID}) as response:
        assert response.status == 200
        diagnosis = await response.json()
    assert codes(diagnosis) == ["ios_landing_url"]
    assert counted() == before + 1
    assert any("reported 'config:invalid signature'" in r.getMessage() for r in all_logs.records)
    replay = await ask(http, service, url=page + "#anything")
    assert codes(replay) == ["reported", "ios_landing_url"]
    assert "config:invalid signature" in by_code(replay, "reported")["message"]
    assert codes(await ask(http, service, url="https://example.com/spa/other")) == []


async def test_reports_are_bounded(service: RunningService, http: aiohttp.ClientSession) -> None:
    """Only the last RECENT_REPORTS reports are kept: the oldest page's report is forgotten."""
    for n in range(RECENT_REPORTS + 1):
        await ask(http, service, "/v1/report", url=f"https://example.com/p{n}", errMsg="config:invalid signature")
    assert codes(await ask(http, service, url="https://example.com/p0")) == []
    assert codes(await ask(http, service, url="https://example.com/p1"))[0] == "reported"


async def test_a_report_needs_an_err_msg(service: RunningService, http: aiohttp.ClientSession) -> None:
    """A report without errMsg is 400 invalid_request."""
    async with http.post(f"{service.url}/v1/report", json={"url": PAGE}) as response:
        assert (response.status, (await response.json())["error"]["code"]) == (400, "invalid_request")


@pytest.mark.parametrize("path", ["/v1/doctor", "/v1/report"])
async def test_doctor_and_report_answer_cors_for_page_origins(
    service: RunningService, http: aiohttp.ClientSession, path: str
) -> None:
    """Pages on a JS secure domain get CORS headers on the preflight and the POST; other origins get none."""
    origin = "https://m.example.com"
    preflight = {"Origin": origin, "Access-Control-Request-Method": "POST"}
    async with http.options(service.url + path, headers=preflight) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == origin
        assert "POST" in response.headers["Access-Control-Allow-Methods"]
    body = {"url": PAGE, "errMsg": "config:invalid signature"}
    async with http.post(service.url + path, json=body, headers={"Origin": origin}) as response:
        assert response.headers["Access-Control-Allow-Origin"] == origin
    async with http.post(service.url + path, json=body, headers={"Origin": "https://evil.com"}) as response:
        assert "Access-Control-Allow-Origin" not in response.headers


async def run_cli(*args: str) -> tuple[int, str, str]:
    """`jssdk-service` in a child process, awaited so that the service in this event loop keeps answering."""
    process = await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_doctor_command_prints_findings_and_exits_by_severity(
    service: RunningService, http: aiohttp.ClientSession
) -> None:
    """`jssdk-service doctor` prints one line per finding and exits 0 when valid, 1 on an error, 2 on a bad question."""
    evidence = await signed(http, service, PAGE)
    config = ["--app-id", evidence["appId"], "--signature", evidence["signature"], "--nonce", evidence["nonceStr"],
              "--timestamp", str(evidence["timestamp"])]  # fmt: skip
    status, out, _ = await run_cli("doctor", "--service", service.url, *config, PAGE)
    assert (status, out.split()[:2]) == (0, ["ok", "signature_valid:"])
    status, out, _ = await run_cli("doctor", "--service", service.url, *config, "https://example.com/elsewhere")
    assert (status, out.split()[:2]) == (1, ["error", "signature_mismatch:"])
    status, _, err = await run_cli("doctor", "--service", service.url, "ftp://example.com/")
    assert status == 2 and "400" in err and "http" in err
