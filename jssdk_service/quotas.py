"""WeChat's days and what is counted per day: the only code that knows about China time.

WeChat's daily quotas reset at midnight China Standard Time (UTC+8, no daylight saving). Here:
the day arithmetic, the upstream calls counted per account, API and day in the shared cache (so a
fleet counts together), and the limits on forced stable_token refreshes (WECHAT.md §1).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from jssdk_service.cache import SharedCache
from jssdk_service.metrics import quota_used

log = logging.getLogger("jssdk_service.quotas")

DAY = 86400
CHINA_UTC_OFFSET = 8 * 3600
# Published daily quotas per API (WECHAT.md §1); getticket's is not published.
KNOWN_DAILY_QUOTAS = {"token": 2000, "stable_token": 500_000}
QUOTA_WARNING = 0.8

QuotaWatcher = Callable[[str, str, str, int, int], None]
"""Told once when the fleet passes 80% of a quota: (app key or corp_id, api, window "day" or "hour", used, limit)."""
COUNTED_APIS = ("token", "stable_token", "getticket")
# What the admin API counts for the other kinds and sources: the calls each makes.
WECOM_COUNTED_APIS = ("gettoken", "get_jsapi_ticket", "get_agent_ticket")
# A forced stable token (`force_refresh: true`): 20 a day, 30 s apart.
FORCED_REFRESHES_PER_DAY = 20
FORCED_REFRESH_SPACING = 30.0


def china_day(now: float) -> int:
    """The number of the China-time day `now` falls in."""
    return int((now + CHINA_UTC_OFFSET) // DAY)


def next_china_midnight(now: float) -> float:
    """When the China-time day after `now`'s begins: daily quotas are fresh again."""
    return (china_day(now) + 1) * DAY - CHINA_UTC_OFFSET


def china_month(now: float) -> str:
    """The China-time month `now` falls in, as "YYYY-MM": what WeChat's 10 quota resets a month count in."""
    return time.strftime("%Y-%m", time.gmtime(now + CHINA_UTC_OFFSET))


class UpstreamUsage:
    """Upstream calls per account, API and China day, counted in the shared cache (the fleet counts together).

    `record` is a WeChat client call observer (sync, no I/O); `flush` adds what was recorded to
    the shared counters and warns once a day per API at 80% of a published quota.
    """

    def __init__(
        self, *, clock: Callable[[], float] = time.time, names: Mapping[str, str] | None = None,
        watchers: Sequence[QuotaWatcher] = (),
    ) -> None:  # fmt: skip
        self._clock = clock
        self._names = names or {}
        self.watchers = list(watchers)
        """Each account's name by its key, for the metrics."""
        self._pending: Counter[tuple[str, str]] = Counter()
        self._warned: set[str] = set()
        self._warned_day = ""  # the China day of the keys in _warned

    def __repr__(self) -> str:
        return f"UpstreamUsage(pending={sum(self._pending.values())})"

    def record(self, app_id: str, api: str, outcome: str) -> None:
        if app_id:
            self._pending[(app_id, api)] += 1

    async def flush(self, cache: SharedCache) -> None:
        pending, self._pending = self._pending, Counter()
        for (app_id, api), calls in pending.items():
            key = self._key(app_id, api)
            count = await cache.increment(key, calls, 2 * DAY)
            quota = KNOWN_DAILY_QUOTAS.get(api)
            if count is not None and quota is not None:
                quota_used(self._names.get(app_id, app_id), api, "day", count / quota,
                           until=next_china_midnight(self._clock()))  # fmt: skip
            if count is not None and quota is not None and count >= QUOTA_WARNING * quota and key not in self._warned:
                day = key.rpartition(":")[2]
                if day != self._warned_day:  # a new China day: yesterday's warnings are done with
                    self._warned_day = day
                    self._warned.clear()
                self._warned.add(key)
                log.warning("app=%s %s calls today: %d of the daily quota of %d", app_id, api, count, quota)
                for watcher in self.watchers:
                    watcher(app_id, api, "day", count, quota)

    async def today(self, cache: SharedCache, app_id: str, apis: tuple[str, ...] = COUNTED_APIS) -> dict[str, int]:
        """Calls to each of `apis` today (China time) for `app_id`, across the fleet."""
        return {api: await cache.counter(self._key(app_id, api)) for api in apis}

    def _key(self, app_id: str, api: str) -> str:
        return f"{app_id}:calls:{api}:{china_day(self._clock())}"


