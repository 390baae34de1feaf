"""The sandbox behaves like WeChat: lifetimes, overlaps, errcodes, quotas and faults, over HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from jssdk_service.sandbox import WeChatSandbox

from .helpers import APP_ID, OTHER_APP_ID, OTHER_SECRET, SECRET


async def token(client: httpx.AsyncClient, base: str, **overrides: Any) -> dict[str, Any]:
    params = {"grant_type": "client_credential", "appid": APP_ID, "secret": SECRET, **overrides}
    return dict((await client.get(f"{base}/cgi-bin/token", params=params)).json())


async def stable(client: httpx.AsyncClient, base: str, **overrides: Any) -> dict[str, Any]:
    body = {"grant_type": "client_credential", "appid": APP_ID, "secret": SECRET, **overrides}
    return dict((await client.post(f"{base}/cgi-bin/stable_token", json=body)).json())


async def ticket(client: httpx.AsyncClient, base: str, access_token: str) -> dict[str, Any]:
    params = {"access_token": access_token, "type": "jsapi"}
    return dict((await client.get(f"{base}/cgi-bin/ticket/getticket", params=params)).json())


async def test_classic_tokens_overlap_then_die(sandbox: WeChatSandbox, sandbox_url: str) -> None:
    """A new classic token leaves the previous one working for the overlap only, then 40001."""
    sandbox.classic_overlap = 0.5
    async with httpx.AsyncClient() as client:
        first = (await token(client, sandbox_url))["access_token"]
        second = await token(client, sandbox_url)
        assert second["access_token"] != first and second["expires_in"] == 7200
        assert (await ticket(client, sandbox_url, first))["errcode"] == 0
        await asyncio.sleep(0.6)
        assert (await ticket(client, sandbox_url, first))["errcode"] == 40001
        assert (await ticket(client, sandbox_url, second["access_token"]))["errcode"] == 0


async def test_stable_tokens_are_shared_and_renewed_late(sandbox: WeChatSandbox, sandbox_url: str) -> None:
    """stable_token returns the same token while valid, a new one in its last stretch, and expiry says 42001."""
    sandbox.token_expires_in = 2
    sandbox.renew_before = 0.5
    async with httpx.AsyncClient() as client:
        a, b = await stable(client, sandbox_url), await stable(client, sandbox_url)
        assert a["access_token"] == b["access_token"]
        await asyncio.sleep(1.6)
        c = await stable(client, sandbox_url)
        assert c["access_token"] != a["access_token"]
        assert (await ticket(client, sandbox_url, a["access_token"]))["errcode"] == 0
        await asyncio.sleep(0.5)
        assert (await ticket(client, sandbox_url, a["access_token"]))["errcode"] == 42001
        assert (await client.get(f"{sandbox_url}/cgi-bin/stable_token")).json()["errcode"] == 43002


async def test_force_refresh_is_limited(sandbox: WeChatSandbox, sandbox_url: str) -> None:
    """force_refresh replaces the token once, then not again within 30 seconds."""
    async with httpx.AsyncClient() as client:
        a = (await stable(client, sandbox_url))["access_token"]
        b = (await stable(client, sandbox_url, force_refresh=True))["access_token"]
        c = (await stable(client, sandbox_url, force_refresh=True))["access_token"]
        assert a != b == c
        assert (await ticket(client, sandbox_url, a))["errcode"] == 40001


async def test_credential_errors_use_wechats_errcodes(sandbox: WeChatSandbox, sandbox_url: str) -> None:
    """Bad grant, missing or unknown appid, wrong or missing secret and bad tokens answer WeChat's errcodes."""
    async with httpx.AsyncClient() as client:
        assert (await token(client, sandbox_url, grant_type="x"))["errcode"] == 40002
        assert (await token(client, sandbox_url, appid=""))["errcode"] == 41002
        assert (await token(client, sandbox_url, secret=""))["errcode"] == 41004
        assert (await token(client, sandbox_url, appid="wxunknown"))["errcode"] == 40013
        assert (await token(client, sandbox_url, secret="wrong"))["errcode"] == 40001
        assert (await stable(client, sandbox_url, secret="wrong"))["errcode"] == 40125
        assert (await ticket(client, sandbox_url, ""))["errcode"] == 41001
        assert (await ticket(client, sandbox_url, "made-up"))["errcode"] == 40001
        wrong = await stable(client, sandbox_url, secret="wrong")
        assert "rid:" in wrong["errmsg"]


async def test_ip_whitelist_says_which_ip(sandbox: WeChatSandbox, sandbox_url: str) -> None:
    """An account with an IP whitelist refuses other callers with 40164 quoting the caller's IP."""
    sandbox.accounts[APP_ID].ip_whitelist = frozenset({"10.9.8.7"})
    async with httpx.AsyncClient() as client:
        answer = await stable(client, sandbox_url)
    assert answer["errcode"] == 40164
    assert "127.0.0.1" in answer["errmsg"]


async def test_daily_quota_and_its_reset(sandbox: WeChatSandbox, sandbox_url: str) -> None:
    """Past the daily quota a call answers 45009 until clear_quota resets it; quota/get reports usage."""
    sandbox.daily_quota["token"] = 2
    async with httpx.AsyncClient() as client:
        live = (await token(client, sandbox_url))["access_token"]
        await token(client, sandbox_url)
        assert (await token(client, sandbox_url))["errcode"] == 45009
        quota = await client.post(f"{sandbox_url}/cgi-bin/openapi/quota/get", params={"access_token": live},
                                  json={"cgi_path": "/cgi-bin/token"})  # fmt: skip
        assert quota.json()["quota"] == {"daily_limit": 2, "used": 2, "remain": 0}
        cleared = await client.post(
            f"{sandbox_url}/cgi-bin/clear_quota/v2", json={"appid": APP_ID, "appsecret": SECRET}
        )
        assert cleared.json()["errcode"] == 0
        assert "access_token" in await token(client, sandbox_url)


