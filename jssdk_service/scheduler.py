"""The upstream scheduler: every call a process makes to WeChat waits for one of a few slots here.

Thousands of accounts refreshing at once must not become thousands of HTTP requests at once: the
HTTP pool's own queue is slow to keep (its bookkeeping grows with queued requests times
connections), and every queued call's timeout starts ticking before it is sent. So the WeChat
client asks for a slot before each HTTP attempt, and at most `concurrency` attempts are in flight.

Waiting callers are served by `Turn`: a refresh takes a turn when it starts and holds one slot for
all of its calls (the slot is re-entrant for its turn), so an account that started first finishes
first, accounts become ready one by one, and a fleet lock is only taken once a slot is held. A
turn that requests are waiting on is `hurry`-ed ahead of every background one.
Waiting costs O(log waiting) per call; nothing here grows with the number of accounts otherwise.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Turn:
    """One refresh's place in the line: earlier turns go first, hurried ones before all others."""

    __slots__ = ("_holding", "_waiter", "seq", "urgent")

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.urgent = False
        self._holding = False
        self._waiter: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"Turn({self.seq}{', urgent' if self.urgent else ''})"


class UpstreamScheduler:
    """At most `concurrency` upstream calls in flight; the others wait in turn order."""

    def __init__(self, concurrency: int) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.concurrency = concurrency
        self._free = concurrency
        # (0 for hurried, 1 otherwise; the turn's seq; its waiter). A hurried turn is pushed again,
        # and its first entry is skipped when popped because its waiter is done by then.
        self._line: list[tuple[int, int, asyncio.Future[None]]] = []
        self._waiting = 0
        self._seq = itertools.count()
        self.peak_in_flight = 0

    def __repr__(self) -> str:
        return f"UpstreamScheduler(concurrency={self.concurrency}, in_flight={self.in_flight})"

    @property
    def in_flight(self) -> int:
        return self.concurrency - self._free

    @property
    def waiting(self) -> int:
        return self._waiting

    def turn(self) -> Turn:
        """A new place at the end of the line."""
        return Turn(next(self._seq))

    def hurry(self, turn: Turn) -> None:
        """Serve `turn` before every turn that is not hurried: a request is waiting on it."""
        if turn.urgent:
            return
        turn.urgent = True
        waiter = turn._waiter
        if waiter is not None and not waiter.done():
            heapq.heappush(self._line, (0, turn.seq, waiter))

    @asynccontextmanager
    async def slot(self, turn: Turn) -> AsyncIterator[None]:
        """Hold one of the slots for the body; within a body that already holds `turn`'s slot, nothing more."""
        if turn._holding:
            yield
            return
        await self._acquire(turn)
        turn._holding = True
        try:
            yield
        finally:
            turn._holding = False
            self._release()

    async def _acquire(self, turn: Turn) -> None:
        # While a slot is free nobody waits: a released slot goes straight to the next in line.
        if self._free > 0:
            self._take()
            return
        waiter = asyncio.get_running_loop().create_future()
        turn._waiter = waiter
        heapq.heappush(self._line, (0 if turn.urgent else 1, turn.seq, waiter))
        self._waiting += 1
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot in the same moment as cancelled: pass it on
            raise
        finally:
            self._waiting -= 1
            turn._waiter = None

    def _take(self) -> None:
        self._free -= 1
        self.peak_in_flight = max(self.peak_in_flight, self.concurrency - self._free)

    def _release(self) -> None:
        line = self._line
        while line:
            _, _, waiter = heapq.heappop(line)
            if not waiter.done():
                waiter.set_result(None)  # the slot changes hands without ever being free
                return
        self._free += 1
