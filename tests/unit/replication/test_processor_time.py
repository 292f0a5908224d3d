"""The processor's time rules on a FakeClock: retry backoff doubles per attempt and a stream
is not retried before its time, the last attempt parks the message, and a canary that stops
arriving is overdue after CANARY_OVERDUE_INTERVALS intervals, not before.

The processor is driven one round at a time (`Processor.step`) so that nothing waits for real
time: the clock moves only when the test says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from multiactive.journal import MemoryJournal
from multiactive.model.message import StreamId
from multiactive.model.topology import ReplicationSettings
from multiactive.replication.processor import CANARY_OVERDUE_INTERVALS, CANARY_TYPE, Processor
from multiactive.state import MemoryState
from multiactive.testing import FakeClock
from tests.unit.replication.test_processor import Recorder, feed, msg, registry_with

SITE = "bj"
GZ0 = StreamId("gz", 0)
BACKOFF_MS = 125.0  # binary fractions of a second: the clock's sums are exact
EPSILON_S = 2**-10
SETTINGS = ReplicationSettings(apply_max_attempts=3, apply_retry_backoff_ms=BACKOFF_MS)


def run(main: Coroutine[Any, Any, None]) -> None:
    asyncio.run(main)


async def opened(
    handler: Recorder, clock: FakeClock, state: MemoryState | None = None
) -> tuple[MemoryJournal, Processor]:
    journal = MemoryJournal(SITE)
    await journal.open()
    registry = registry_with(flaky=handler)
    processor = Processor(SITE, journal, state or MemoryState(), registry, SETTINGS, clock)
    await processor.load()
    return journal, processor


def test_backoff_doubles_and_a_stream_is_not_retried_before_its_time() -> None:
    """Attempt 1 fails at t0: attempt 2 is due at t0 + 125 ms, attempt 3 at + 250 ms more; a
    round just before the deadline delivers nothing, one at it delivers the retry."""

    async def main() -> None:
        clock = FakeClock()
        handler = Recorder(fail_times=2)
        journal, processor = await opened(handler, clock)
        await feed(journal, GZ0, msg("f", "flaky"))
        await processor.step()
        assert len(handler.deliveries) == 1
        for attempt, wait_s in ((2, 0.125), (3, 0.25)):
            retry = processor.retry_state(GZ0)
            assert retry is not None
            assert retry.attempts == attempt - 1
            assert retry.retry_in_s == wait_s
            await clock.advance(wait_s - EPSILON_S)
            assert not await processor.step()
            assert len(handler.deliveries) == attempt - 1
            await clock.advance(EPSILON_S)
            await processor.step()
            assert len(handler.deliveries) == attempt
        assert processor.retry_state(GZ0) is None
        assert processor.applied(GZ0) == 1
        assert [d.attempt for d in handler.deliveries] == [1, 2, 3]

    run(main())


def test_the_last_attempt_parks_the_message_with_the_clock_time() -> None:
    """After apply_max_attempts failures the message is a dead letter stamped with the clock's
    wall time and the stream goes on at once."""

    async def main() -> None:
        clock = FakeClock()
        handler = Recorder(fail_times=-1)
        state = MemoryState()
        journal, processor = await opened(handler, clock, state)
        await feed(journal, GZ0, msg("f", "flaky"), msg("after"))
        await processor.step()
        await clock.advance(0.125)
        await processor.step()
        await clock.advance(0.25)
        await processor.step()
        assert processor.applied(GZ0) == 2
        stats = processor.statistics()
        assert (stats.parked_messages, stats.handler_failures) == (1, 3)
        (dead,) = await state.dead_letters()
        assert dead.attempts == 3
        assert dead.parked_ms == clock.wall_ms()

    run(main())


def test_a_canary_is_overdue_after_its_intervals_and_not_before() -> None:
    """A canary from gz applied now; with canaries every 2 s, gz is overdue only once its newest
    canary is older than CANARY_OVERDUE_INTERVALS x 2 s; sh, never heard from, counts from the
    processor's start; the site's own canaries never count."""

    async def main() -> None:
        clock = FakeClock()
        journal, processor = await opened(Recorder(), clock)
        await feed(journal, GZ0, msg("c", CANARY_TYPE, created_ms=clock.wall_ms() - 50))
        await processor.step()
        ages = processor.canaries()["gz"]
        assert (ages["age_s"], ages["latency_s"]) == (0.05, 0.05)
        limit_s = 2.0 * CANARY_OVERDUE_INTERVALS
        await clock.advance(limit_s - 0.1)
        assert processor.overdue_canaries(2.0, ["bj", "gz", "sh"]) == []
        await clock.advance(0.2)
        problems = processor.overdue_canaries(2.0, ["bj", "gz", "sh"])
        assert [p.split()[3] for p in problems] == ["gz", "sh"]
        assert processor.overdue_canaries(0, ["gz"]) == []

    run(main())
