"""Fleet news and cache health: what one process does is seen by the others at once, and Redis problems are named.

Every credential a process obtains is announced on the Redis channel `jssdk:news` (the key only,
never a value), and the others adopt it from the shared cache; `RedisCache.watch` probes Redis
with no traffic, so /readyz follows an outage and its end, and says what is wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from jssdk_service.cache import NEWS_CHANNEL, RedisCache
from jssdk_service.config import Secret
from jssdk_service.sandbox import WeChatSandbox

from .helpers import (
    APP_ID,
    SECRET,
    Fleet,
    RedisServer,
    ServiceFactory,
    logged,
    readyz,
    require_binary,
    sign,
    signing_ticket,
)

ADMIN_TOKEN = "admin-token-for-the-news-tests-0123456789"
WRONG_PASSWORD = "not-the-redis-password-xyz"
RIGHT_PASSWORD = "the-redis-password-abc"
# The processes stop at once when the test ends (nothing is in flight to drain).
QUICK_STOP = {"JSSDK_DRAIN_SECONDS": "0"}


async def within(seconds: float, condition: Callable[[], Any], *, every: float = 0.2) -> float:
    """Wait until `condition()` (sync or async) is true; the seconds it took, or a failure after `seconds`."""
    started = time.monotonic()
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic() - started
        assert time.monotonic() - started < seconds, f"not within {seconds:g} s"
        await asyncio.sleep(every)


async def test_an_admin_refresh_in_one_process_is_used_by_another_within_a_second(
    fleet: Fleet, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """A ticket forced by the admin API in process A signs process B's next requests within 1 s, with no call of B's own."""
    url_a, url_b = await fleet(2, JSSDK_ADMIN_TOKEN=ADMIN_TOKEN, **QUICK_STOP)
    for url in (url_a, url_b):
        status, config = await sign(http, url)
        assert status == 200, config
        assert signing_ticket(sandbox, config) == sandbox.tickets(APP_ID)[-1]
    before = sandbox.count("getticket")
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with http.post(f"{url_a}/admin/apps/{APP_ID}/refresh", headers=headers) as response:
        assert response.status == 200, await response.text()
    refreshed_at = time.monotonic()
    newest = sandbox.tickets(APP_ID)[-1]
    assert sandbox.count("getticket") == before + 1

    while True:
        status, config = await sign(http, url_b)
        assert status == 200, config
        if signing_ticket(sandbox, config) == newest:
            break
        assert time.monotonic() - refreshed_at < 1.0, "process B still signs with the old ticket after 1 s"
        await asyncio.sleep(0.05)
    assert sandbox.count("getticket") == before + 1, "process B fetched a ticket of its own"
    assert sandbox.tickets(APP_ID)[-1] == newest


async def test_without_news_a_memory_cache_still_refreshes_and_is_ready(
    start_service: ServiceFactory, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """On memory:// (no Redis, no news) an admin refresh signs the next request with the new ticket and /readyz is ok."""
    running = await start_service(cache_url="memory://", admin_token=Secret(ADMIN_TOKEN))
    status, config = await sign(http, running.url)
    assert status == 200, config
    async with http.post(
        f"{running.url}/admin/apps/{APP_ID}/refresh", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as response:
        assert response.status == 200, await response.text()
    status, config = await sign(http, running.url)
    assert status == 200, config
    assert signing_ticket(sandbox, config) == sandbox.tickets(APP_ID)[-1]
    assert len(sandbox.tickets(APP_ID)) == 2
    _, body = await readyz(http, running.url)
    assert body["cache"] == {"backend": "memory", "ok": True}
    assert "degraded" not in body


async def test_redis_stopped_and_started_with_no_traffic_shows_in_readyz_both_ways(
    fleet: Fleet, redis_server: RedisServer, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """With no signature traffic, /readyz reports the cache down within 5 s of Redis dying and up within 5 s of its return."""
    (url,) = await fleet(1, **QUICK_STOP)
    assert (await sign(http, url))[0] == 200
    assert (await readyz(http, url))[1]["cache"]["ok"] is True
    await redis_server.kill()

    async def down() -> bool:
        _, body = await readyz(http, url)
        return body["cache"]["ok"] is False and "degraded" in body

    await within(5.0, down)
    await redis_server.start()

    async def up() -> bool:
        _, body = await readyz(http, url)
        return body["cache"]["ok"] is True and "degraded" not in body

    await within(5.0, up)
    lines = (tmp_path / "service-0.log").read_text().splitlines()
    assert len([line for line in lines if "unreachable" in line and "serving from memory" in line]) == 1, lines
    assert len([line for line in lines if "reachable again" in line]) == 1, lines


async def test_a_refused_password_and_a_missing_database_are_reported_as_such(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong Redis password and a database number Redis does not have are each named in health() and the log, without the password."""
    server = RedisServer(require_binary("redis-server"), tmp_path, password=RIGHT_PASSWORD)
    await server.start()
    try:
        wrong_url = server.url.replace("redis://", f"redis://:{WRONG_PASSWORD}@")
        for cache, phrase in (
            (RedisCache(server.url, password=WRONG_PASSWORD), "password"),
            (RedisCache(wrong_url), "password"),
            (RedisCache(replace_db(server.url, 99), password=RIGHT_PASSWORD), "database 99"),
        ):
            caplog.clear()
            try:
                assert await cache.get("k") is None
                health = cache.health()
                assert health["ok"] is False
                assert phrase in health["error"]
                messages = [r.getMessage() for r in caplog.records if r.name == "jssdk_service.cache"]
                assert len(messages) == 1 and phrase in messages[0], messages
                for text in (str(health), repr(cache), *messages):
                    assert WRONG_PASSWORD not in text and RIGHT_PASSWORD not in text
            finally:
                await cache.close()
    finally:
        await server.kill()


def replace_db(url: str, db: int) -> str:
    """`url` (ending in /<db>) naming database `db` instead."""
    return f"{url.rsplit('/', 1)[0]}/{db}"


async def through_an_outage(redis_server: RedisServer, cache: RedisCache) -> None:
    """Kill Redis, wait until `cache` says so, and start Redis again."""
    await redis_server.kill()
    await within(5.0, lambda: cache.health()["ok"] is False, every=0.1)
    await redis_server.start()


async def stop_watching(watcher: asyncio.Task[None]) -> None:
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher


async def test_the_probe_notices_an_outage_and_its_end_with_no_operation(
    redis_server: RedisServer, redis_cache: RedisCache
) -> None:
    """`watch()` alone turns health() false within 5 s of Redis dying and true within 5 s of its return, and stops when cancelled."""
    cache = redis_cache
    watcher = asyncio.create_task(cache.watch(lambda key: None))
    try:
        await asyncio.sleep(0.1)
        assert cache.health()["ok"] is True
        await through_an_outage(redis_server, cache)
        await within(5.0, lambda: cache.health()["ok"] is True, every=0.1)
    finally:
        await stop_watching(watcher)
    assert watcher.cancelled()


async def test_connections_pooled_before_a_restart_work_once_redis_is_back(
    redis_server: RedisServer, redis_cache: RedisCache, caplog: pytest.LogCaptureFixture
) -> None:
    """Once Redis is back, every operation succeeds, on connections pooled before the outage too, and the outage is logged once."""
    cache = redis_cache
    # Two operations at once leave two connections in the pool.
    await asyncio.gather(cache.set("a", {"value": "a"}, 60), cache.set("b", {"value": "b"}, 60))
    await redis_server.kill()
    assert await cache.get("a") is None
    await redis_server.start()
    await cache.set("k", {"value": "v"}, 60)
    assert cache.health()["ok"] is True
    assert list(await asyncio.gather(cache.get("k"), cache.get("k"))) == [{"value": "v"}, {"value": "v"}]
    assert cache.health()["ok"] is True
    assert logged(caplog, "unreachable") == 1


async def test_the_listener_passes_on_other_processes_news_again_after_an_outage(
    redis_server: RedisServer, redis_cache: RedisCache
) -> None:
    """`watch()` passes another sender's news on (never its own), and subscribes again once Redis is back."""
    cache = redis_cache
    heard: list[str] = []
    watcher = asyncio.create_task(cache.watch(heard.append))
    client = aioredis.Redis(port=redis_server.port)
    rounds = itertools.count()

    async def tell(phase: str) -> bool:
        """Another process's news, this cache's own, and the other's again, until both of the other's are heard.

        Redis delivers a channel's messages in the order it received them: once the first and the
        last of a round are heard, this cache's own announcement between them was delivered too.
        """
        n = next(rounds)
        with contextlib.suppress(aioredis.ConnectionError, OSError):
            await client.publish(NEWS_CHANNEL, f"another-process {phase}-{n}-first")
            await cache.announce(f"own-{phase}-{n}")
            await client.publish(NEWS_CHANNEL, f"another-process {phase}-{n}-last")
        await asyncio.sleep(0.05)
        return any(f"{phase}-{i}-first" in heard and f"{phase}-{i}-last" in heard for i in range(n + 1))

    try:
        await within(2.0, lambda: tell("before"), every=0.1)
        await through_an_outage(redis_server, cache)
        await within(5.0, lambda: tell("after"), every=0.1)
    finally:
        await stop_watching(watcher)
        await client.aclose()
    assert [key for key in heard if key.startswith("own-")] == [], "this cache's own news was passed on"


async def test_news_names_keys_and_carries_no_credential(
    fleet: Fleet, redis_server: RedisServer, sandbox: WeChatSandbox, http: aiohttp.ClientSession
) -> None:
    """The news a process sends for its first token and ticket names their cache keys and holds no token, ticket or secret."""
    client = aioredis.Redis(port=redis_server.port)
    messages: list[str] = []
    async with client, client.pubsub(ignore_subscribe_messages=True) as pubsub:
        await pubsub.subscribe(NEWS_CHANNEL)
        (url,) = await fleet(1, **QUICK_STOP)
        assert (await sign(http, url))[0] == 200

        async def heard_the_ticket() -> bool:
            while (message := await pubsub.get_message(timeout=0.1)) is not None:
                messages.append(message["data"].decode())
            return any(m.endswith(f" {APP_ID}:ticket") for m in messages)

        await within(3.0, heard_the_ticket, every=0.05)
    keys = {m.partition(" ")[2] for m in messages}
    assert keys == {f"{APP_ID}:ticket", f"{APP_ID}:token:stable"}, messages
    assert sandbox.issued, "the sandbox issued nothing"
    for message in messages:
        assert SECRET not in message
        for value in sandbox.issued:
            assert value not in message
