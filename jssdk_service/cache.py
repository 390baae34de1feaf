"""The shared credential cache: our one small interface over aiocache (pinned at 0.12.3).

The credential store is the only user. Records are JSON objects stored as strings, so no caller
ever holds the cached object itself, and every backend sees the same bytes.

- `MemoryCache` (`memory://`): one process; its lock always succeeds because the credential store
  already refreshes one account at a time within a process.
- `RedisCache` (`redis://`, `rediss://`): shared by every process and host. Its lock is a real
  Redis lock (SET NX PX with a unique owner, released by a compare-and-delete script), which
  aiocache's RedLock is not: that one only de-duplicates callers inside one process. A holder that
  dies stops blocking others when its lease runs out. While Redis is unreachable every operation
  degrades to "not found / not shared" instead of failing, the outage is logged once, and the next
  operation that succeeds ends it: the service keeps signing from memory and refreshes on its own.
  `watch()` probes Redis every `PROBE_EVERY` seconds, so an outage and its end are noticed with no
  traffic, and says what went wrong: unreachable, a refused password, a database that does not
  exist. At most `MAX_OPERATIONS` operations of a process are in flight at once, so ten thousand
  accounts starting together do not open ten thousand connections.

Tables: `put_entry`, `entry`, `drop_entry` and `entries` keep named records that never expire (a
Redis hash on Redis): what must outlive every process, such as a platform's authorizers and their
refresh tokens; `entries` reads a table a page at a time, so ten thousand of them never arrive at once.

News: `announce(key)` tells every other process (Redis pub/sub, channel `jssdk:news`) that `key`
holds a new credential; the message carries the key and the sender, never a value, and each
process reads the cache itself. `watch(on_news)` passes other processes' news on; without Redis,
or while it is away, there is no news and every process refreshes on its own schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import orjson
import redis.asyncio as aioredis
import redis.exceptions
from aiocache import RedisCache as AiocacheRedis
from aiocache import SimpleMemoryCache
from aiocache.serializers import StringSerializer
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

log = logging.getLogger("jssdk_service.cache")

NAMESPACE = "jssdk"
NEWS_CHANNEL = f"{NAMESPACE}:news"
PROBE_EVERY = 2.0
MAX_OPERATIONS = 32

# Delete KEY only while its record's "value" is still ARGV[1]: compare-and-refresh for the fleet.
_DELETE_IF_VALUE = """
local current = redis.call('get', KEYS[1])
if current and cjson.decode(current)['value'] == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""
# Store a value and answer the one it replaces, in one step (SET ... GET would need Redis 6.2).
_SWAP = "local old = redis.call('get', KEYS[1]) redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) return old"
# Release a lock only if we still own it (a lease that ran out may belong to another process now).
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class SharedCache(Protocol):
    """Where credentials live between refreshes, shared by whoever can reach the backend."""

    shared: bool
    """True when other processes see the same data (Redis)."""

    async def get(self, key: str) -> dict[str, Any] | None: ...

    async def set(self, key: str, record: dict[str, Any], ttl: float) -> None: ...

    async def delete_if_value(self, key: str, value: str) -> bool:
        """Delete the record at `key` only if its `value` is still `value`; True when deleted."""
        ...

    async def increment(self, key: str, by: int, ttl: float) -> int | None:
        """Add `by` to a counter that expires `ttl` seconds after its creation; None if unknown."""
        ...

    async def counter(self, key: str) -> int:
        """The counter's value (0 when missing or unknown)."""
        ...

    async def acquire(self, key: str, owner: str, lease: float) -> bool:
        """Take the lock `key` for `lease` seconds unless someone else holds it."""
        ...

    async def swap(self, key: str, value: str, ttl: float) -> str | None:
        """Store `value` at `key` for `ttl` seconds and answer the value it replaced, in one step (so two
        processes swapping in the same value see it once); None when there was none (or the cache is away)."""
        ...

    async def put_entry(self, key: str, name: str, record: dict[str, Any]) -> bool:
        """Keep `record` as entry `name` of the table `key` (no expiry); False when it could not be stored."""
        ...

    async def entry(self, key: str, name: str) -> dict[str, Any] | None:
        """Entry `name` of the table `key`, if there is one (and the cache answers)."""
        ...

    async def drop_entry(self, key: str, name: str) -> bool | None:
        """Remove entry `name` of the table `key`; True when it was there, None when the cache did not answer."""
        ...

    async def entries(self, key: str, cursor: int, count: int) -> tuple[int, dict[str, dict[str, Any]]] | None:
        """About `count` entries of the table `key` from `cursor` on, and the cursor of the next page
        (0 when done); None when the cache does not answer."""
        ...

    async def release(self, key: str, owner: str) -> None: ...

    def health(self) -> dict[str, Any]:
        """What /readyz says about the cache."""
        ...

    async def announce(self, key: str) -> None:
        """Tell the other processes that `key` holds a new credential (nothing to do without a fleet)."""
        ...

    async def watch(self, on_news: Callable[[str], None]) -> None:
        """Until cancelled: keep `health()` current, and call `on_news(key)` for other processes' news."""
        ...

    async def close(self) -> None: ...