class ForcedRefreshes:
    """The force_refresh limits of stable tokens, kept in the shared cache so that a fleet keeps them together."""

    def __init__(self, cache: SharedCache) -> None:
        self._cache = cache

    def __repr__(self) -> str:
        return "ForcedRefreshes()"

    async def today(self, app_id: str, now: float) -> int:
        """How many forced refreshes `app_id` has had today (China time)."""
        return await self._cache.counter(_day_key(app_id, now))

    async def book(self, app_id: str, now: float) -> float | None:
        """Take one of today's forced refreshes for `app_id`: None when taken, else when the next is allowed."""
        last_key = f"{app_id}:forced-token:last"
        last = await self._cache.get(last_key)
        if last is not None and now < float(last.get("at", 0.0)) + FORCED_REFRESH_SPACING:
            return float(last["at"]) + FORCED_REFRESH_SPACING
        day_key = _day_key(app_id, now)
        if await self._cache.counter(day_key) >= FORCED_REFRESHES_PER_DAY:
            return next_china_midnight(now)
        await self._cache.set(last_key, {"at": now}, FORCED_REFRESH_SPACING)
        await self._cache.increment(day_key, 1, 2 * DAY)
        return None


def _day_key(app_id: str, now: float) -> str:
    return f"{app_id}:forced-token:{china_day(now)}"


# WeCom's hourly ticket limits (WECOM_PLATFORM.md A.1): the corp ticket 400 a corp and 100 an app,
# the agent ticket 100 an app.
WECOM_CORP_TICKETS_PER_HOUR = 400
WECOM_APP_TICKETS_PER_HOUR = 100
HOUR = 3600.0
# Counted in buckets of ten minutes: the last seven cover any sliding hour, so never exceeding their
# sum never exceeds the limit, however WeCom draws its hour (at the cost of up to ten minutes).
BUCKET = 600.0
BUCKETS = 7


class HourlyLimits:
    """WeCom's hourly ticket limits, kept by the fleet in the shared cache: a call is booked before it is made."""

    def __init__(
        self, cache: SharedCache, *, clock: Callable[[], float] = time.time, watchers: Sequence[QuotaWatcher] = ()
    ) -> None:
        self._cache = cache
        self._clock = clock
        self._watchers = watchers
        # The bucket each (scope, api) was last warned about: one entry per account, however long it runs.
        self._warned: dict[tuple[str, str], int] = {}

    def __repr__(self) -> str:
        return "HourlyLimits()"

    async def book(self, scopes: tuple[tuple[str, int], ...], api: str) -> float | None:
        """Take one call of `api` in each (scope, limit) of `scopes`: None when taken, else the seconds
        until one is free (nothing is taken then). A scope is a corp_id or an app's key."""
        now = self._clock()
        current = int(now // BUCKET)
        taken: list[str] = []
        for scope, limit in scopes:
            key = _bucket_key(scope, api, current)
            count = await self._cache.increment(key, 1, HOUR + 2 * BUCKET)
            if count is None:  # the shared cache is away: nobody to count with, and one process is slow
                continue
            taken.append(key)
            earlier = [
                await self._cache.counter(_bucket_key(scope, api, b)) for b in range(current - BUCKETS + 1, current)
            ]
            used = count + sum(earlier)
            if used > limit:
                for booked in taken:
                    await self._cache.increment(booked, -1, HOUR + 2 * BUCKET)
                # A call is free again when the oldest bucket that holds one leaves the window.
                oldest = next((i for i, n in enumerate(earlier) if n), len(earlier))
                return max(1.0, (current + 1 + oldest) * BUCKET - now)
            quota_used(scope, api, "hour", used / limit, until=now + HOUR)
            if used >= QUOTA_WARNING * limit and self._warned.get((scope, api)) != current:
                self._warned[(scope, api)] = current
                log.warning("%s: %d %s calls in the last hour, of WeCom's limit of %d", scope, used, api, limit)
                for watcher in self._watchers:
                    watcher(scope, api, "hour", used, limit)
        return None

    async def full(self, scopes: tuple[tuple[str, int], ...], api: str) -> bool:
        """Whether `book` would refuse a call of `api` now (nothing is taken)."""
        return any([await self.used(scope, api) >= limit for scope, limit in scopes])

    async def used(self, scope: str, api: str) -> int:
        """Calls of `api` booked for `scope` in the window `book` keeps (the last hour and up to ten minutes)."""
        current = int(self._clock() // BUCKET)
        return sum(
            [await self._cache.counter(_bucket_key(scope, api, b)) for b in range(current - BUCKETS + 1, current + 1)]
        )


def _bucket_key(scope: str, api: str, bucket: int) -> str:
    return f"{scope}:hourly:{api}:{bucket}"
