"""The read API on the in-memory state: hits, fills, single flight, loaders by prefix, and
misses while the database does not answer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from multiactive.db.base import Params, Row
from multiactive.db.reader import DbReader, SqliteReader
from multiactive.errors import ConfigError, DatabaseError, DatabaseUnavailable, MultiactiveError
from multiactive.model.message import StreamId
from multiactive.reads import Cache, Loaded, Loaders, ManualGate
from multiactive.reads.reloads import MemoryReloads
from multiactive.state import MemoryState
from multiactive.state.base import Commit, Op


class RowsReader:
    """A database reader over a dict (key -> (value, version)); `down` makes it fail as a
    server that does not answer does."""

    dialect = "sqlite"

    def __init__(self) -> None:
        self.rows: dict[str, tuple[bytes, int | None]] = {}
        self.down = False
        self.queries = 0

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        self.queries += 1
        if self.down:
            raise DatabaseError("test database: connection refused", transient=True)
        found = self.rows.get(str(params[0])) if params else None
        return [] if found is None else [found]

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def close(self) -> None:
        return None


async def load_row(key: str, db: DbReader) -> Loaded:
    row = await db.fetchone("SELECT v, version FROM t WHERE k = %s", (key,))
    return Loaded(None) if row is None else Loaded(row[0], row[1])


def cache_over(db: RowsReader, **options: object) -> Cache:
    loaders = Loaders()
    loaders.register("user:", load_row)
    return Cache(MemoryState(), db=db, loaders=loaders, **options)  # type: ignore[arg-type]


async def message_write(state: MemoryState, key: str, value: bytes, version: int) -> None:
    stream = StreamId("bj", 0)
    seq = (await state.watermarks()).get(stream)
    applied = 0 if seq is None else seq.applied
    await state.commit(Commit(stream, applied + 1, 1, (Op("kv.set", key, version, "bj", value),)))


def test_a_miss_loads_fills_and_the_next_read_is_a_hit_with_the_rows_version() -> None:
    """get_or_load: the loader's row is filled with the row's version; then served from the
    cache without asking the database again."""
    db = RowsReader()
    db.rows["user:1"] = (b"alice", 42)

    async def run() -> None:
        cache = cache_over(db)
        found = await cache.get_or_load("user:1")
        assert found is not None
        assert (found.value, found.version, found.filled) == (
            b"alice",
            42,
            True,
        )
        again = await cache.get_or_load("user:1")
        assert again == found
        assert db.queries == 1
        s = cache.statistics()
        assert (s.hits, s.misses, s.loads, s.fills) == (1, 1, 1, 1)

    asyncio.run(run())


def test_a_row_without_a_version_fills_below_every_message_driven_write() -> None:
    """A versionless row fills at version 0: any message-driven write of the key wins."""
    db = RowsReader()
    db.rows["user:2"] = (b"old", None)

    async def run() -> None:
        cache = cache_over(db)
        filled = await cache.get_or_load("user:2")
        assert filled is not None
        assert filled.version == 0
        await message_write(cache.state, "user:2", b"new", 1)  # type: ignore[arg-type]
        held = await cache.get("user:2")
        assert held is not None
        assert (held.value, held.filled) == (b"new", False)

    asyncio.run(run())


def test_a_fill_never_replaces_a_newer_message_driven_value() -> None:
    """The cache holds a message-driven v9; a fill of an older row is refused and counted."""
    db = RowsReader()

    async def run() -> None:
        cache = cache_over(db)
        await message_write(cache.state, "user:3", b"v9", 9)  # type: ignore[arg-type]
        assert not await cache.fill("user:3", Loaded(b"v5", 5))
        held = await cache.get("user:3")
        assert held is not None
        assert held.value == b"v9"
        assert cache.statistics().fills_lost == 1

    asyncio.run(run())


def test_a_hundred_concurrent_misses_of_one_key_run_the_loader_once() -> None:
    """Single flight: every reader that misses while a load runs waits for that load."""
    calls = 0
    release = asyncio.Event()

    async def slow_loader(key: str, db: DbReader) -> Loaded:
        nonlocal calls
        calls += 1
        await release.wait()
        return Loaded(b"value", 7)

    async def run() -> None:
        cache = cache_over(RowsReader())
        readers = [
            asyncio.create_task(cache.get_or_load("user:9", slow_loader)) for _ in range(100)
        ]
        for _ in range(20):  # every reader reaches its miss before the load returns
            await asyncio.sleep(0)
        assert cache.statistics().misses == 100
        release.set()
        found = await asyncio.gather(*readers)
        assert calls == 1
        assert {(f.value, f.version) for f in found if f is not None} == {(b"value", 7)}
        assert len([f for f in found if f is not None]) == 100
        assert cache.statistics().loads == 1

    asyncio.run(run())


def test_a_failed_load_fails_every_waiting_reader_and_the_next_miss_loads_again() -> None:
    """Single flight does not cache a failure: the waiters get the error, a later miss
    loads afresh."""
    db = RowsReader()
    db.down = True
    release = asyncio.Event()

    async def gated(key: str, reader: DbReader) -> Loaded:
        await release.wait()
        return await load_row(key, reader)

    async def run() -> None:
        cache = cache_over(db)
        readers = [asyncio.create_task(cache.get_or_load("user:4", gated)) for _ in range(5)]
        await asyncio.sleep(0)
        release.set()
        results = await asyncio.gather(*readers, return_exceptions=True)
        assert all(isinstance(r, DatabaseUnavailable) for r in results)
        db.down = False
        db.rows["user:4"] = (b"back", 3)
        found = await cache.get_or_load("user:4", gated)
        assert found is not None
        assert found.value == b"back"

    asyncio.run(run())


def test_with_the_database_down_cached_keys_are_served_and_a_miss_raises_unavailable() -> None:
    """Degraded reads: hits keep working; a miss raises DatabaseUnavailable (a
    MultiactiveError naming the key) and is counted."""
    db = RowsReader()
    db.rows["user:5"] = (b"cached", 5)

    async def run() -> None:
        cache = cache_over(db)
        await cache.get_or_load("user:5")
        db.down = True
        held = await cache.get_or_load("user:5")
        assert held is not None
        assert held.value == b"cached"
        with pytest.raises(DatabaseUnavailable, match="user:6") as raised:
            await cache.get_or_load("user:6")
        assert isinstance(raised.value, MultiactiveError)
        assert cache.statistics().unavailable == 1

    asyncio.run(run())


def test_a_missing_sqlite_database_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    """The real SQLite reader on a file that is not there: DatabaseUnavailable."""
    reader = SqliteReader(tmp_path / "absent.sqlite", "test: database.sites.gz.url")

    async def run() -> None:
        cache = Cache(MemoryState(), db=reader)
        with pytest.raises(DatabaseUnavailable, match="does not answer"):
            await cache.get_or_load("user:7", load_row)
        await reader.close()

    asyncio.run(run())


def test_a_bad_query_is_not_taken_for_an_unavailable_database(tmp_path: Path) -> None:
    """A loader's SQL error raises as it is (a bug to fix, not a degraded database)."""
    import sqlite3

    path = tmp_path / "db.sqlite"
    sqlite3.connect(path).execute(
        "CREATE TABLE t (k TEXT, v BLOB, version INTEGER)"
    ).connection.commit()
    reader = SqliteReader(path, "test: database.sites.gz.url")

    async def wrong(key: str, db: DbReader) -> Loaded:
        await db.fetchone("SELECT nope FROM t WHERE k = %s", (key,))
        return Loaded(None)

    async def run() -> None:
        cache = Cache(MemoryState(), db=reader)
        with pytest.raises(DatabaseError) as raised:
            await cache.get_or_load("user:8", wrong)
        assert not isinstance(raised.value, DatabaseUnavailable)
        assert not raised.value.transient
        await reader.close()

    asyncio.run(run())


