"""Handler isolation: a handler that never returns times out, is retried and parked, and holds
only its own stream meanwhile; stuck handlers are reported; `on_exhausted="hold"` holds."""

from __future__ import annotations

import asyncio
import logging

import pytest

from multiactive.aio import Pulse
from multiactive.model.topology import ReplicationSettings
from multiactive.replication.handlers import Delivery, HandlerRegistry
from multiactive.replication.processor import STUCK_AFTER_S, Processor
from multiactive.testing import FakeClock

from .test_processor import (
    GZ0,
    GZ1,
    SH0,
    SITE,
    TIMEOUT_S,
    Recorder,
    feed,
    msg,
    opened_memory,
    running,
    until,
)


class Hang:
    """A handler that never returns (until cancelled), counting its calls."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.delivered = Pulse()

    async def __call__(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        self.delivered.fire()
        await asyncio.Event().wait()


def test_hung_handler_times_out_is_retried_then_parked_and_holds_only_its_stream(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Other streams apply while it hangs; each attempt fails after timeout_s; after
    apply_max_attempts it is parked with a HandlerTimeout error and the message behind it goes
    ahead. Timeouts are WARNING lines with the id, the parking an ERROR line."""

    async def main() -> None:
        journal, state = await opened_memory()
        clock, hang = FakeClock(), Hang()
        registry = HandlerRegistry()
        registry.register("test.hang", hang, timeout_s=30.0)
        settings = ReplicationSettings(apply_max_attempts=3, apply_retry_backoff_ms=1.0)
        processor = Processor(SITE, journal, state, registry, settings, clock)
        async with running(processor):
            await feed(journal, GZ0, msg("stuck-1", "test.hang"), msg("behind"))
            await until(lambda: bool(hang.deliveries), hang.delivered)
            await feed(journal, GZ1, msg("other-1"))
            await feed(journal, SH0, msg("other-2"))
            await until(
                lambda: processor.applied(GZ1) == processor.applied(SH0) == 1, processor.progress
            )
            assert len(hang.deliveries) == 1  # no time passed: still its first attempt
            assert processor.applied(GZ0) == 0
            async with asyncio.timeout(TIMEOUT_S):
                while processor.applied(GZ0) < 2:
                    await clock.advance(31.0)  # past the timeout of the running attempt
                    await asyncio.sleep(0.005)
        assert [(d.attempt, d.retry) for d in hang.deliveries] == [(1, False), (2, True), (3, True)]
        (letter,) = await state.dead_letters()
        assert letter.id == "stuck-1"
        assert letter.attempts == 3
        assert "HandlerTimeout" in letter.error
        assert "within 30 s" in letter.error
        assert await state.get("key-behind") is not None

    with caplog.at_level(logging.WARNING, logger="multiactive"):
        asyncio.run(main())
    timeouts = [r for r in caplog.records if r.getMessage().startswith("handler_timeout ")]
    assert len(timeouts) == 3
    assert all("id=stuck-1" in r.getMessage() for r in timeouts)
    parked = [r for r in caplog.records if r.getMessage().startswith("message_parked ")]
    assert [r.levelno for r in parked] == [logging.ERROR]


def test_stuck_handler_is_reported_with_its_message() -> None:
    """After STUCK_AFTER_S a running handler is in stuck_handlers() and the statistics:
    stream, seq, id, type, attempt, how long it has run and its timeout."""

    async def main() -> None:
        journal, state = await opened_memory()
        clock = FakeClock()
        registry = HandlerRegistry()
        registry.register("test.hang", Hang())
        settings = ReplicationSettings(handler_timeout_s=30.0)
        processor = Processor(SITE, journal, state, registry, settings, clock)
        async with running(processor):
            await feed(journal, GZ0, msg("k-1"), msg("stuck-2", "test.hang"))
            await feed(journal, GZ1, msg("other"))
            await until(lambda: processor.applied(GZ1) == 1, processor.progress)
            await clock.advance(STUCK_AFTER_S / 2)
            assert processor.stuck_handlers() == []
            await clock.advance(STUCK_AFTER_S * 2)
            (stuck,) = processor.statistics().stuck_handlers
            assert (stuck.origin, stuck.partition, stuck.seq, stuck.id, stuck.type) == (
                "gz", 0, 2, "stuck-2", "test.hang",
            )  # fmt: skip
            assert stuck.attempt == 1
            assert stuck.running_s >= STUCK_AFTER_S
            assert stuck.timeout_s == 30.0
            assert processor.applied(GZ0) == 1

    asyncio.run(main())


def test_hold_keeps_retrying_and_holds_the_stream_instead_of_parking(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A type registered with on_exhausted="hold" is never parked: its stream waits, retried,
    until the handler succeeds; then the messages behind it apply. Each failure is a WARNING
    with the message id and the handler's traceback."""

    async def main() -> None:
        journal, state = await opened_memory()
        handler = Recorder(fail_times=5)
        registry = HandlerRegistry()
        registry.register("test.pay", handler, on_exhausted="hold")
        settings = ReplicationSettings(apply_max_attempts=2, apply_retry_backoff_ms=1.0)
        processor = Processor(SITE, journal, state, registry, settings)
        async with running(processor):
            await feed(journal, GZ0, msg("pay-1", "test.pay"), msg("behind"))
            await until(lambda: processor.applied(GZ0) == 2, processor.progress)
        assert len(handler.deliveries) == 6  # past apply_max_attempts, held until it worked
        assert await state.dead_letters() == []
        assert await state.get("key-behind") is not None

    with caplog.at_level(logging.WARNING, logger="multiactive"):
        asyncio.run(main())
    failed = [r for r in caplog.records if r.getMessage().startswith("handler_failed ")]
    assert len(failed) == 5
    assert all(r.levelno == logging.WARNING and "id=pay-1" in r.getMessage() for r in failed)
    assert all(r.exc_info is not None for r in failed)  # the traceback follows the line
    assert "holding_stream=True" in failed[-1].getMessage()


def test_handler_that_ignores_cancellation_does_not_hold_its_stream() -> None:
    """A timed-out handler that swallows its cancellation is left behind: the attempt still
    fails and the stream moves on."""

    async def stubborn(delivery: Delivery) -> None:
        try:
            await asyncio.sleep(TIMEOUT_S)
        except asyncio.CancelledError:
            await asyncio.sleep(0.5)  # ignores the cancellation for a while

    async def main() -> None:
        journal, state = await opened_memory()
        registry = HandlerRegistry()
        registry.register("test.stubborn", stubborn, timeout_s=0.05)
        settings = ReplicationSettings(apply_max_attempts=1)
        processor = Processor(SITE, journal, state, registry, settings)
        async with running(processor):
            await feed(journal, GZ0, msg("s-1", "test.stubborn"), msg("behind"))
            await until(lambda: processor.applied(GZ0) == 2, processor.progress)
        (letter,) = await state.dead_letters()
        assert "HandlerTimeout" in letter.error

    asyncio.run(main())
