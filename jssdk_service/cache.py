"""The shared credential cache: our one small interface over aiocache (pinned at 0.12.3).

The credential store is the only user. Records are JSON objects stored as strings, so no caller
ever holds the cached object itself, and every backend sees the same bytes.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson
from aiocache import SimpleMemoryCache
from aiocache.serializers import StringSerializer


class SharedCache(Protocol):
    """Where credentials live between refreshes, shared by whoever can reach the backend."""

    async def get(self, key: str) -> dict[str, Any] | None: ...

    async def set(self, key: str, record: dict[str, Any], ttl: float) -> None: ...

    async def delete_if_value(self, key: str, value: str) -> bool:
        """Delete the record at `key` only if its `value` is still `value`; True when deleted."""
        ...

    async def close(self) -> None: ...


class MemoryCache:
    """One process's cache (aiocache's memory backend): the default, and enough for one process."""

    def __init__(self, namespace: str = "jssdk") -> None:
        self._cache = SimpleMemoryCache(serializer=StringSerializer(), namespace=f"{namespace}:", timeout=None)

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

    async def close(self) -> None:
        await self._cache.close()


def _decode(text: str) -> dict[str, Any]:
    record = orjson.loads(text)
    return record if isinstance(record, dict) else {}


def open_cache(url: str) -> SharedCache:
    """The cache named by `JSSDK_CACHE_URL`."""
    if url.startswith("memory:"):
        return MemoryCache()
    raise ValueError(f"unsupported cache URL scheme in {url.split(':', 1)[0]!r}")
