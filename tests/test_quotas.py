"""WeCom's hourly ticket limits, booked before each call (quotas.HourlyLimits), on the memory cache."""

from __future__ import annotations

from jssdk_service.cache import MemoryCache
from jssdk_service.quotas import BUCKET, HourlyLimits


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_no_sliding_hour_gets_more_calls_than_the_limit() -> None:
    """Calls are booked up to the limit; the next is refused, takes nothing, and is free once the oldest leaves."""
    clock = Clock(1_000 * BUCKET + 30)
    limits = HourlyLimits(MemoryCache(), clock=clock)
    app = (("ww1:1000002", 3),)
    assert [await limits.book(app, "get_agent_ticket") for _ in range(3)] == [None, None, None]
    clock.now += 2 * BUCKET  # still inside the hour
    wait = await limits.book(app, "get_agent_ticket")
    assert wait is not None and 0 < wait <= 7 * BUCKET
    clock.now += wait - 1
    assert await limits.book(app, "get_agent_ticket") is not None
    clock.now += 1
    assert await limits.book(app, "get_agent_ticket") is None


async def test_a_corp_limit_refusal_gives_back_the_app_booking() -> None:
    """When the corp's limit is spent, the app's booking of the same call is undone."""
    limits = HourlyLimits(MemoryCache(), clock=Clock(5_000 * BUCKET))
    assert await limits.book((("ww1:1", 5), ("ww1", 1)), "get_jsapi_ticket") is None
    assert await limits.book((("ww1:2", 5), ("ww1", 1)), "get_jsapi_ticket") is not None
    assert [await limits.book((("ww1:2", 5),), "get_jsapi_ticket") for _ in range(5)] == [None] * 5
