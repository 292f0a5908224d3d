"""The processor: P1 order per stream, P3 exactly-once built-ins, user handlers with retries
and dead letters, restarts, statistics.

Each test body is one coroutine run with `asyncio.run`. The processor runs as a task over an
in-memory journal and state (SQLite files in `tmp_path` where a real restart adds value) and
is fed with `append_remote` / `append_local`, as the collector and ingress feed it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from multiactive.aio import Pulse
from multiactive.journal import Journal, LocalGroup, MemoryJournal, SqliteJournal
from multiactive.model.batch import build_batch
from multiactive.model.clock import wall_ms
from multiactive.model.message import Row, StreamId
from multiactive.model.topology import ReplicationSettings
from multiactive.replication.handlers import Delivery, HandlerRegistry
from multiactive.replication.processor import Processor, StreamProgress
from multiactive.state import Commit, Entry, MemoryState, SqliteState, StateBackend, Watermark

SITE = "bj"
GZ0 = StreamId("gz", 0)
GZ1 = StreamId("gz", 1)
SH0 = StreamId("sh", 0)
SH3 = StreamId("sh", 3)
BJ0 = StreamId(SITE, 0)
BJ2 = StreamId(SITE, 2)
CREATED_MS = 1_000
SETTINGS = ReplicationSettings(apply_max_attempts=4, apply_retry_backoff_ms=1.0)
TIMEOUT_S = 5.0


def run(main: Coroutine[Any, Any, None]) -> None:
    asyncio.run(main)


def msg(
    id_: str,
    type_: str = "kv.set",
    key: str | None = None,
    payload: bytes = b"",
    version: int = 1,
    created_ms: int = CREATED_MS,
) -> Row:
    return (id_, type_, key if key is not None else f"key-{id_}", version, created_ms, {}, payload)


async def feed(journal: Journal, stream: StreamId, *rows: Row, created_ms: int = 0) -> None:
    """Journal rows as the next batch of a stream: local via append_local, else remote."""
    if stream.origin == journal.site:
        await journal.append_local([LocalGroup(stream.partition, rows, created_ms)])
        return
    first_seq = journal.head(stream) + 1
    batch = build_batch(stream.origin, stream.partition, first_seq, rows, created_ms)
    result = await journal.append_remote([batch])
    assert result.stored == 1


async def until(condition: Callable[[], bool], pulse: Pulse, timeout_s: float = TIMEOUT_S) -> None:
    """Wait until a condition holds, re-checking it whenever `pulse` fires; TimeoutError after
    the deadline."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await pulse.wait()


