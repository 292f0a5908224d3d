"""The processor: applies every journaled message, own and remote, to the site's state.

Per stream (origin, partition) messages are applied in seq order (P1). Built-in messages are
collected and committed with the watermark in one atomic step (P3). A user handler runs only
after everything before it is committed; when it fails, its stream waits with exponential
backoff (other streams go on) and after `apply_max_attempts` the message is parked as a dead
letter with its error, and the stream moves on (or, for a type registered with
`on_exhausted="hold"`, keeps retrying and holds its stream).

Handler isolation: a handler runs in a task of its own. A round waits HANDLER_SLICE_S for it;
a handler still running then holds only its own stream, and the round goes on with the others
(it is looked at again when it ends). An attempt that runs past its timeout (`[replication]
handler_timeout_s`, or the type's `timeout_s`) is cancelled and fails like a raise. Handlers
running longer than STUCK_AFTER_S are reported (`stuck_handlers`: status, trace, metrics).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from multiactive import failpoints
from multiactive.aio import Pulse, run_together, store_backoff, wait_any, wait_until
from multiactive.clock import SYSTEM_CLOCK, Clock
from multiactive.db.apply import DbApply, DbApplySummary
from multiactive.errors import HandlerTimeout, StoreError
from multiactive.journal.base import Journal
from multiactive.logs import get_logger
from multiactive.model.batch import RecordBatch
from multiactive.model.message import Message, StreamId, message_from_row
from multiactive.model.record import Record
from multiactive.model.topology import ReplicationSettings
from multiactive.replication.handlers import (
    HOLD_RETRY_MAX_S,
    Delivery,
    Handler,
    HandlerRegistry,
)
from multiactive.routing.messages import CONTROL_TYPES
from multiactive.routing.messages import builtin_ops as control_ops
from multiactive.state.base import (
    BUILTIN_TYPES,
    COUNTER_ADD,
    Commit,
    DeadLetter,
    OpTuple,
    StateBackend,
)

READ_BYTES = 4 * 1024 * 1024  # batches read from one stream at a time, at most
ROUND_BYTES = 8 * 1024 * 1024  # batches one round decodes and commits, across streams
CANARY_TYPE = "ma.canary"  # sent by every site on every partition; applied as a no-op
CANARY_OVERDUE_INTERVALS = 3
HOLE_RECHECK_S = 1.0
LATENCY_SAMPLES = 4096
LATENCY_PER_BATCH = 16  # samples taken from one batch, evenly spaced
HANDLER_SLICE_S = 0.05  # a round waits this long for a handler, then goes on with other streams
STUCK_AFTER_S = 1.0  # a handler running longer is reported as stuck

log = get_logger("processor")


@dataclass(frozen=True, slots=True)
class StreamProgress:
    applied: int
    count: int
    head: int
    last_created_ms: int  # origin time of the newest message applied
    retry_at_s: float  # monotonic time a failed handler is retried at (0: not waiting)


@dataclass(frozen=True, slots=True)
class RunningHandler(Record):
    """A user handler that has run for more than STUCK_AFTER_S: its stream waits for it."""

    origin: str
    partition: int
    seq: int
    id: str
    type: str
    attempt: int
    running_s: float
    timeout_s: float


@dataclass(frozen=True, slots=True)
class ProcessorStatistics:
    applied_messages: int
    parked_messages: int
    handler_failures: int
    streams: dict[StreamId, StreamProgress]
    latency_ms_p50: float | None  # origin acceptance -> applied here, recent messages
    latency_ms_p99: float | None
    stuck_handlers: tuple[RunningHandler, ...] = ()
    db: DbApplySummary | None = None  # the DB apply's figures, when the site has a database


@dataclass(frozen=True, slots=True)
class RetryState(Record):
    """A stream waiting to retry a failed handler."""

    seq: int
    attempts: int
    retry_in_s: float
    error: str


@dataclass(slots=True)
class _Step:
    """A run of messages waiting to be committed together."""

    through_seq: int = 0
    processed: int = 0
    builtin: list[OpTuple] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)


class _RetryLater(Exception):
    pass


@dataclass(slots=True)
class _Attempt:
    """A handler call in its own task."""

    message: Message
    attempt: int
    started_s: float
    timeout_s: float
    task: asyncio.Task[None]


Observer = Callable[[StreamId, int, int, Sequence[DeadLetter]], None]


class ProcessorView(Protocol):
    """What the rest of a site asks of its processor, whether it runs inline (`Processor`) or
    in the applier process (`site.applier.ProcessorProcess`)."""

    observers: list[Observer]
    progress: Pulse

    def applied(self, stream: StreamId) -> int:
        """The applied watermark of a stream."""
        ...

    def statistics(self) -> ProcessorStatistics: ...

    def retry_state(self, stream: StreamId) -> RetryState | None:
        """Why a stream is waiting, if a handler failed and will be retried."""
        ...

    def stuck_handlers(self) -> list[RunningHandler]:
        """Handlers running for more than STUCK_AFTER_S, each holding its stream."""
        ...

    def canaries(self) -> dict[str, dict[str, float]]:
        """Per origin: age of its newest canary applied here, and its travel time."""
        ...

    def overdue_canaries(self, interval_s: float, sites: Sequence[str]) -> list[str]:
        """Problems: origins whose canaries stopped arriving here."""
        ...

    async def reapply(self, message: Message, attempt: int) -> str | None:
        """Run a parked message's handler again; None on success, else the error."""
        ...

    async def load(self) -> None: ...

    async def run(self) -> None: ...

    async def close(self) -> None: ...

    async def wait_caught_up(self, timeout_s: float) -> bool: ...


