"""Accounts whose access_token a central server owns: read from its URL or its Redis key, never fetched
from a token API; a dead token re-read once, then reported; the source's own failures said as such."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from jssdk_service.cache import RawKeys
from jssdk_service.config import Secret, TokenRedisKey, TokenURL
from jssdk_service.sandbox import SandboxServer, WeChatSandbox
from jssdk_service.sandbox_central import CentralFault, CentralTokenServer

from .helpers import (
    APP_ID,
    FAST_RETRY,
    PAGE,
    WECOM_KEY,
    WECOM_SECRET,
    Fleet,
    RedisServer,
    ServiceFactory,
    make_account,
    make_wecom_account,
    short_lifetimes,
    sign,
    steady_traffic,
    verifies,
)

BEARER = "central-bearer-token-0123456789"
ADMIN = "external-admin-token-0123456789"
TOKEN_APIS = ("token", "stable_token", "gettoken")


@pytest.fixture
async def central(sandbox: WeChatSandbox) -> AsyncIterator[tuple[CentralTokenServer, str]]:
    """The central token server of the test account and the WeCom app, over HTTP with a bearer: it and its URL."""
    server = CentralTokenServer(sandbox, [APP_ID, WECOM_KEY], bearer=BEARER)
    http_server = SandboxServer(sandbox, central=server)
    url = await http_server.start()
    yield server, url
    await http_server.stop()


def from_url(base: str, app: str, bearer: str | None = BEARER) -> TokenURL:
    return TokenURL(url=f"{base}/sandbox/central/token?app={app}", auth=None if bearer is None else Secret(bearer))


def token_calls(sandbox: WeChatSandbox) -> int:
    return sum(sandbox.count(api) for api in TOKEN_APIS)


async def unready_reason(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    """The one account /readyz lists as not ready (it must be 503)."""
    async with http.get(f"{base}/readyz") as response:
        body = await response.json()
        assert response.status == 503, body
    (account,) = body["accounts"]
    assert account["ready"] is False
    return dict(account)


async def test_external_accounts_of_both_kinds_never_call_a_token_api(
    start_service: ServiceFactory, sandbox: WeChatSandbox, central: tuple[CentralTokenServer, str],
    http: aiohttp.ClientSession, all_logs: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """A cold burst of 300 requests each on an official account and a WeCom app that read their token from
    the central server: one source read and one call per ticket each, no token API at all, and the bearer
    never shown."""
    server, base = central
    sandbox.faults.delay = 0.2
    service = await start_service(accounts=(
        make_account(secret=None, source=from_url(base, APP_ID)),
        make_wecom_account(secret=None, source=from_url(base, WECOM_KEY)),
    ), admin_token=Secret(ADMIN))  # fmt: skip
    requests = [sign(http, service.url, f"{PAGE}?n={i}", ("main", "wecom")[i % 2]) for i in range(600)]
    async with http.get(f"{service.url}/v1/share", params={"url": PAGE, "app": "wecom"}) as response:
        wecom_share = await response.json()
        assert response.status == 200, wecom_share
    results = await asyncio.gather(*requests)
    assert {status for status, _ in results} == {200}
    assert all(verifies(sandbox, body, f"{PAGE}?n={i}") for i, (_, body) in enumerate(results))
    assert verifies(sandbox, wecom_share["config"])
    assert token_calls(sandbox) == 0
    assert sandbox.count("central") == 2
    assert (server.reads[APP_ID], server.reads[WECOM_KEY]) == (1, 1)
    assert (sandbox.count("getticket"), sandbox.count("get_jsapi_ticket"), sandbox.count("get_agent_ticket")) == (
        1, 1, 1,
    )  # fmt: skip
    async with http.get(f"{service.url}/admin/apps", headers={"Authorization": f"Bearer {ADMIN}"}) as response:
        apps = {entry["app"]: entry for entry in (await response.json())["apps"]}
    assert (apps["main"]["tokenSource"], apps["main"]["upstreamCallsToday"]) == (
        "external", {"token_source": 1, "getticket": 1},
    )  # fmt: skip
    assert apps["wecom"]["upstreamCallsToday"] == {"token_source": 1, "get_jsapi_ticket": 1, "get_agent_ticket": 1}
    assert BEARER not in all_logs.text + str(apps)
    assert not any(token.value in all_logs.text for token in (await server.current(APP_ID),
                                                              await server.current(WECOM_KEY)))  # fmt: skip


async def test_a_rotated_token_is_picked_up_on_the_next_refresh(
    start_service: ServiceFactory, sandbox: WeChatSandbox, central: tuple[CentralTokenServer, str],
    http: aiohttp.ClientSession,
) -> None:  # fmt: skip
    """The owner rotates its token (the old one dies at WeChat): tickets keep coming, nothing fails."""
    server, base = central
    sandbox.ticket_expires_in = 2
    service = await start_service(accounts=(make_account(secret=None, source=from_url(base, APP_ID)),))
    assert (await sign(http, service.url))[0] == 200
    await server.rotate(APP_ID)
    assert await steady_traffic(http, sandbox, [service.url] * 3, 4, pause=0.05) > 50
    assert sandbox.count("getticket") >= 3
    assert sandbox.count("getticket", ok_only=True) == sandbox.count("getticket")
    assert token_calls(sandbox) == 0


@pytest.mark.parametrize("kind", ["official", "wecom"])
async def test_a_dead_token_is_read_again_once_then_reported(
    start_service: ServiceFactory, sandbox: WeChatSandbox, central: tuple[CentralTokenServer, str],
    http: aiohttp.ClientSession, kind: str,
) -> None:  # fmt: skip
    """The owner hands out a token WeChat refuses: one ticket call, one re-read after a pause, then /readyz
    says the source hands out a dead token; no loop; once the owner has a new one, an admin refresh recovers."""
    server, base = central
    key, api = (APP_ID, "getticket") if kind == "official" else (WECOM_KEY, "get_jsapi_ticket")
    account = (make_account if kind == "official" else make_wecom_account)(secret=None, source=from_url(base, key))
    await server.revoke(key)
    service = await start_service(accounts=(account,), admin_token=Secret(ADMIN))
    status, body = await sign(http, service.url)
    assert (status, body["error"]["code"]) == (503, "upstream_unavailable")
    assert "still hands out an access_token WeChat refuses (errcode 4" in body["error"]["message"]
    reason = await unready_reason(http, service.url)
    assert "still hands out an access_token WeChat refuses" in reason["reason"]
    assert "server that owns the token must fetch a new one" in reason["fix"]
    await asyncio.sleep(1.5)
    assert server.reads[key] == 2
    assert len([c for c in sandbox.calls if c.api == api and c.errcode in (40001, 40014)]) == 1
    assert sandbox.count(api) == 1 and token_calls(sandbox) == 0
    await server.rotate(key)
    async with http.post(f"{service.url}/admin/apps/{account.name}/refresh",
                         headers={"Authorization": f"Bearer {ADMIN}"}) as response:  # fmt: skip
        assert response.status == 200, await response.text()
    status, config = await sign(http, service.url)
    assert status == 200 and verifies(sandbox, config)


@pytest.mark.parametrize(
    ("fault", "said"),
    [
        ("timeout", "timed out (ReadTimeout)"),
        ("http500", "answered HTTP 500"),
        ("bad_json", "it did not answer JSON"),
        ("unauthorized", "refused our credentials (HTTP 401)"),
        ("wechat_error", "it answered errcode 40001 instead of a token"),
    ],
)
async def test_the_sources_own_failures_are_reported_as_such(
    start_service: ServiceFactory, sandbox: WeChatSandbox, central: tuple[CentralTokenServer, str],
    http: aiohttp.ClientSession, fault: CentralFault, said: str,
) -> None:  # fmt: skip
    """A timeout, a 5xx, bad JSON, a refused bearer and an errcode in place of a token are each named on
    /readyz (with a fix) and in the 503; WeChat is never asked for a ticket with nothing."""
    server, base = central
    server.fault = fault
    service = await start_service(accounts=(make_account(secret=None, source=from_url(base, APP_ID)),),
                                  retry_policy=replace(FAST_RETRY, read_timeout=0.5))  # fmt: skip
    status, body = await sign(http, service.url)
    assert (status, body["error"]["code"]) == (503, "upstream_unavailable")
    reason = await unready_reason(http, service.url)
    assert said in reason["reason"] and reason["fix"], reason
    assert "/sandbox/central/token" in reason["reason"] and BEARER not in str(reason)
    assert sandbox.count("getticket") == token_calls(sandbox) == 0


async def test_a_wrong_bearer_is_refused_by_the_source(
    start_service: ServiceFactory, central: tuple[CentralTokenServer, str], http: aiohttp.ClientSession
) -> None:
    """No bearer, or the wrong one: the source's 401 is reported with the setting to check."""
    _, base = central
    for bearer in (None, "not-the-bearer"):
        service = await start_service(accounts=(make_account(secret=None, source=from_url(base, APP_ID, bearer)),))
        assert (await sign(http, service.url))[0] == 503
        reason = await unready_reason(http, service.url)
        assert "refused our credentials (HTTP 401)" in reason["reason"]
        assert "token_url_auth_env" in reason["fix"]
        assert "not-the-bearer" not in str(reason)