def test_loaders_are_chosen_by_the_longest_prefix_and_a_key_without_one_is_named() -> None:
    loaders = Loaders()

    async def a(key: str, db: DbReader) -> Loaded:
        return Loaded(b"a")

    async def b(key: str, db: DbReader) -> Loaded:
        return Loaded(b"b")

    loaders.register("user:", a)
    loaders.register("user:vip:", b)
    assert loaders.loader_for("user:1") is a
    assert loaders.loader_for("user:vip:1") is b
    assert loaders.loader_for("post:1") is None
    with pytest.raises(ConfigError, match="already registered"):
        loaders.register("user:", b)

    async def run() -> None:
        cache = Cache(MemoryState(), db=RowsReader(), loaders=loaders)
        with pytest.raises(ConfigError, match=r"'post:1'.*'user:'"):
            await cache.get_or_load("post:1")

    asyncio.run(run())


def test_a_fill_from_a_copy_behind_the_writer_is_queued_once_and_a_current_one_is_not() -> None:
    """The gate's mark decides: behind (a mark) queues a reload, current ('') does not."""
    db = RowsReader()
    db.rows["user:1"] = (b"x", 1)
    db.rows["user:2"] = (b"y", 1)
    gate, queue = ManualGate(writer=5, local=3), MemoryReloads()

    async def run() -> None:
        cache = cache_over(db, gate=gate, reloads=queue)
        await cache.get_or_load("user:1")
        gate.local = 5  # caught up: a new fill needs no reload
        await cache.get_or_load("user:2")
        pending = await queue.pending()
        assert [(p.key, p.mark) for p in pending] == [("user:1", "5")]

    asyncio.run(run())