class Processor:
    def __init__(
        self,
        site: str,
        journal: Journal,
        state: StateBackend,
        registry: HandlerRegistry,
        settings: ReplicationSettings,
        clock: Clock = SYSTEM_CLOCK,
        db: DbApply | None = None,
    ) -> None:
        """`db`: the site's DB apply (`multiactive.db.site.open_db_apply`), loaded and run
        beside this processor on its own cursor, the DB watermark."""
        self.site = site
        self.db = db
        self._clock = clock
        self._journal = journal
        self._state = state
        self._registry = registry
        self._settings = settings
        self.progress = Pulse()
        self._applied: dict[StreamId, int] = {}
        self._counts: dict[StreamId, int] = {}
        self._created: dict[StreamId, int] = {}
        self._retry_at: dict[StreamId, float] = {}
        self._failing: dict[StreamId, tuple[int, int, str]] = {}  # seq, attempts, error
        self._attempts: dict[tuple[StreamId, int], int] = {}
        self._restarted: set[StreamId] = set()
        self._steps: dict[StreamId, _Step] = {}
        self._canaries: dict[str, tuple[int, int]] = {}  # origin -> (created, applied) ms
        self._holes: dict[StreamId, int] = {}  # stream -> first seq after a journal hole
        self._rotation = 0  # which due stream a round starts with
        self._running: dict[StreamId, _Attempt] = {}  # a handler call per waiting stream
        self._wake = Pulse()  # a handler call ended
        # Called with (stream, first seq, last seq, dead letters) after each commit.
        self.observers: list[Observer] = []
        self.started_ms = clock.wall_ms()
        self._latencies: deque[int] = deque(maxlen=LATENCY_SAMPLES)
        self._totals = {"applied": 0, "parked": 0, "failures": 0}
        # A testing aid (`multiactive.failpoints`): break counters on purpose.
        self._counter_twice = failpoints.active(failpoints.COUNTER_APPLIED_TWICE)

    def applied(self, stream: StreamId) -> int:
        return self._applied.get(stream, 0)

    async def load(self) -> None:
        """Read the watermarks; call before `run`."""
        for stream, mark in (await self._state.watermarks()).items():
            self._applied[stream] = mark.applied
            self._counts[stream] = mark.count
        # A stream journaled before this start may have had a handler run before a crash,
        # even if no commit (so no watermark) of it was made: its first delivery is a retry.
        self._restarted = set(self._applied) | set(self._journal.heads())
        if self.db is not None:
            await self.db.load()

    async def run(self) -> None:
        """Apply until cancelled (and the database apply beside it, when there is one)."""
        if self.db is not None:
            await run_together(self._run(), self.db.run())
        else:
            await self._run()

    async def _run(self) -> None:
        """A storage server that fails (a Redis restarting) is tried again with backoff; a
        commit whose answer was lost is read back from the state."""
        backoff = store_backoff()
        stale = False
        while True:
            try:
                if stale:
                    await self._reload()
                    stale = False
                worked = await self.step()
            except StoreError as exc:
                stale = True
                log.warning("processor_store_failed", site=self.site, reason=exc)
                await self._clock.sleep(backoff.next_delay())
                continue
            backoff.reset()
            if not worked:
                await wait_any((self._journal.appended, self._wake), self._next_retry_in())

    async def _reload(self) -> None:
        """Watermarks as the state holds them, after a commit whose outcome is unknown:
        observers hear of commits that went through; uncommitted steps are done again (a
        user handler among them is told it is a retry)."""
        self._steps = {}
        for stream, mark in (await self._state.watermarks()).items():
            before = self.applied(stream)
            if mark.applied > before:
                self._applied[stream] = mark.applied
                self._counts[stream] = mark.count
                for observer in self.observers:
                    observer(stream, before + 1, mark.applied, [])
        self._restarted |= set(self._journal.heads())
        self.progress.fire()
        log.info("processor_resumed", site=self.site)

    def caught_up(self) -> bool:
        return all(self.applied(s) >= h for s, h in self._journal.heads().items())

    async def step(self) -> bool:
        """One round (what `run` loops on; tests drive it on a FakeClock): False when no
        stream had work that is due."""
        return await self._round()

    async def _round(self) -> bool:
        """Advance the streams that have work, about ROUND_BYTES of batches in all, starting
        one stream further each round (none waits behind the others for long), then commit
        all their steps at once."""
        now = self._clock.monotonic()
        due = [
            stream
            for stream, head in self._journal.heads().items()
            if head > self.applied(stream)
            and self._retry_at.get(stream, 0.0) <= now
            and not self._busy(stream)
        ]
        self._rotation += 1
        start = self._rotation % len(due) if due else 0
        budget = ROUND_BYTES
        for stream in due[start:] + due[:start]:
            if budget <= 0:
                break
            budget -= await self._advance(stream, min(READ_BYTES, budget))
        await self._flush()
        return budget < ROUND_BYTES

    def _busy(self, stream: StreamId) -> bool:
        running = self._running.get(stream)
        return running is not None and not running.task.done()

    def _next_retry_in(self) -> float | None:
        if not self._retry_at:
            return None
        return max(0.0, min(self._retry_at.values()) - self._clock.monotonic())

    async def _advance(self, stream: StreamId, max_bytes: int) -> int:
        """Apply the stream's next batches, about `max_bytes`; return the bytes read."""
        batches = await self._journal.read(stream, self.applied(stream) + 1, max_bytes)
        try:
            for batch in batches:
                if batch.first_seq > self._done_through(stream) + 1:
                    # A hole in the journal (J1 broken by damage): never skip over it; the
                    # reconciler refills it from another site, then this stream goes on.
                    self._holes[stream] = batch.first_seq
                    self._retry_at[stream] = self._clock.monotonic() + HOLE_RECHECK_S
                    return 0
                if self._holes.pop(stream, None) is not None:
                    self._retry_at.pop(stream, None)  # refilled: no more re-checks
                await self._apply_batch(stream, batch)
                # Decoding a batch is CPU work on the event loop: let the links and ingress
                # run between batches, so a large round never holds them up for long.
                await asyncio.sleep(0)
        except _RetryLater:
            pass
        return sum(batch.size for batch in batches)

    def _done_through(self, stream: StreamId) -> int:
        step = self._steps.get(stream)
        return step.through_seq if step is not None else self.applied(stream)

    async def _apply_batch(self, stream: StreamId, batch: RecordBatch) -> None:
        """Turn a batch's rows into the stream's pending step.

        The common case, a batch of built-in operations only, is one list comprehension over
        the decoded rows; a `Message` is built only for a user handler or a dead letter.
        """
        rows = batch.rows()
        skip = max(0, self._done_through(stream) - batch.first_seq + 1)
        tail = rows[skip:] if skip else rows
        origin = stream.origin
        if {row[1] for row in tail} <= BUILTIN_TYPES:
            step = self._step(stream)
            ops = [(r[1], r[2], r[3], origin, r[6]) for r in tail]
            step.builtin.extend(_counters_twice(ops) if self._counter_twice else ops)
            step.through_seq = batch.last_seq
            step.processed += len(tail)
        else:
            for offset, row in enumerate(tail, start=batch.first_seq + skip):
                if row[1] in BUILTIN_TYPES:
                    op = (row[1], row[2], row[3], origin, row[6])
                    ops = _counters_twice([op]) if self._counter_twice else [op]
                    self._step(stream).builtin.extend(ops)
                elif row[1] in CONTROL_TYPES and (
                    ops := control_ops(row[1], row[3], origin, row[6])
                ):
                    self._step(stream).builtin.extend(ops)  # a routing policy change
                else:
                    message = message_from_row(row, origin, stream.partition, offset)
                    await self._user_message(stream, message)
                step = self._step(stream)
                step.through_seq = offset
                step.processed += 1
        self._created[stream] = batch.created_ms
        now = self._clock.wall_ms()
        self._latencies.extend(now - row[4] for row in tail[:: 1 + len(tail) // LATENCY_PER_BATCH])

    async def _user_message(self, stream: StreamId, message: Message) -> None:
        if message.type == CANARY_TYPE:
            self._canaries[message.origin] = (message.created_ms, self._clock.wall_ms())
            return
        handler = self._registry.get(message.type)
        if handler is None and self._registry.get_db(message.type) is not None:
            return  # a DB-only type: nothing to do to the cache
        if handler is None:
            error = f"no handler for type {message.type!r}"
            self._step(stream).dead.append(self._dead(message, error, 1))
            return
        await self._flush()  # a handler sees everything before its message applied
        await self._handle(stream, handler, message)

    def _step(self, stream: StreamId) -> _Step:
        step = self._steps.get(stream)
        if step is None:
            step = self._steps[stream] = _Step(through_seq=self.applied(stream))
        return step

    async def _handle(self, stream: StreamId, handler: Handler, message: Message) -> None:
        """Run a user handler (or look at the call already running for this message); on
        failure either wait for a retry or park the message. A call still running after
        HANDLER_SLICE_S holds only this stream: `_RetryLater`, and the round goes on."""
        running = self._running.get(stream)
        if running is None or running.message.seq != message.seq:
            running = self._start(stream, handler, message)
        if not running.task.done():
            await asyncio.wait({running.task}, timeout=HANDLER_SLICE_S)
        if not running.task.done():
            raise _RetryLater
        del self._running[stream]
        if running.task.cancelled():
            raise _RetryLater  # started again at the next visit
        error = running.task.exception()
        if error is not None:
            self._failed(stream, running, error)
        key = (stream, message.seq)
        self._attempts.pop(key, None)
        self._retry_at.pop(stream, None)
        self._failing.pop(stream, None)

    def _start(self, stream: StreamId, handler: Handler, message: Message) -> _Attempt:
        attempt = self._attempts.get((stream, message.seq), 0) + 1
        retry = attempt > 1 or stream in self._restarted
        self._restarted.discard(stream)
        timeout_s = self._timeout_s(message.type)
        delivery = Delivery(message, self.site, attempt, retry, self._state)
        task = asyncio.ensure_future(self._call(handler, delivery, timeout_s))
        task.add_done_callback(lambda _: self._wake.fire())
        task.add_done_callback(_retrieve)  # read by `_handle`, or dropped after a close
        running = _Attempt(message, attempt, self._clock.monotonic(), timeout_s, task)
        self._running[stream] = running
        return running

    def _timeout_s(self, message_type: str) -> float:
        return self._registry.options(message_type).timeout_s or self._settings.handler_timeout_s

    async def _call(self, handler: Handler, delivery: Delivery, timeout_s: float) -> None:
        """The handler, failed with HandlerTimeout after `timeout_s`. A timed-out handler is
        cancelled and left behind: one that ignores cancellation cannot hold its stream."""
        work = asyncio.ensure_future(handler(delivery))
        work.add_done_callback(_retrieve)
        timer = asyncio.ensure_future(self._clock.sleep(timeout_s))
        try:
            await asyncio.wait({work, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if not work.done():
                work.cancel()
        if not work.done() or work.cancelled():
            m = delivery.message
            log.warning(
                "handler_timeout", site=self.site, origin=m.origin, partition=m.partition,
                seq=m.seq, id=m.id, type=m.type, attempt=delivery.attempt, timeout_s=timeout_s,
            )  # fmt: skip
            raise HandlerTimeout(
                f"handler for {m.type!r} did not return within {timeout_s:g} s (set "
                "[replication] handler_timeout_s, or timeout_s when registering the type)"
            )
        work.result()

    def _failed(self, stream: StreamId, running: _Attempt, exc: BaseException) -> None:
        """A failed attempt: wait and retry (`_RetryLater`), or park the message."""
        message, attempt = running.message, running.attempt
        self._totals["failures"] += 1
        self.progress.fire()  # statistics changed
        error = f"{type(exc).__name__}: {exc}"
        hold = self._registry.options(message.type).on_exhausted == "hold"
        fields = dict(
            site=self.site, origin=message.origin, partition=message.partition,
            seq=message.seq, id=message.id, type=message.type, attempt=attempt,
        )  # fmt: skip
        trace = None if isinstance(exc, HandlerTimeout) else exc
        if attempt < self._settings.apply_max_attempts or hold:
            self._attempts[(stream, message.seq)] = attempt
            backoff_s = self._settings.apply_retry_backoff_ms / 1000 * 2 ** (min(attempt, 30) - 1)
            if hold:
                backoff_s = min(backoff_s, HOLD_RETRY_MAX_S)
            self._retry_at[stream] = self._clock.monotonic() + backoff_s
            self._failing[stream] = (message.seq, attempt, error)
            held = hold and attempt >= self._settings.apply_max_attempts
            log.warning("handler_failed", exc=trace, **fields, retry_in_s=round(backoff_s, 3),
                        holding_stream=held, error=error)  # fmt: skip
            raise _RetryLater from exc
        log.error("message_parked", exc=trace, **fields, error=error)
        self._step(stream).dead.append(self._dead(message, error, attempt))

    def _dead(self, message: Message, error: str, attempts: int) -> DeadLetter:
        return DeadLetter(
            message.origin,
            message.partition,
            message.seq,
            message.id,
            message.type,
            message.key,
            error,
            attempts,
            self._clock.wall_ms(),
        )

    async def _flush(self) -> None:
        """Commit every stream's pending step in one atomic state commit (P3)."""
        steps = [s for s in self._steps.items() if s[1].processed]
        self._steps = {}
        if not steps:
            return
        await self._state.commit(
            *(Commit(stream, s.through_seq, s.processed, s.builtin, s.dead) for stream, s in steps)
        )
        for stream, s in steps:
            for observer in self.observers:
                observer(stream, self.applied(stream) + 1, s.through_seq, s.dead)
            self._applied[stream] = s.through_seq
            self._counts[stream] = self._counts.get(stream, 0) + s.processed
            self._totals["applied"] += s.processed - len(s.dead)
            self._totals["parked"] += len(s.dead)
        self.progress.fire()

    async def reapply(self, message: Message, attempt: int) -> str | None:
        """Run a parked message's handler again (reconciler re-drive or operator replay);
        return None on success, else the error. The caller drops or keeps the dead letter."""
        handler = self._registry.get(message.type)
        if handler is None:
            return f"no handler for type {message.type!r}"
        delivery = Delivery(message, self.site, attempt, True, self._state)
        try:
            await self._call(handler, delivery, self._timeout_s(message.type))
        except Exception as exc:
            self._totals["failures"] += 1
            return f"{type(exc).__name__}: {exc}"
        self._totals["applied"] += 1
        return None

    def canaries(self) -> dict[str, dict[str, float]]:
        """Per origin: age of its newest canary applied here, and how long it took to arrive."""
        return canary_ages(self._canaries, self._clock.wall_ms())

    def canary_times(self) -> dict[str, tuple[int, int]]:
        """Per origin: (created, applied) wall-clock ms of its newest canary applied here."""
        return dict(self._canaries)

    def overdue_canaries(self, interval_s: float, sites: Sequence[str]) -> list[str]:
        """Origins whose canaries stopped arriving here: a link that may look connected but
        does not deliver."""
        return overdue_canaries(
            self.site, self._canaries, self.started_ms, interval_s, sites, self._clock.wall_ms()
        )

    def totals(self) -> tuple[int, int, int]:
        """Messages applied, parked, and handler failures since start (cheap)."""
        t = self._totals
        return t["applied"], t["parked"], t["failures"]

    def watermark(self, stream: StreamId) -> tuple[int, int]:
        """(applied seq, messages applied) of a stream."""
        return self._applied.get(stream, 0), self._counts.get(stream, 0)

    def holes(self) -> dict[StreamId, int]:
        """Streams stopped at a journal hole, and the first seq after it."""
        return dict(self._holes)

    def retry_state(self, stream: StreamId) -> RetryState | None:
        """Why a stream is waiting, if a handler failed and will be retried."""
        failing = self._failing.get(stream)
        if failing is None:
            return None
        seq, attempts, error = failing
        wait = max(0.0, self._retry_at.get(stream, 0.0) - self._clock.monotonic())
        return RetryState(seq, attempts, round(wait, 3), error)

    def stuck_handlers(self) -> list[RunningHandler]:
        """Handlers running for more than STUCK_AFTER_S, each holding its stream."""
        now = self._clock.monotonic()
        return [
            RunningHandler(
                stream.origin,
                stream.partition,
                r.message.seq,
                r.message.id,
                r.message.type,
                r.attempt,
                round(now - r.started_s, 3),
                r.timeout_s,
            )
            for stream, r in sorted(self._running.items())
            if not r.task.done() and now - r.started_s >= STUCK_AFTER_S
        ]

    def statistics(self) -> ProcessorStatistics:
        heads = self._journal.heads()
        streams = {
            stream: StreamProgress(
                self.applied(stream),
                self._counts.get(stream, 0),
                heads.get(stream, 0),
                self._created.get(stream, 0),
                self._retry_at.get(stream, 0.0),
            )
            for stream in sorted(set(heads) | set(self._applied))
        }
        ordered = sorted(self._latencies)
        return ProcessorStatistics(
            self._totals["applied"],
            self._totals["parked"],
            self._totals["failures"],
            streams,
            _quantile(ordered, 0.5),
            _quantile(ordered, 0.99),
            tuple(self.stuck_handlers()),
            None if self.db is None else self.db.summary(),
        )

    async def close(self) -> None:
        """Cancel the handler calls still running (the processor's own task is cancelled by
        its owner) and close its database."""
        for running in self._running.values():
            running.task.cancel()
        if self.db is not None:
            await self.db.close()

    async def wait_caught_up(self, timeout_s: float) -> bool:
        """Wait until every journaled message is applied (for drains and tests)."""
        return await wait_until(self.caught_up, self.progress, timeout_s)


def canary_ages(times: dict[str, tuple[int, int]], now: int) -> dict[str, dict[str, float]]:
    """Per origin: age at wall-clock ms `now` of its newest canary, and its travel time."""
    return {
        origin: {"age_s": (now - created) / 1000, "latency_s": (applied - created) / 1000}
        for origin, (created, applied) in times.items()
    }


def overdue_canaries(
    site: str,
    times: dict[str, tuple[int, int]],
    started_ms: int,
    interval_s: float,
    sites: Sequence[str],
    now: int,
) -> list[str]:
    """Origins whose newest canary here is, at wall-clock ms `now`, older than
    CANARY_OVERDUE_INTERVALS intervals."""
    if interval_s <= 0:
        return []
    limit = interval_s * CANARY_OVERDUE_INTERVALS * 1000
    overdue = []
    for origin in sites:
        created, _ = times.get(origin, (started_ms, 0))
        if origin != site and now - created > limit:
            overdue.append(
                f"no canary from {origin} for {(now - created) / 1000:.0f} s "
                f"(sent every {interval_s:g} s): its messages are not arriving here"
            )
    return overdue


def _counters_twice(ops: list[OpTuple]) -> list[OpTuple]:
    """The failpoint `counter_applied_twice`: every counter.add op appears twice."""
    return [twice for op in ops for twice in ((op, op) if op[0] == COUNTER_ADD else (op,))]


def _retrieve(task: asyncio.Future[None]) -> None:
    """A handler left behind after its timeout: its end is not an unretrieved error."""
    if not task.cancelled():
        task.exception()


def _quantile(ordered: list[int], q: float) -> float | None:
    if not ordered:
        return None
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])