@pytest.mark.parametrize("record", ["json", "plain"])
async def test_a_token_kept_in_redis_is_read_with_its_ttl(
    start_service: ServiceFactory, sandbox: WeChatSandbox, redis_server: RedisServer, http: aiohttp.ClientSession,
    record: Any,
) -> None:  # fmt: skip
    """The owner writes the token to a Redis key (JSON with expires_at, or the token with a TTL): the
    service signs with it, calls no token API, and follows a rotation; a key nobody writes is reported."""
    keys = RawKeys(redis_server.url)
    server = CentralTokenServer(sandbox, [APP_ID], keys=keys, record=record)
    await server.start()
    try:
        sandbox.ticket_expires_in = 2
        service = await start_service(accounts=(
            make_account(secret=None, source=TokenRedisKey(key=server.key(APP_ID), redis_url=redis_server.url)),
        ))  # fmt: skip
        status, config = await sign(http, service.url)
        assert status == 200 and verifies(sandbox, config)
        await server.rotate(APP_ID)
        assert await steady_traffic(http, sandbox, [service.url], 3, pause=0.05) > 20
        assert sandbox.count("getticket") >= 2
        assert sandbox.count("getticket", ok_only=True) == sandbox.count("getticket")
        assert token_calls(sandbox) == 0
        assert (await service.credentials().calls_today())["token_source"] >= 2  # its reads are counted too
        missing = await start_service(accounts=(
            make_account(secret=None, source=TokenRedisKey(key="nobody:writes:this", redis_url=redis_server.url)),
        ))  # fmt: skip
        assert (await sign(http, missing.url))[0] == 503
        reason = await unready_reason(http, missing.url)
        assert "Redis key 'nobody:writes:this'" in reason["reason"] and "does not exist" in reason["reason"]
    finally:
        await server.stop()
        await keys.close()