class MemoryCache:
    """One process's cache (aiocache's memory backend): the default, and enough for one process."""

    shared = False

    def __init__(self) -> None:
        self._cache = SimpleMemoryCache(serializer=StringSerializer(), namespace=f"{NAMESPACE}:", timeout=None)
        self._tables: dict[str, dict[str, str]] = {}

    async def get(self, key: str) -> dict[str, Any] | None:
        text = await self._cache.get(key)
        return None if text is None else _decode(text)

    async def set(self, key: str, record: dict[str, Any], ttl: float) -> None:
        # ttl must stay positive: 0 would mean "forever" in memory (and is an error on Redis).
        await self._cache.set(key, orjson.dumps(record).decode(), ttl=max(ttl, 0.001))

    async def delete_if_value(self, key: str, value: str) -> bool:
        # The memory backend never suspends, so no other task runs between the read and the delete.
        current = await self._cache.get(key)
        if current is None or _decode(current).get("value") != value:
            return False
        await self._cache.delete(key)
        return True

    async def increment(self, key: str, by: int, ttl: float) -> int | None:
        count = int(await self._cache.increment(key, by))
        if count == by:
            await self._cache.expire(key, ttl)
        return count

    async def counter(self, key: str) -> int:
        return int(await self._cache.get(key) or 0)

    async def acquire(self, key: str, owner: str, lease: float) -> bool:
        return True

    async def release(self, key: str, owner: str) -> None:
        return None

    async def swap(self, key: str, value: str, ttl: float) -> str | None:
        # The memory backend never suspends between the two.
        old = await self._cache.get(key)
        await self._cache.set(key, value, ttl=max(ttl, 0.001))
        return None if old is None else str(old)

    async def put_entry(self, key: str, name: str, record: dict[str, Any]) -> bool:
        self._tables.setdefault(key, {})[name] = orjson.dumps(record).decode()
        return True

    async def entry(self, key: str, name: str) -> dict[str, Any] | None:
        text = self._tables.get(key, {}).get(name)
        return None if text is None else _decode(text)

    async def drop_entry(self, key: str, name: str) -> bool | None:
        return self._tables.get(key, {}).pop(name, None) is not None

    async def entries(self, key: str, cursor: int, count: int) -> tuple[int, dict[str, dict[str, Any]]] | None:
        names = sorted(self._tables.get(key, {}))[cursor : cursor + count]
        table = self._tables.get(key, {})
        following = cursor + count if cursor + count < len(table) else 0
        return following, {name: _decode(table[name]) for name in names}

    def health(self) -> dict[str, Any]:
        return {"backend": "memory", "ok": True}

    async def announce(self, key: str) -> None:
        return None

    async def watch(self, on_news: Callable[[str], None]) -> None:
        return None

    async def close(self) -> None:
        await self._cache.close()


