"""Time as a parameter: the clock that long-lived components read and sleep on.

Components that time things (backoff, stall detection, heartbeats, canaries, the reconciler's
interval, the link window) take a `Clock` instead of calling `time` and `asyncio.sleep`
themselves, so a test can move time instead of waiting for it (`multiactive.testing.FakeClock`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from multiactive.model.clock import wall_ms


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (intervals, deadlines)."""
        ...

    def wall_ms(self) -> int:
        """Milliseconds since the epoch (timestamps that other sites read)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return after `seconds` of this clock's time."""
        ...


class SystemClock:
    """The machine's clocks and the event loop's timers."""

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def wall_ms(self) -> int:
        return wall_ms()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK: Clock = SystemClock()
