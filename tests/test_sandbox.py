"""The sandbox behaves like WeChat: lifetimes, overlaps, errcodes, quotas and faults, over HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from jssdk_service.sandbox import WeChatSandbox

from .conftest import APP_ID, SECRET


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