class RedisCache:
    """The fleet's cache: aiocache's Redis backend, namespaced, degrading to memory-only on outages."""

    shared = True

    def __init__(self, url: str, *, password: str | None = None, op_timeout: float = 1.0) -> None:
        parts = urlsplit(url)
        db = (parts.path or "/0").strip("/") or "0"
        self._where = f"{parts.scheme}://{parts.hostname or '127.0.0.1'}:{parts.port or 6379}/{db}"
        self._db = db
        self._cache = AiocacheRedis(
            serializer=StringSerializer(),
            namespace=NAMESPACE,
            timeout=op_timeout,
            endpoint=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            db=int(db),
            password=unquote(parts.password) if parts.password else password,
            ssl=parts.scheme == "rediss",
            create_connection_timeout=op_timeout,
            # A pooled connection that Redis closed (a restart) fails once on its next use: try that
            # operation again at once on a new connection rather than report an outage that is over.
            connection_pool_kwargs={
                "socket_timeout": op_timeout,
                "retry": Retry(NoBackoff(), 1),
                "retry_on_error": [redis.exceptions.ConnectionError],
            },
        )
        self._error: str | None = None
        self._error_kind: str | None = None
        self._operations = asyncio.Semaphore(MAX_OPERATIONS)
        self._sender = secrets.token_hex(6)

    def __repr__(self) -> str:
        return f"RedisCache({self._where!r})"

    async def get(self, key: str) -> dict[str, Any] | None:
        text = await self._guard(self._cache.get(key))
        return None if text is None else _decode(text)

    async def set(self, key: str, record: dict[str, Any], ttl: float) -> None:
        await self._guard(self._cache.set(key, orjson.dumps(record).decode(), ttl=max(float(ttl), 0.001)))

    async def delete_if_value(self, key: str, value: str) -> bool:
        raw = self._cache._build_key(key)
        return bool(await self._guard(self._cache.client.eval(_DELETE_IF_VALUE, 1, raw, value)))

    async def increment(self, key: str, by: int, ttl: float) -> int | None:
        raw = self._cache._build_key(key)

        async def incr() -> int:
            count = int(await self._cache.client.incrby(raw, by))
            if count == by:  # created just now (EXPIRE NX would need Redis 7)
                await self._cache.client.expire(raw, int(ttl))
            return count

        count = await self._guard(incr())
        return None if count is None else int(count)

    async def counter(self, key: str) -> int:
        return int(await self._guard(self._cache.get(key)) or 0)

    async def acquire(self, key: str, owner: str, lease: float) -> bool:
        raw = self._cache._build_key(key)
        taken = await self._guard(self._cache.client.set(raw, owner, nx=True, px=max(1, int(lease * 1000))))
        # With Redis unreachable there is no one to coordinate with: refresh on our own.
        return True if self._error is not None else bool(taken)

    async def release(self, key: str, owner: str) -> None:
        await self._guard(self._cache.client.eval(_RELEASE, 1, self._cache._build_key(key), owner))

    async def swap(self, key: str, value: str, ttl: float) -> str | None:
        raw = self._cache._build_key(key)
        old = await self._guard(self._cache.client.eval(_SWAP, 1, raw, value, max(1, int(ttl * 1000))))
        return None if old is None else _text(old)

    async def put_entry(self, key: str, name: str, record: dict[str, Any]) -> bool:
        raw = self._cache._build_key(key)
        return await self._guard(self._cache.client.hset(raw, name, orjson.dumps(record))) is not None

    async def entry(self, key: str, name: str) -> dict[str, Any] | None:
        text = await self._guard(self._cache.client.hget(self._cache._build_key(key), name))
        return None if text is None else _decode(_text(text))

    async def drop_entry(self, key: str, name: str) -> bool | None:
        dropped = await self._guard(self._cache.client.hdel(self._cache._build_key(key), name))
        return None if dropped is None else bool(dropped)

    async def entries(self, key: str, cursor: int, count: int) -> tuple[int, dict[str, dict[str, Any]]] | None:
        page = await self._guard(self._cache.client.hscan(self._cache._build_key(key), cursor, count=count))
        if page is None:
            return None
        following, found = page
        return int(following), {_text(name): _decode(_text(text)) for name, text in found.items()}

    def health(self) -> dict[str, Any]:
        status: dict[str, Any] = {"backend": "redis", "url": self._where, "ok": self._error is None}
        if self._error is not None:
            status["error"] = self._error
        return status

    async def announce(self, key: str) -> None:
        await self._guard(self._cache.client.publish(NEWS_CHANNEL, f"{self._sender} {key}"))

    async def watch(self, on_news: Callable[[str], None]) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._probe())
            group.create_task(self._listen(on_news))

    async def _probe(self) -> None:
        while True:
            await self._guard(self._cache.client.ping())
            await asyncio.sleep(PROBE_EVERY)

    async def _listen(self, on_news: Callable[[str], None]) -> None:
        """Other processes' news, subscribing again after every outage (news sent meanwhile is lost)."""
        while True:
            pubsub = self._cache.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(NEWS_CHANNEL)
                while True:
                    message = await pubsub.get_message(timeout=PROBE_EVERY)
                    if message is not None:
                        sender, _, key = _text(message.get("data")).partition(" ")
                        if sender != self._sender and key:
                            on_news(key)
            except (redis.exceptions.RedisError, OSError, TimeoutError):
                await asyncio.sleep(PROBE_EVERY / 2)  # the probe logs the outage
            finally:
                with contextlib.suppress(redis.exceptions.RedisError, OSError, TimeoutError):
                    await pubsub.aclose()

    async def close(self) -> None:
        # aiocache 0.12.3's close() calls redis-py's deprecated close(); aclose() is the current name.
        await self._cache.client.aclose()

    async def _guard(self, operation: Any) -> Any:
        """Run one Redis operation; on an outage, log it once and answer None."""
        try:
            async with self._operations:
                result = await operation
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            kind, problem = self._problem(exc)
            if self._error_kind != kind:
                log.warning("cache %s %s: serving from memory, refreshing without the fleet", self._where, problem)
            self._error, self._error_kind = problem, kind
            return None
        if self._error is not None:
            log.warning("cache %s reachable again: sharing credentials with the fleet", self._where)
            self._error = self._error_kind = None
        return result

    def _problem(self, exc: BaseException) -> tuple[str, str]:
        """The kind of a failure, and what an operator should read about it (never the password)."""
        if isinstance(exc, redis.exceptions.AuthenticationError) and "NOAUTH" in str(exc):
            return "auth", "requires a password: set JSSDK_REDIS_PASSWORD (or put it in JSSDK_CACHE_URL)"
        if isinstance(exc, redis.exceptions.AuthenticationError):
            return "auth", "refused the password: check JSSDK_REDIS_PASSWORD (or the password in JSSDK_CACHE_URL)"
        if isinstance(exc, redis.exceptions.ResponseError) and "DB index" in str(exc):
            return "db", f"has no database {self._db}: check the number at the end of JSSDK_CACHE_URL"
        if isinstance(exc, redis.exceptions.ResponseError):
            return "refused", f"refused an operation ({str(exc)[:120]})"
        return "unreachable", f"unreachable ({type(exc).__name__})"