def test_a_load_that_does_not_answer_in_time_is_unavailable_naming_the_setting() -> None:
    """A database that hangs (SIGSTOPped, cut off) fails the miss after load_timeout_s."""

    async def hangs(key: str, db: DbReader) -> Loaded:
        await asyncio.Event().wait()
        return Loaded(None)

    async def run() -> None:
        cache = Cache(MemoryState(), db=RowsReader(), load_timeout_s=0.05)
        with pytest.raises(DatabaseUnavailable, match=r"within 0.05 s \(load_timeout_s"):
            await cache.get_or_load("user:1", hangs)

    asyncio.run(run())


def test_the_probe_reports_the_database_down_and_back_with_when_it_changed() -> None:
    from multiactive.reads.site import DatabaseProbe
    from multiactive.testing import FakeClock

    db, clock = RowsReader(), FakeClock()
    probe = DatabaseProbe(db, "gz", 2.0, 1.0, clock)

    async def run() -> None:
        assert probe.health().reachable is None
        up = await probe.check()
        assert (up.reachable, up.error) == (True, None)
        db.down = True
        await clock.advance(2)
        down = await probe.check()
        assert down.reachable is False
        assert "connection refused" in (down.error or "")
        assert down.since_ms == clock.wall_ms()
        await clock.advance(2)
        assert (await probe.check()).since_ms == down.since_ms  # still down: same since
        db.down = False
        back = await probe.check()
        assert (back.reachable, back.checks) == (True, 4)

    asyncio.run(run())


def test_an_applications_cache_metrics_render_its_statistics() -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from multiactive.reads.metrics import CacheCollector

    db = RowsReader()
    db.rows["user:1"] = (b"x", 1)

    async def run() -> Cache:
        cache = cache_over(db)
        await cache.get_or_load("user:1")
        await cache.get_or_load("user:1")
        return cache

    registry = CollectorRegistry()
    registry.register(CacheCollector(asyncio.run(run()), "gz"))
    samples = {
        s.name: s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
        if s.labels == {"site": "gz"}
    }
    assert samples["multiactive_cache_hits_total"] == 1
    assert samples["multiactive_cache_fills_total"] == 1
    assert samples["multiactive_cache_loads_total"] == 1