async def test_a_fleet_reads_the_source_and_fetches_tickets_once_per_lifetime(
    sandbox: WeChatSandbox, central: tuple[CentralTokenServer, str], redis_server: RedisServer, fleet: Fleet,
    http: aiohttp.ClientSession, tmp_path: Path,
) -> None:  # fmt: skip
    """Two `serve` processes on one Redis, an external official account and a WeCom app in a TOML file:
    a cold burst at both costs one source read, one gettoken and one call per ticket for the fleet, and so
    does each short lifetime after it."""
    server, base = central
    config = tmp_path / "accounts.toml"
    config.write_text(f"""
[[accounts]]
name = "main"
app_id = "{APP_ID}"
token_source = "external"
token_url = "{base}/sandbox/central/token?app={APP_ID}"
token_url_auth_env = "CENTRAL_BEARER"
allowed_hosts = ["example.com"]

[[accounts]]
name = "wecom"
kind = "wecom"
corp_id = "{WECOM_KEY.split(":")[0]}"
agent_id = {WECOM_KEY.split(":")[1]}
secret_env = "WECOM_APP_SECRET"
allowed_hosts = ["example.com"]
""")
    sandbox.faults.delay = 0.2
    urls = await fleet(2, JSSDK_CONFIG=str(config), JSSDK_APP_ID="", JSSDK_APP_SECRET="", JSSDK_ALLOWED_HOSTS="",
                       JSSDK_ADMIN_TOKEN=ADMIN, CENTRAL_BEARER=BEARER, WECOM_APP_SECRET=WECOM_SECRET)  # fmt: skip
    calls = [http.get(f"{url}{path}", params={"url": PAGE, "app": app})
             for url in urls for path in ("/v1/signature", "/v1/share") for app in ("main", "wecom")
             for _ in range(20)]  # fmt: skip

    async def status_of(call: Any) -> int:
        async with call as response:
            return int(response.status)

    assert set(await asyncio.gather(*(status_of(c) for c in calls))) == {200}
    assert server.reads[APP_ID] == 1
    assert token_calls(sandbox) == 1 and sandbox.count("gettoken") == 1
    assert (sandbox.count("getticket"), sandbox.count("get_jsapi_ticket"), sandbox.count("get_agent_ticket")) == (
        1, 1, 1,
    )  # fmt: skip
    # From now on tickets live 3 s: over 7 s the fleet refreshes each about once a lifetime, no more.
    short_lifetimes(sandbox, 3)
    sandbox.faults.delay = 0.0
    for app in ("main", "wecom"):
        async with http.post(f"{urls[0]}/admin/apps/{app}/refresh", headers={"Authorization": f"Bearer {ADMIN}"}) as r:
            assert r.status == 200, await r.text()
    deadline = time.monotonic() + 7
    while time.monotonic() < deadline:
        rounds = [
            http.get(f"{url}/v1/share", params={"url": PAGE, "app": app}) for url in urls for app in ("main", "wecom")
        ]
        assert set(await asyncio.gather(*(status_of(c) for c in rounds))) == {200}
        await asyncio.sleep(0.1)
    for api in ("getticket", "get_jsapi_ticket", "get_agent_ticket"):
        assert 3 <= sandbox.count(api) <= 7, (api, sandbox.count(api))
        assert sandbox.count(api, ok_only=True) == sandbox.count(api)
    assert server.reads[APP_ID] == sandbox.count("getticket")  # one read for each ticket, never per request
