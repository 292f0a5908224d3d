"""Starting on storage that is not there yet.

A site and its applier open their journal and state and read their watermarks before they
serve. A Redis server, or a node of a Redis Cluster, that is down or restarting at that moment
(`StoreUnavailable`) is waited for rather than fatal: the step is tried again with backoff
(50 ms doubling up to 2 s) for up to STORE_START_WAIT_S, one `store_unavailable` warning per
failed try and `store_available` once it worked. Past that, the error ends the start (exit
status 1: a supervisor restarts the site). Any other error ends it at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from multiactive.aio import store_backoff
from multiactive.clock import SYSTEM_CLOCK, Clock
from multiactive.errors import StoreUnavailable
from multiactive.logs import get_logger

STORE_START_WAIT_S = 30.0

T = TypeVar("T")
log = get_logger("site")


async def when_available(
    step: Callable[[], Awaitable[T]],
    *,
    site: str,
    what: str,
    undo: Callable[[], Awaitable[None]] | None = None,
    clock: Clock = SYSTEM_CLOCK,
    wait_s: float = STORE_START_WAIT_S,
) -> T:
    """`step()`, tried again while its store is unavailable, until `wait_s` has passed;
    `undo()` after each failed try lets go of what it left half open."""
    backoff = store_backoff()
    deadline = clock.monotonic() + wait_s
    tries = 0
    while True:
        tries += 1
        try:
            result = await step()
        except StoreUnavailable as exc:
            if clock.monotonic() >= deadline:
                raise
            log.warning("store_unavailable", site=site, what=what, attempt=tries, reason=str(exc))
        else:
            if tries > 1:
                log.info("store_available", site=site, what=what, attempts=tries)
            return result
        if undo is not None:
            await undo()
        await clock.sleep(backoff.next_delay())