def _text(data: Any) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else str(data)


def _decode(text: str) -> dict[str, Any]:
    record = orjson.loads(text)
    return record if isinstance(record, dict) else {}


class RawKeyError(Exception):
    """A key of `RawKeys` could not be read or written; the message says why (never a password)."""


class RawKeys:
    """Keys another system owns, read and written as they are: no namespace, no record format of ours.

    What an external token source keeps in Redis (`token_redis_key`), and what the sandbox's central
    token server writes there. Unlike `RedisCache` it does not degrade: a failure is a `RawKeyError`
    for the caller to report.
    """

    def __init__(self, url: str, *, password: str | None = None, op_timeout: float = 2.0) -> None:
        parts = urlsplit(url)
        self._where = f"{parts.scheme}://{parts.hostname or '127.0.0.1'}:{parts.port or 6379}{parts.path or '/0'}"
        self._client = aioredis.Redis.from_url(
            url,
            password=None if parts.password else password,
            socket_timeout=op_timeout,
            socket_connect_timeout=op_timeout,
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[redis.exceptions.ConnectionError],
        )

    def __repr__(self) -> str:
        return f"RawKeys({self._where!r})"

    async def read(self, key: str) -> tuple[str, float | None] | None:
        """The value at `key` and its seconds to live (None: it never expires); None when there is no key."""
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.get(key)
                pipe.pttl(key)
                value, pttl = await pipe.execute()
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            raise RawKeyError(self._problem(exc)) from None
        if value is None:
            return None
        return _text(value), (None if pttl is None or pttl < 0 else pttl / 1000)

    async def write(self, key: str, value: str, ttl: float | None) -> None:
        """Set `key` to `value`, expiring after `ttl` seconds (None: never)."""
        try:
            await self._client.set(key, value, px=None if ttl is None else max(1, int(ttl * 1000)))
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            raise RawKeyError(self._problem(exc)) from None

    async def close(self) -> None:
        await self._client.aclose()

    def _problem(self, exc: BaseException) -> str:
        if isinstance(exc, redis.exceptions.AuthenticationError):
            return f"Redis {self._where} refused the password"
        if isinstance(exc, redis.exceptions.ResponseError):
            return f"Redis {self._where} refused the operation ({str(exc)[:120]})"
        return f"Redis {self._where} is unreachable ({type(exc).__name__})"


def open_cache(url: str, *, password: str | None = None) -> SharedCache:
    """The cache named by `JSSDK_CACHE_URL`."""
    if url.startswith("memory:"):
        return MemoryCache()
    return RedisCache(url, password=password)