async def test_faults_can_be_injected(sandbox: WeChatSandbox, sandbox_url: str) -> None:
    """Scripted faults come first, in order; rates then apply."""
    sandbox.faults.script.extend([-1, "http500", 45011])
    async with httpx.AsyncClient() as client:
        assert (await token(client, sandbox_url))["errcode"] == -1
        assert (await client.get(f"{sandbox_url}/cgi-bin/token")).status_code == 500
        assert (await token(client, sandbox_url))["errcode"] == 45011
        assert "access_token" in await token(client, sandbox_url)
        sandbox.faults.http500_rate = 1.0
        assert (await client.get(f"{sandbox_url}/cgi-bin/token")).status_code == 500
    assert [c.errcode for c in sandbox.calls] == [-1, 500, 45011, 0, 500]


async def test_counts_and_tickets_are_kept_per_account(sandbox: WeChatSandbox, sandbox_url: str) -> None:
    """count() and tickets() answer per account and outcome exactly as the call record says."""
    sandbox.faults.script.extend([-1])
    async with httpx.AsyncClient() as client:
        assert (await stable(client, sandbox_url))["errcode"] == -1
        mine = (await stable(client, sandbox_url))["access_token"]
        theirs = (await stable(client, sandbox_url, appid=OTHER_APP_ID, secret=OTHER_SECRET))["access_token"]
        for _ in range(2):
            assert (await ticket(client, sandbox_url, mine))["errcode"] == 0
        assert (await ticket(client, sandbox_url, theirs))["errcode"] == 0
        assert (await ticket(client, sandbox_url, "made-up"))["errcode"] == 40001
    for api in ("stable_token", "getticket", "token"):
        for app_id in (APP_ID, OTHER_APP_ID, "", None):
            for ok_only in (False, True):
                expected = sum(1 for c in sandbox.calls if c.api == api and app_id in (None, c.app_id)
                               and (not ok_only or c.errcode == 0))  # fmt: skip
                assert sandbox.count(api, app_id, ok_only=ok_only) == expected
    assert sandbox.count("stable_token", APP_ID) == 2 and sandbox.count("stable_token", APP_ID, ok_only=True) == 1
    assert [t.app_id for t in sandbox.tickets(APP_ID)] == [APP_ID, APP_ID]
    assert len(sandbox.tickets(OTHER_APP_ID)) == 1
    sandbox.knock_out_tokens(APP_ID)
    async with httpx.AsyncClient() as client:
        assert (await ticket(client, sandbox_url, mine))["errcode"] == 40001
        assert (await ticket(client, sandbox_url, theirs))["errcode"] == 0


async def test_stats_report_calls_and_tickets_per_second(sandbox: WeChatSandbox, sandbox_url: str) -> None:
    """GET /sandbox/stats counts each API's ok and failed calls and buckets tickets by the second they were issued."""
    sandbox.faults.script.extend(["http500"])
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{sandbox_url}/cgi-bin/token")).status_code == 500
        access_token = (await stable(client, sandbox_url))["access_token"]
        assert (await ticket(client, sandbox_url, access_token))["errcode"] == 0
        assert (await ticket(client, sandbox_url, access_token))["errcode"] == 0
        stats = (await client.get(f"{sandbox_url}/sandbox/stats")).json()
    unused = {"ok": 0, "failed": 0}  # WeCom's APIs: the sandbox knows the test WeCom app
    assert stats["calls"] == {"token": {"ok": 0, "failed": 1}, "stable_token": {"ok": 1, "failed": 0},
                              "getticket": {"ok": 2, "failed": 0}, "gettoken": unused,
                              "get_jsapi_ticket": unused, "get_agent_ticket": unused}  # fmt: skip
    expected: dict[str, int] = {}
    for issued in sandbox.tickets(APP_ID):
        second = str(int(issued.issued_at))
        expected[second] = expected.get(second, 0) + 1
    assert stats["ticketsIssuedPerSecond"] == expected and sum(expected.values()) == 2
    assert stats["inFlight"] == 0 and stats["peakInFlight"] == 1


async def test_in_flight_counts_calls_held_by_the_delay(sandbox: WeChatSandbox, sandbox_url: str) -> None:
    """Calls waiting out the injected delay are in flight; the peak keeps the most seen at once."""
    sandbox.faults.delay = 0.6
    async with httpx.AsyncClient() as client:
        calls = [asyncio.create_task(stable(client, sandbox_url)) for _ in range(5)]
        for _ in range(50):
            if sandbox.in_flight == 5:
                break
            await asyncio.sleep(0.01)
        assert sandbox.in_flight == 5
        during = (await client.get(f"{sandbox_url}/sandbox/stats")).json()
        answers = await asyncio.gather(*calls)
        after = (await client.get(f"{sandbox_url}/sandbox/stats")).json()
    assert all("access_token" in a for a in answers)
    assert during["inFlight"] == 5 and during["peakInFlight"] == 5
    assert after["inFlight"] == 0 and after["peakInFlight"] == 5
    assert sandbox.in_flight == 0 and sandbox.peak_in_flight == 5
