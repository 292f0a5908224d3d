"""Small asyncio helpers shared by the long-lived components."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine
from typing import Any


class Pulse:
    """Wakes every waiter when something changed; waiters re-check their condition.

    Single event loop only. `wait()` never misses a `fire()` that happens after it was called,
    so the pattern `while not condition(): await pulse.wait()` has no lost wake-ups.
    """

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] = []

    def fire(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def future(self) -> asyncio.Future[None]:
        """A future resolved by the next fire (for waiting on several pulses at once)."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter

    async def wait(self, timeout_s: float | None = None) -> bool:
        """Wait for the next fire; False if `timeout_s` passed first."""
        waiter = self.future()
        try:
            await asyncio.wait_for(waiter, timeout_s)
        except TimeoutError:
            return False
        return True


# How a storage server that failed (a Redis restarting) is tried again: after 50 ms,
# doubling up to 2 s (`store_backoff`: ingress, the processor, a starting site).
STORE_RETRY_MIN_S = 0.05
STORE_RETRY_MAX_S = 2.0


def store_backoff() -> Backoff:
    return Backoff(STORE_RETRY_MIN_S, STORE_RETRY_MAX_S)


class Backoff:
    """Exponential backoff with full jitter, reset after a success."""

    __slots__ = ("_attempt", "maximum_s", "minimum_s")

    def __init__(self, minimum_s: float, maximum_s: float) -> None:
        self.minimum_s = minimum_s
        self.maximum_s = maximum_s
        self._attempt = 0

    def reset(self) -> None:
        self._attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.maximum_s, self.minimum_s * (2**self._attempt))
        self._attempt = min(self._attempt + 1, 30)
        return random.uniform(self.minimum_s, max(self.minimum_s, ceiling))


async def wait_any(pulses: tuple[Pulse, ...], timeout_s: float | None = None) -> None:
    """Return when any of the pulses fires, or after `timeout_s`."""
    waiters = [pulse.future() for pulse in pulses]
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def wait_until(condition: Callable[[], bool], pulse: Pulse, timeout_s: float) -> bool:
    """Wait until `condition()` holds, looking again each time `pulse` fires; False if
    `timeout_s` passed first."""
    try:
        async with asyncio.timeout(timeout_s):
            while not condition():
                await pulse.wait()
    except TimeoutError:
        return False
    return True


async def run_together(*coroutines: Coroutine[Any, Any, Any]) -> None:
    """Run coroutines until the first one ends or fails; cancel the rest; re-raise its error.

    For the tasks of one connection: when the reader sees the peer go, the writer stops too,
    and the caller gets the reader's error itself rather than an exception group.
    """
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


def run(main: Coroutine[Any, Any, Any]) -> Any:
    """`asyncio.run`, on uvloop when it is installed (pip install 'multiactive[fast]')."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