@asynccontextmanager
async def running(processor: Processor) -> AsyncIterator[Processor]:
    """Load the processor and run it as a task until the block ends (errors surface here)."""
    await processor.load()
    task = asyncio.create_task(processor.run())
    try:
        yield processor
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Recorder:
    """A user handler that records each delivery; fails its first `fail_times` deliveries
    (every one with `fail_times=-1`) and, with a gate, waits for it before returning."""

    def __init__(
        self,
        fail_times: int = 0,
        error: Exception | None = None,
        gate: asyncio.Event | None = None,
    ) -> None:
        self.fail_times = fail_times
        self.error = error or RuntimeError("handler failed")
        self.gate = gate
        self.deliveries: list[Delivery] = []
        self.delivered = Pulse()

    async def __call__(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        self.delivered.fire()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_times < 0 or len(self.deliveries) <= self.fail_times:
            raise self.error

    @property
    def seqs(self) -> list[int]:
        return [d.message.seq for d in self.deliveries]

    @property
    def attempts(self) -> list[tuple[int, int, bool]]:
        return [(d.message.seq, d.attempt, d.retry) for d in self.deliveries]


def registry_with(**handlers: Recorder) -> HandlerRegistry:
    """A registry mapping `type_name=handler` (underscores in the name become dots)."""
    registry = HandlerRegistry()
    for name, handler in handlers.items():
        registry.register(name.replace("_", "."), handler)
    return registry


class RecordingState(MemoryState):
    """A MemoryState that remembers every commit it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.commits: list[Commit] = []

    async def commit(self, *steps: Commit) -> None:
        await super().commit(*steps)
        self.commits.extend(steps)

    def committed_keys(self) -> list[str]:
        return [op[1] for step in self.commits for op in step.builtin]


class Backend:
    """A journal and a state of one kind; `restart` gives fresh objects on the same data."""

    def __init__(self, kind: str, folder: Path) -> None:
        self.kind = kind
        self.folder = folder
        self.journal: Journal = MemoryJournal(SITE)
        self.state: StateBackend = MemoryState()

    async def open(self) -> None:
        if self.kind == "sqlite":
            self.journal = SqliteJournal(SITE, self.folder / "journal.sqlite3", fsync=False)
            self.state = SqliteState(SITE, self.folder / "state.sqlite3")
        await self.journal.open()
        await self.state.open()

    async def close(self) -> None:
        await self.state.close()
        await self.journal.close()

    async def restart(self) -> None:
        """Close and reopen (SQLite: new objects on the same files; memory: the same ones)."""
        await self.close()
        await self.open()

    def processor(self, registry: HandlerRegistry | None = None) -> Processor:
        return Processor(SITE, self.journal, self.state, registry or HandlerRegistry(), SETTINGS)


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return Backend(request.param, tmp_path)


def memory_processor(
    journal: Journal,
    state: StateBackend,
    registry: HandlerRegistry | None = None,
    settings: ReplicationSettings = SETTINGS,
) -> Processor:
    return Processor(SITE, journal, state, registry or HandlerRegistry(), settings)


async def opened_memory() -> tuple[MemoryJournal, RecordingState]:
    journal = MemoryJournal(SITE)
    await journal.open()
    return journal, RecordingState()


# -- P3: built-in operations exactly once ----------------------------------------------------


def test_builtins_of_every_stream_are_applied_exactly_once(backend: Backend) -> None:
    """P3: kv.set/kv.del of local and remote streams are applied; each watermark is the head
    and its count equals the head (every message applied exactly once)."""

    async def main() -> None:
        await backend.open()
        journal = backend.journal
        try:
            await feed(journal, GZ0, msg("g1", payload=b"1"), msg("g2", payload=b"2"))
            await feed(journal, GZ0, msg("g3"), msg("g1-del", "kv.del", key="key-g1", version=2))
            await feed(journal, SH3, msg("s1", payload=b"s"))
            await feed(journal, BJ0, msg("b1", payload=b"b"), msg("b2", payload=b"c"))
            async with running(backend.processor()) as processor:
                assert await processor.wait_caught_up(TIMEOUT_S)
                await feed(journal, GZ0, msg("g4", payload=b"4"))
                await feed(journal, BJ2, msg("b3", payload=b"d"))
                await feed(journal, SH0, msg("s2"), msg("s3", payload=b"z"))
                assert await processor.wait_caught_up(TIMEOUT_S)
                heads = journal.heads()
                assert heads == {GZ0: 5, SH3: 1, BJ0: 2, BJ2: 1, SH0: 2}
                assert {s: processor.applied(s) for s in heads} == heads
            marks = await backend.state.watermarks()
            assert marks == {stream: Watermark(head, head) for stream, head in heads.items()}
            entries = {e.key: (e.value, e.origin) for e in await backend.state.entries()}
            assert entries == {
                "key-g1": (None, "gz"),
                "key-g2": (b"2", "gz"),
                "key-g3": (b"", "gz"),
                "key-g4": (b"4", "gz"),
                "key-s1": (b"s", "sh"),
                "key-s2": (b"", "sh"),
                "key-s3": (b"z", "sh"),
                "key-b1": (b"b", SITE),
                "key-b2": (b"c", SITE),
                "key-b3": (b"d", SITE),
            }
        finally:
            await backend.close()

    run(main())


def test_restart_in_the_middle_of_a_batch_resumes_after_the_watermark() -> None:
    """P3 across a restart: with the state committed through seq 2 of a 5-message batch, a new
    processor starts at seq 3 and never applies seqs 1-2 again."""

    async def main() -> None:
        journal, state = await opened_memory()
        await feed(
            journal,
            GZ0,
            msg("a", payload=b"a1"),
            msg("b", payload=b"b1"),
            msg("x", "user.x"),
            msg("c", payload=b"c1"),
            msg("d", payload=b"d1"),
        )
        stuck = Recorder(gate=asyncio.Event())  # the first run stops inside this handler
        async with running(memory_processor(journal, state, registry_with(user_x=stuck))):
            await until(lambda: len(stuck.deliveries) == 1, stuck.delivered)
        assert await state.watermarks() == {GZ0: Watermark(2, 2)}
        assert state.committed_keys() == ["key-a", "key-b"]

        state.commits.clear()
        handler = Recorder()
        processor = memory_processor(journal, state, registry_with(user_x=handler))
        async with running(processor):
            assert await processor.wait_caught_up(TIMEOUT_S)
        assert handler.seqs == [3]
        assert state.committed_keys() == ["key-c", "key-d"]
        assert await state.watermarks() == {GZ0: Watermark(5, 5)}

    run(main())


def test_watermark_inside_a_batch_of_builtins_skips_the_applied_part() -> None:
    """P3: a state committed through seq 2 of a batch of built-ins (by an earlier run) gets
    only seqs 3-5 of that batch applied, and the count stays equal to the head."""

    async def main() -> None:
        journal, state = await opened_memory()
        rows = [msg(name, payload=b"new", version=2) for name in "abcde"]
        await feed(journal, GZ0, *rows)
        earlier = [("kv.set", "key-a", 1, "gz", b"old"), ("kv.set", "key-b", 1, "gz", b"old")]
        await state.commit(Commit(GZ0, 2, 2, earlier))
        state.commits.clear()
        processor = memory_processor(journal, state)
        async with running(processor):
            assert await processor.wait_caught_up(TIMEOUT_S)
        assert state.committed_keys() == ["key-c", "key-d", "key-e"]
        assert await state.watermarks() == {GZ0: Watermark(5, 5)}
        assert await state.get("key-a") == Entry("key-a", b"old", 1, "gz")

    run(main())


# -- P1: seq order per stream ----------------------------------------------------------------


def test_each_stream_is_applied_in_seq_order() -> None:
    """P1: a user handler sees every message of each stream once, in seq order."""

    async def main() -> None:
        journal, state = await opened_memory()
        handler = Recorder()
        processor = memory_processor(journal, state, registry_with(rec=handler))
        streams = [GZ0, GZ1, SH0, BJ2]
        async with running(processor):
            for round_ in range(3):
                for stream in streams:
                    await feed(
                        journal,
                        stream,
                        *[msg(f"{stream}-{round_}-{i}", "rec") for i in range(3)],
                        msg(f"{stream}-{round_}-set"),
                        msg(f"{stream}-{round_}-last", "rec"),
                    )
            assert await processor.wait_caught_up(TIMEOUT_S)
        for stream in streams:
            seen = [d.message.seq for d in handler.deliveries if d.message.stream == stream]
            assert seen == [seq for seq in range(1, 16) if seq % 5 != 4]
            ids = [d.message.id for d in handler.deliveries if d.message.stream == stream]
            assert ids[:4] == [
                f"{stream}-0-0",
                f"{stream}-0-1",
                f"{stream}-0-2",
                f"{stream}-0-last",
            ]

    run(main())


def test_user_handler_sees_everything_before_its_message_committed() -> None:
    """A user handler runs only after every earlier message of its stream is committed: it
    reads the value and the watermark set by the built-in just before it in the same batch."""

    async def main() -> None:
        journal, state = await opened_memory()
        seen: list[tuple[Entry | None, Watermark | None]] = []

        async def check(delivery: Delivery) -> None:
            entry = await delivery.cache.get("shared")
            marks = await delivery.cache.watermarks()
            seen.append((entry, marks.get(delivery.message.stream)))

        registry = HandlerRegistry()
        registry.register("check", check)
        await feed(
            journal,
            GZ0,
            msg("s1", key="shared", payload=b"one", version=1),
            msg("s2", key="shared", payload=b"two", version=2),
            msg("c1", "check"),
            msg("s3", key="shared", payload=b"three", version=3),
            msg("c2", "check"),
        )
        processor = memory_processor(journal, state, registry)
        async with running(processor):
            assert await processor.wait_caught_up(TIMEOUT_S)
        assert seen == [
            (Entry("shared", b"two", 2, "gz"), Watermark(2, 2)),
            (Entry("shared", b"three", 3, "gz"), Watermark(4, 4)),
        ]

    run(main())


# -- user handlers: retries and dead letters -------------------------------------------------


def test_failing_handler_is_retried_until_it_succeeds() -> None:
    """A handler failing 3 times of apply_max_attempts=4 is retried with attempt 1..4 (retry
    true from attempt 2); the stream then goes on and nothing is parked."""

    async def main() -> None:
        journal, state = await opened_memory()
        handler = Recorder(fail_times=3)
        processor = memory_processor(journal, state, registry_with(flaky=handler))
        async with running(processor):
            await feed(journal, GZ0, msg("f", "flaky"), msg("after", payload=b"ok"))
            assert await processor.wait_caught_up(TIMEOUT_S)
        assert handler.attempts == [(1, 1, False), (1, 2, True), (1, 3, True), (1, 4, True)]
        assert await state.dead_letters() == []
        assert await state.watermarks() == {GZ0: Watermark(2, 2)}
        assert await state.get("key-after") == Entry("key-after", b"ok", 1, "gz")
        stats = processor.statistics()
        assert (stats.applied_messages, stats.parked_messages, stats.handler_failures) == (2, 0, 3)

    run(main())


def test_handler_failing_every_attempt_is_parked_and_the_stream_moves_on() -> None:
    """After apply_max_attempts failures the message becomes a dead letter naming the error
    ("Type: message") and the attempts; later messages of the stream are applied."""

    async def main() -> None:
        journal, state = await opened_memory()
        broken = Recorder(fail_times=-1, error=ValueError("order 7 has no customer"))
        later = Recorder()
        registry = registry_with(order_new=broken, order_log=later)
        processor = memory_processor(journal, state, registry)
        async with running(processor):
            await feed(
                journal,
                GZ1,
                msg("ok-1"),
                msg("bad", "order.new", key="order-7"),
                msg("ok-2", payload=b"2"),
                msg("log", "order.log"),
            )
            assert await processor.wait_caught_up(TIMEOUT_S)
        assert broken.attempts == [(2, 1, False), (2, 2, True), (2, 3, True), (2, 4, True)]
        (dead,) = await state.dead_letters()
        assert (dead.origin, dead.partition, dead.seq, dead.id, dead.type, dead.key) == (
            "gz",
            1,
            2,
            "bad",
            "order.new",
            "order-7",
        )
        assert dead.error == "ValueError: order 7 has no customer"
        assert dead.attempts == SETTINGS.apply_max_attempts
        assert later.seqs == [4]
        assert await state.get("key-ok-2") == Entry("key-ok-2", b"2", 1, "gz")
        assert await state.watermarks() == {GZ1: Watermark(4, 4)}
        stats = processor.statistics()
        assert (stats.applied_messages, stats.parked_messages, stats.handler_failures) == (3, 1, 4)

    run(main())


def test_message_without_a_handler_is_parked_at_once() -> None:
    """A message of a type with no handler is a dead letter on the first try, with error
    "no handler for type 'x'", and the stream goes on."""

    async def main() -> None:
        journal, state = await opened_memory()
        processor = memory_processor(journal, state)
        async with running(processor):
            await feed(journal, SH0, msg("u", "x", key="kx"), msg("after"))
            assert await processor.wait_caught_up(TIMEOUT_S)
        (dead,) = await state.dead_letters()
        assert (dead.seq, dead.type, dead.key, dead.attempts) == (1, "x", "kx", 1)
        assert dead.error == "no handler for type 'x'"
        assert await state.get("key-after") is not None
        assert await state.watermarks() == {SH0: Watermark(2, 2)}
        stats = processor.statistics()
        assert (stats.applied_messages, stats.parked_messages, stats.handler_failures) == (1, 1, 0)

    run(main())


def test_stream_waiting_for_a_retry_does_not_hold_back_other_streams() -> None:
    """P1 is per stream, not global: while one stream waits out a retry backoff, messages of
    other streams are applied."""

    async def main() -> None:
        journal, state = await opened_memory()
        slow_retry = ReplicationSettings(apply_max_attempts=4, apply_retry_backoff_ms=60_000.0)
        handler = Recorder(fail_times=-1)
        processor = memory_processor(journal, state, registry_with(fail=handler), slow_retry)
        async with running(processor):
            await feed(journal, GZ0, msg("f", "fail"), msg("behind"))
            await until(lambda: len(handler.deliveries) == 1, handler.delivered)
            # the failure is counted once the handler's task has ended
            await until(lambda: processor.statistics().handler_failures == 1, processor.progress)
            await feed(journal, GZ1, msg("other-1"))
            await feed(journal, SH0, msg("other-2"))
            await until(
                lambda: processor.applied(GZ1) == processor.applied(SH0) == 1, processor.progress
            )
            assert processor.applied(GZ0) == 0
            assert processor.statistics().streams[GZ0].retry_at_s > 0
            assert not processor.caught_up()
        assert handler.seqs == [1]
        assert await state.get("key-behind") is None
        assert await state.get("key-other-2") is not None

    run(main())


def test_first_delivery_of_a_stream_after_a_restart_is_a_retry(backend: Backend) -> None:
    """After a restart (a new processor on a state with watermarks) the first delivery of each
    stream has retry true, later ones false."""

    async def main() -> None:
        await backend.open()
        try:
            first = Recorder()
            async with running(backend.processor(registry_with(rec=first))) as processor:
                await feed(backend.journal, GZ0, msg("1", "rec"))
                await feed(backend.journal, SH0, msg("2", "rec"))
                assert await processor.wait_caught_up(TIMEOUT_S)
            assert first.attempts == [(1, 1, False), (1, 1, False)]

            await backend.restart()
            assert set(await backend.state.watermarks()) == {GZ0, SH0}
            second = Recorder()
            async with running(backend.processor(registry_with(rec=second))) as processor:
                await feed(backend.journal, GZ0, msg("3", "rec"), msg("4", "rec"))
                await feed(backend.journal, SH0, msg("5"), msg("6", "rec"))
                assert await processor.wait_caught_up(TIMEOUT_S)
            by_stream = {
                stream: [
                    (d.message.seq, d.attempt, d.retry)
                    for d in second.deliveries
                    if d.message.stream == stream
                ]
                for stream in (GZ0, SH0)
            }
            assert by_stream == {GZ0: [(2, 1, True), (3, 1, False)], SH0: [(3, 1, True)]}
        finally:
            await backend.close()

    run(main())


def test_handler_interrupted_before_its_streams_first_commit_is_a_retry(
    backend: Backend,
) -> None:
    """A handler that ran for a stream's first message but was stopped before the commit is
    delivered again after the restart with retry true, though the stream has no watermark."""

    async def main() -> None:
        await backend.open()
        try:
            stuck = Recorder(gate=asyncio.Event())
            async with running(backend.processor(registry_with(rec=stuck))):
                await feed(backend.journal, GZ0, msg("1", "rec"))
                await until(lambda: len(stuck.deliveries) == 1, stuck.delivered)
            assert await backend.state.watermarks() == {}

            await backend.restart()
            again = Recorder()
            async with running(backend.processor(registry_with(rec=again))) as processor:
                assert await processor.wait_caught_up(TIMEOUT_S)
            assert again.attempts == [(1, 1, True)]
        finally:
            await backend.close()

    run(main())


# -- statistics and catching up --------------------------------------------------------------


def test_statistics_report_totals_stream_progress_and_latency() -> None:
    """statistics(): applied, parked and failure totals, per-stream applied/count/head/origin
    time, and latency percentiles (None before anything was applied)."""

    async def main() -> None:
        journal, state = await opened_memory()
        processor = memory_processor(journal, state, registry_with(flaky=Recorder(fail_times=1)))
        old = wall_ms() - 60_000
        await feed(
            journal,
            GZ0,
            msg("1", created_ms=old),
            msg("2", "kv.del", created_ms=old),
            msg("3", "nobody", created_ms=old),
            msg("4", "flaky", created_ms=old),
            created_ms=111,
        )
        await feed(journal, SH3, msg("5", created_ms=old), created_ms=222)
        await processor.load()
        before = processor.statistics()
        assert before.streams == {
            GZ0: StreamProgress(0, 0, 4, 0, 0.0),
            SH3: StreamProgress(0, 0, 1, 0, 0.0),
        }
        assert (before.latency_ms_p50, before.latency_ms_p99) == (None, None)
        async with running(processor):
            assert await processor.wait_caught_up(TIMEOUT_S)
        stats = processor.statistics()
        assert (stats.applied_messages, stats.parked_messages, stats.handler_failures) == (4, 1, 1)
        assert stats.streams == {
            GZ0: StreamProgress(4, 4, 4, 111, 0.0),
            SH3: StreamProgress(1, 1, 1, 222, 0.0),
        }
        assert stats.latency_ms_p50 is not None
        assert stats.latency_ms_p99 is not None
        assert 60_000 <= stats.latency_ms_p50 <= stats.latency_ms_p99

    run(main())


def test_caught_up_and_wait_caught_up_follow_the_journal_heads() -> None:
    """caught_up() is true when every journaled message is applied; wait_caught_up returns True
    once that holds and False when its timeout passes first."""

    async def main() -> None:
        journal, state = await opened_memory()
        gate = asyncio.Event()
        processor = memory_processor(journal, state, registry_with(slow=Recorder(gate=gate)))
        await processor.load()
        assert processor.caught_up()
        assert await processor.wait_caught_up(0.01)
        await feed(journal, GZ0, msg("1"), msg("2"))
        assert not processor.caught_up()
        assert not await processor.wait_caught_up(0.01)  # nothing is running yet
        async with running(processor):
            assert await processor.wait_caught_up(TIMEOUT_S)
            assert processor.caught_up()
            await feed(journal, GZ0, msg("3", "slow"))
            assert not processor.caught_up()
            assert not await processor.wait_caught_up(0.01)  # the handler is still waiting
            waiter = asyncio.create_task(processor.wait_caught_up(TIMEOUT_S))
            gate.set()
            assert await waiter
            assert processor.caught_up()

    run(main())
