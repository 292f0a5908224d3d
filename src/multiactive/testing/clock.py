"""`FakeClock`: a `multiactive.clock.Clock` whose time moves only when a test says so."""

from __future__ import annotations

import asyncio
import heapq
import itertools

SETTLE_ROUNDS = 20  # event-loop turns given to woken tasks after each timer fires


class FakeClock:
    """Monotonic and wall time that stand still until `advance()`; `sleep()` waits for it."""

    def __init__(self, start_s: float = 1000.0, wall_start_ms: int = 1_800_000_000_000) -> None:
        self._now = start_s
        self._wall_offset_ms = wall_start_ms - int(start_s * 1000)
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self._now

    def wall_ms(self) -> int:
        return self._wall_offset_ms + int(self._now * 1000)

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        waiter = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self._now + seconds, next(self._order), waiter))
        await waiter

    @property
    def sleepers(self) -> int:
        """How many sleeps are waiting for time to move."""
        return sum(1 for _, _, waiter in self._timers if not waiter.done())

    async def settle(self) -> None:
        """Let every task that can run without time moving run."""
        for _ in range(SETTLE_ROUNDS):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`, waking each sleeper at its deadline, in order, and
        letting the woken tasks run before the clock moves past the next deadline."""
        end = self._now + seconds
        await self.settle()
        while self._timers and self._timers[0][0] <= end:
            deadline, _, waiter = heapq.heappop(self._timers)
            self._now = max(self._now, deadline)
            if not waiter.done():
                waiter.set_result(None)
            await self.settle()
        self._now = end
        await self.settle()
