"""Secrets stay secret: no AppSecret, access_token or ticket in any response, log line or repr."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from jssdk_service.config import Secret, TokenURL
from jssdk_service.errors import TokenInvalid, UpstreamRejected
from jssdk_service.sandbox import SandboxServer, WeChatSandbox
from jssdk_service.sandbox_central import CentralTokenServer
from jssdk_service.tokens import AccessToken

from .helpers import APP_ID, SECRET, WECOM_KEY, WECOM_SECRET, ServiceFactory, make_account, make_wecom_account


async def test_no_secret_or_credential_in_logs_or_responses(
    start_service: ServiceFactory,
    sandbox: WeChatSandbox,
    http: aiohttp.ClientSession,
    all_logs: pytest.LogCaptureFixture,
) -> None:
    """Through a cold start, a knocked-out token, refreshes and every kind of error, nothing leaks."""
    sandbox.ticket_expires_in = 2
    good = await start_service()
    bad = await start_service(accounts=(make_account(secret=Secret("wrong-secret-xyz")),))
    bodies: list[str] = []

    async def fetch(base: str, path: str, **params: str) -> None:
        async with http.get(base + path, params=params) as response:
            bodies.append(await response.text())
            bodies.append(str(response.headers))

    for path in ("/v1/signature", "/v1/share", "/readyz", "/healthz", "/nope"):
        await fetch(good.url, path, url="https://example.com/")
        await fetch(bad.url, path, url="https://example.com/")
    sandbox.knock_out_tokens(APP_ID)
    sandbox.faults.script.extend([-1, "http500"])
    await asyncio.sleep(2.5)
    await fetch(good.url, "/v1/share", url="https://example.com/")
    await fetch(good.url, "/v1/share", url="https://evil.com/")

    issued = [cred.value for cred in sandbox.issued.values()]
    assert len(issued) >= 4
    haystack = "\n".join(bodies) + "\n".join(
        record.getMessage() + str(record.args) + (record.exc_text or "") for record in all_logs.records
    )
    for value in (SECRET, "wrong-secret-xyz", *issued):
        assert value not in haystack
    assert any("refused by getticket" in record.getMessage() for record in all_logs.records)


def test_reprs_and_messages_hide_values() -> None:
    """Credentials and upstream errors never show the token in repr or str."""
    token = AccessToken(value="ACCESS-TOKEN-VALUE", obtained_at=0, expires_in=7200)
    assert "ACCESS-TOKEN-VALUE" not in repr(token)
    assert "ACCESS-TOKEN-VALUE" not in repr(TokenInvalid(40001, "invalid credential", app_id=APP_ID))
    assert "hunter2" not in repr(Secret("hunter2")) + str(Secret("hunter2"))
    assert "40125" in str(UpstreamRejected(40125, "invalid appsecret"))


async def test_no_secret_or_credential_of_wecom_or_external_accounts_leaks(
    start_service: ServiceFactory,
    sandbox: WeChatSandbox,
    http: aiohttp.ClientSession,
    all_logs: pytest.LogCaptureFixture,
) -> None:
    """A WeCom app (both tickets, a knocked-out token) and an external account (its bearer, a dead token
    handed out): no secret, bearer, token or ticket in any answer or log line."""
    bearer = "central-bearer-never-shown-0123"
    central = CentralTokenServer(sandbox, [APP_ID], bearer=bearer)
    server = SandboxServer(sandbox, central=central)
    base = await server.start()
    try:
        sandbox.ticket_expires_in = 2
        source = TokenURL(url=f"{base}/sandbox/central/token?app={APP_ID}", auth=Secret(bearer))
        service = await start_service(accounts=(make_wecom_account(), make_account(secret=None, source=source)))
        bodies: list[str] = []

        async def fetch(path: str, **params: str) -> None:
            async with http.get(service.url + path, params=params) as response:
                bodies.append(await response.text() + str(response.headers))

        for app in ("wecom", "main"):
            for path in ("/v1/signature", "/v1/agent-signature", "/v1/share"):
                await fetch(path, url="https://example.com/", app=app)
        sandbox.knock_out_tokens(WECOM_KEY)
        await central.revoke(APP_ID)
        await asyncio.sleep(3.5)
        for path in ("/v1/share", "/readyz", "/metrics"):
            await fetch(path, url="https://example.com/", app="wecom")
            await fetch(path, url="https://example.com/", app="main")
    finally:
        await server.stop()
    issued = [cred.value for cred in sandbox.issued.values()]
    assert len(issued) >= 6
    haystack = "\n".join(bodies) + "\n".join(
        record.getMessage() + str(record.args) + (record.exc_text or "") for record in all_logs.records
    )
    assert "still hands out an access_token WeChat refuses" in haystack
    for value in (WECOM_SECRET, bearer, *issued):
        assert value not in haystack
