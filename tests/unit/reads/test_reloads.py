"""The reload queue (memory, SQLite, a real redis-server and Redis Cluster: one contract) and
the reloader, on a gate and a clock the test moves."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from multiactive.reads import Cache, Loaded, Loaders, ManualGate
from multiactive.reads.redis import RedisReloads
from multiactive.reads.reloads import MemoryReloads, Reloader, ReloadQueue, SqliteReloads
from multiactive.state import MemoryState
from multiactive.testing import FakeClock
from tests.unit.reads.test_cache import RowsReader, load_row

QueueFactory = Callable[[int], ReloadQueue]


@pytest.fixture(params=["memory", "sqlite", "redis", "redis-cluster"])
def make_queue(request: pytest.FixtureRequest, tmp_path: Path) -> QueueFactory:
    """Queues of one backend; two made by one test share their storage (a restart)."""
    kind = request.param
    url = ""
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
    elif kind == "redis-cluster":
        url = request.getfixturevalue("redis_cluster_url").replace("redis://", "redis+cluster://")
    shared = MemoryReloads(reload_after_s=60, max_pending=3)

    def make(max_pending: int = 3) -> ReloadQueue:
        if kind == "memory":
            shared.max_pending = max_pending
            return shared
        if kind == "sqlite":
            return SqliteReloads(tmp_path / "reloads.sqlite3", 60, max_pending)
        return RedisReloads(url, "gz", "test: sites.gz.redis_url", 60, max_pending)

    return make


def test_one_entry_per_key_with_the_newest_mark_and_the_earliest_deadline(
    make_queue: QueueFactory,
) -> None:
    async def run() -> None:
        queue = make_queue(3)
        await queue.open()
        try:
            await queue.schedule("k1", "0-1-5", 1_000)
            await queue.schedule("k2", "0-1-6", 2_000)
            await queue.schedule("k1", "0-1-9", 5_000)  # filled again: a newer mark
            pending = await queue.pending()
            assert [(p.key, p.mark, p.filled_ms, p.due_ms) for p in pending] == [
                ("k1", "0-1-9", 1_000, 61_000),
                ("k2", "0-1-6", 2_000, 62_000),
            ]
            assert await queue.count() == 2
        finally:
            await queue.close()

    asyncio.run(run())


def test_a_full_queue_drops_new_keys_and_counts_them_but_updates_held_ones(
    make_queue: QueueFactory,
) -> None:
    async def run() -> None:
        queue = make_queue(2)
        await queue.open()
        try:
            for key in ("a", "b", "c"):
                await queue.schedule(key, "m1", 1_000)
            await queue.schedule("a", "m2", 1_500)  # held: still updated
            assert await queue.count() == 2
            assert queue.dropped == 1
            assert {p.key: p.mark for p in await queue.pending()} == {"a": "m2", "b": "m1"}
        finally:
            await queue.close()

    asyncio.run(run())


def test_done_keeps_an_entry_filled_again_with_another_mark_meanwhile(
    make_queue: QueueFactory,
) -> None:
    """A reload finishing after the key was filled again (a new mark) leaves that fill's
    reload queued."""

    async def run() -> None:
        queue = make_queue(3)
        await queue.open()
        try:
            await queue.schedule("a", "m1", 1_000)
            await queue.schedule("b", "m1", 1_000)
            seen = await queue.pending()
            await queue.schedule("a", "m2", 2_000)
            await queue.done(seen)
            assert [(p.key, p.mark) for p in await queue.pending()] == [("a", "m2")]
        finally:
            await queue.close()

    asyncio.run(run())


def test_pending_reloads_survive_closing_and_opening_the_queue_again(
    make_queue: QueueFactory,
) -> None:
    """Durable (SQLite file, Redis server): a restarted site finds what was queued."""

    async def run() -> None:
        first = make_queue(3)
        await first.open()
        await first.schedule("k", "0-1-7", 1_000)
        await first.close()
        second = make_queue(3)
        await second.open()
        try:
            assert [(p.key, p.mark) for p in await second.pending()] == [("k", "0-1-7")]
        finally:
            await second.close()

    asyncio.run(run())


def reloader_over(
    db: RowsReader, gate: ManualGate, queue: ReloadQueue, clock: FakeClock
) -> tuple[Reloader, Cache]:
    loaders = Loaders()
    loaders.register("user:", load_row)
    cache = Cache(MemoryState(), db=db, loaders=loaders, gate=gate, reloads=queue, clock=clock)
    return Reloader(queue, gate, cache, poll_s=0.2, clock=clock), cache


def test_a_stale_fill_is_reloaded_once_the_copy_passed_the_mark_and_not_before() -> None:
    """The replica serves v1 while the writer has v2: the fill is v1, queued with the
    writer's position; rounds before the replica passes it reload nothing; the round after
    repairs the key to v2 and empties the queue."""
    db, gate, clock = RowsReader(), ManualGate(writer=2, local=1), FakeClock()
    queue = MemoryReloads(reload_after_s=600)
    reloader, cache = reloader_over(db, gate, queue, clock)
    db.rows["user:1"] = (b"v1", 1)  # what the lagging replica holds

    async def run() -> None:
        filled = await cache.get_or_load("user:1")
        assert filled is not None
        assert filled.value == b"v1"
        assert await reloader.round() == 0  # the replica has not applied position 2
        held = await cache.get("user:1")
        assert held is not None
        assert held.value == b"v1"
        db.rows["user:1"] = (b"v2", 2)
        gate.local = 2  # the replica applied the writer's write
        assert await reloader.round() == 1
        held = await cache.get("user:1")
        assert held is not None
        assert (held.value, held.version) == (b"v2", 2)
        s = reloader.statistics()
        assert (s.reloads, s.repaired, s.pending, s.at_deadline) == (1, 1, 0, 0)

    asyncio.run(run())


def test_fills_a_full_queue_drops_are_counted_by_the_cache_that_filled_them() -> None:
    """The application's cache queues its fills: its statistics (and so its
    CacheCollector) count the ones a full queue dropped."""
    db, gate, clock = RowsReader(), ManualGate(writer=2, local=1), FakeClock()
    queue = MemoryReloads(reload_after_s=600, max_pending=1)
    _, cache = reloader_over(db, gate, queue, clock)
    db.rows["user:1"], db.rows["user:2"] = (b"a", 1), (b"b", 1)

    async def run() -> None:
        await cache.get_or_load("user:1")
        await cache.get_or_load("user:2")  # the queue holds user:1: not queued
        assert cache.statistics().reloads_dropped == 1
        assert await queue.count() == 1

    asyncio.run(run())


def test_a_fill_whose_position_is_unknown_is_reloaded_at_its_deadline() -> None:
    """Mark '?' (the writer did not answer): only reload_after_s reloads it."""
    db, gate, clock = RowsReader(), ManualGate(), FakeClock()
    queue = MemoryReloads(reload_after_s=600)
    reloader, cache = reloader_over(db, gate, queue, clock)
    db.rows["user:2"] = (b"old", 1)

    async def run() -> None:
        await cache.fill("user:2", Loaded(b"old", 1))
        await queue.schedule("user:2", "?", clock.wall_ms())
        await clock.advance(599)
        assert await reloader.round() == 0
        db.rows["user:2"] = (b"new", 2)
        await clock.advance(1)
        assert await reloader.round() == 1
        assert reloader.statistics().at_deadline == 1
        held = await cache.get("user:2")
        assert held is not None
        assert held.value == b"new"

    asyncio.run(run())


def test_a_reload_whose_database_does_not_answer_stays_queued_and_runs_later() -> None:
    db, gate, clock = RowsReader(), ManualGate(writer=3, local=3), FakeClock()
    queue = MemoryReloads()
    reloader, _cache = reloader_over(db, gate, queue, clock)

    async def run() -> None:
        await queue.schedule("user:3", "3", clock.wall_ms())
        db.down = True
        assert await reloader.round() == 0
        assert reloader.statistics().failures == 1
        assert await queue.count() == 1
        db.down = False
        db.rows["user:3"] = (b"v", 3)
        assert await reloader.round() == 1
        assert await queue.count() == 0

    asyncio.run(run())


def test_a_queued_key_no_loader_serves_is_removed_and_counted() -> None:
    db, gate, clock = RowsReader(), ManualGate(), FakeClock()
    queue = MemoryReloads()
    reloader, _ = reloader_over(db, gate, queue, clock)

    async def run() -> None:
        await queue.schedule("post:1", "", clock.wall_ms())
        assert await reloader.round() == 1
        assert reloader.statistics().no_loader == 1
        assert await queue.count() == 0

    asyncio.run(run())


def test_the_reloader_runs_rounds_on_its_clock_until_stopped() -> None:
    """run(): a round every poll_s of the clock it was given, no real sleeping."""
    db, gate, clock = RowsReader(), ManualGate(writer=1, local=0), FakeClock()
    queue = MemoryReloads()
    reloader, _ = reloader_over(db, gate, queue, clock)

    async def run() -> None:
        db.rows["user:4"] = (b"v", 1)
        await queue.schedule("user:4", "1", clock.wall_ms())
        task = asyncio.create_task(reloader.run())
        await clock.advance(1.0)
        assert await queue.count() == 1
        gate.local = 1
        await clock.advance(0.2)
        assert await queue.count() == 0
        assert reloader.statistics().rounds >= 6
        reloader.stop()
        await clock.advance(0.2)
        await task

    asyncio.run(run())
