"""Third-party platforms in a fleet: `serve` processes on one Redis share the platform's credentials and authorizers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from jssdk_service.sandbox import SandboxAccount, WeChatSandbox

from .helpers import (
    ACCOUNT_ENV,
    APP_ID,
    AUTHORIZER,
    CLI,
    COMPONENT_APPID,
    PLATFORM_ENV,
    PLATFORM_TOML,
    SECRET,
    Fleet,
    RedisServer,
    clean_environment,
    events_url,
    free_port,
    sandbox_platform,
    sign,
    start_process,
    stop_process,
    verifies,
    wait_answering,
)

AUTHORIZERS = [AUTHORIZER, "wxa00000000000a002", "wxa00000000000a003"]


@pytest.fixture
def sandbox() -> WeChatSandbox:
    """An emulator that knows the test official account and the test platform."""
    return WeChatSandbox([SandboxAccount(app_id=APP_ID, secret=SECRET)], platforms=[sandbox_platform()], seed=7)


@pytest.fixture
def platform_config(tmp_path: Path) -> dict[str, str]:
    """The environment of a `serve` process with the test account and the test platform."""
    config = tmp_path / "platform.toml"
    config.write_text(PLATFORM_TOML)
    return {"JSSDK_CONFIG": str(config), **PLATFORM_ENV}


async def test_two_processes_share_one_component_token_and_one_ticket_per_authorizer(
    sandbox: WeChatSandbox, fleet: Fleet, platform_config: dict[str, str], http: aiohttp.ClientSession
) -> None:
    """Authorizations pushed to one process are signed for by both: a cold burst at both costs one component
    token and one ticket per authorizer for the fleet, and every config verifies."""
    urls = await fleet(2, **platform_config)
    sandbox.platforms[COMPONENT_APPID].callback_url = events_url(urls[0])
    assert (await sandbox.push_verify_ticket(COMPONENT_APPID)).body == "success"
    for app_id in AUTHORIZERS:
        assert (await sandbox.authorize(COMPONENT_APPID, app_id)).body == "success"
    await asyncio.sleep(0.5)  # the other process hears of them (pub/sub)
    answers = await asyncio.gather(*(sign(http, url, app=app_id)
                                     for url in urls for app_id in AUTHORIZERS for _ in range(30)))  # fmt: skip
    assert {status for status, _ in answers} == {200}, answers[:3]
    assert all(verifies(sandbox, config) for _, config in answers[::29])
    assert {config["appId"] for _, config in answers} == set(AUTHORIZERS)
    assert sandbox.count("api_component_token") == 1
    assert sandbox.count("api_query_auth") == len(AUTHORIZERS)
    for app_id in AUTHORIZERS:
        assert sandbox.count("getticket", app_id) == 1
    # Removed through one process, unknown at both.
    assert (await sandbox.unauthorize(COMPONENT_APPID, AUTHORIZERS[0])).body == "success"
    await asyncio.sleep(0.5)
    for url in urls:
        assert (await sign(http, url, app=AUTHORIZERS[0]))[0] == 404


async def test_a_restart_keeps_the_authorizers(
    sandbox: WeChatSandbox, sandbox_url: str, redis_server: RedisServer, redis_client: aioredis.Redis,
    platform_config: dict[str, str], http: aiohttp.ClientSession, tmp_path: Path,
) -> None:  # fmt: skip
    """The authorizers' refresh tokens live in Redis: a process started after the one that learned them signs
    for them with no new authorization, and a new access token comes from the kept refresh token."""
    env = clean_environment(**{**ACCOUNT_ENV, **platform_config, "JSSDK_WECHAT_API_BASE": sandbox_url,
                               "JSSDK_CACHE_URL": redis_server.url})  # fmt: skip

    async def started(name: str) -> tuple[asyncio.subprocess.Process, str]:
        port = free_port()
        log = tmp_path / f"{name}.log"
        process = await start_process(log, [*CLI, "serve"], {**env, "JSSDK_PORT": str(port)})
        url = f"http://127.0.0.1:{port}"
        await wait_answering(process, f"{url}/healthz", log=log)
        return process, url

    first, url = await started("first")
    sandbox.platforms[COMPONENT_APPID].callback_url = events_url(url)
    await sandbox.push_verify_ticket(COMPONENT_APPID)
    await sandbox.authorize(COMPONENT_APPID, AUTHORIZER)
    assert (await sign(http, url, app=AUTHORIZER))[0] == 200
    assert await stop_process(first) == 0
    # Everything but the authorizers' table goes, as if the credentials had expired meanwhile; the
    # latest verify ticket stays (WeChat pushes one every 10 minutes).
    ticket_key = f"jssdk:component:{COMPONENT_APPID}:verify-ticket"
    ticket = await redis_client.get(ticket_key)
    assert ticket is not None
    kept = [str(key) for key in await redis_client.keys("jssdk:*") if not str(key).endswith(":authorizers")]
    await redis_client.delete(*kept)
    await redis_client.set(ticket_key, ticket)
    second, url = await started("second")
    try:
        status, config = await sign(http, url, app=AUTHORIZER)
        assert status == 200 and config["appId"] == AUTHORIZER and verifies(sandbox, config)
        assert sandbox.count("api_query_auth") == 1  # no new authorization
        assert sandbox.count("api_authorizer_token", AUTHORIZER) == 1  # from the kept refresh token
    finally:
        assert await stop_process(second) == 0
