"""Hybrid logical clock: versions that follow wall time and never go backwards.

A version is one int64: `physical_ms << 16 | logical`. `tick()` returns a version greater than
every version this clock has issued or observed; when the wall clock has not moved, the logical
part counts up (and may carry into the millisecond part, which keeps order at the cost of running
slightly ahead). Observing a remote version pulls the clock forward, so a write made after a
site has seen another write always carries the greater version.
"""

from __future__ import annotations

import time
from collections.abc import Callable

LOGICAL_BITS = 16


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def version_ms(version: int) -> int:
    """The physical milliseconds part of a version."""
    return version >> LOGICAL_BITS


class HybridClock:
    """Issues versions for one site; not thread-safe (one event loop owns it)."""

    __slots__ = ("_last", "_now_ms")

    def __init__(self, now_ms: Callable[[], int] = wall_ms) -> None:
        self._now_ms = now_ms
        self._last = 0

    @property
    def last(self) -> int:
        return self._last

    def tick(self, count: int = 1) -> int:
        """Reserve `count` consecutive versions and return the first."""
        first = max(self._last + 1, self._now_ms() << LOGICAL_BITS)
        self._last = first + count - 1
        return first

    def observe(self, version: int) -> None:
        """Move past a version seen elsewhere (a remote write, or one from before a restart)."""
        if version > self._last:
            self._last = version
