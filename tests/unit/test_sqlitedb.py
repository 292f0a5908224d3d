"""SQLite errors translated at the boundary: a file that is damaged, locked, read-only, full,
not openable or written by a second process raises StoreError naming the file and the setting,
from the journal, the state and the audit store alike."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from multiactive import sqlitedb
from multiactive.audit import SqliteAuditStore
from multiactive.errors import MultiactiveError, StoreError
from multiactive.journal import SqliteJournal
from multiactive.model.message import StreamId
from multiactive.sqlitedb import SqliteDb
from multiactive.state import Commit, SqliteState

from .journal.test_journal import PEER, SITE, remote

Store = SqliteJournal | SqliteState | SqliteAuditStore
STORES: dict[str, Callable[[Path], Store]] = {
    "journal": lambda folder: SqliteJournal(SITE, folder / "journal.sqlite3"),
    "state": lambda folder: SqliteState(SITE, folder / "state.sqlite3"),
    "audit store": lambda folder: SqliteAuditStore(folder / "audit.sqlite3"),
}


def run(main: Coroutine[Any, Any, None]) -> None:
    asyncio.run(main)


async def refused_open(store: Store) -> StoreError:
    with pytest.raises(StoreError) as caught:
        await store.open()
    await store.close()
    return caught.value


@pytest.mark.parametrize("what", list(STORES))
def test_a_file_that_is_not_a_database_names_the_file_and_the_setting(
    what: str, tmp_path: Path
) -> None:
    """A damaged or replaced file is refused at open with StoreError (not a raw sqlite3
    error) naming the store, the file and data_dir; the file is left as it was."""
    store = STORES[what](tmp_path)
    garbage = b"this is not an SQLite file\n" * 200
    store.path.write_bytes(garbage)

    async def main() -> None:
        error = await refused_open(store)
        assert f"{what} {store.path} (data_dir): it is not an SQLite database" in str(error)
        assert "SQLITE_NOTADB" in str(error)
        assert isinstance(error, MultiactiveError)
        assert store.path.read_bytes() == garbage

    run(main())


@pytest.mark.parametrize("what", list(STORES))
def test_a_folder_where_the_file_should_be_cannot_be_opened(what: str, tmp_path: Path) -> None:
    """A path that cannot be opened as a file raises StoreError saying what data_dir needs."""
    store = STORES[what](tmp_path)
    store.path.mkdir()

    async def main() -> None:
        error = await refused_open(store)
        assert f"{what} {store.path} (data_dir): it cannot be opened" in str(error)
        assert "SQLITE_CANTOPEN" in str(error)

    run(main())


def test_a_state_locked_past_the_busy_timeout_is_a_store_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit that waits past the busy timeout for another process's lock raises StoreError
    asking about a second process; once the lock is gone commits go on."""
    monkeypatch.setattr(sqlitedb, "BUSY_TIMEOUT_MS", 50)
    stream = StreamId(SITE, 0)

    async def main() -> None:
        state = SqliteState(SITE, tmp_path / "state.sqlite3")
        await state.open()
        try:
            other = sqlite3.connect(state.path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreError) as caught:
                await state.commit(Commit(stream, 1, 1))
            other.execute("ROLLBACK")
            other.close()
            assert f"state {state.path} (data_dir): another process held it locked" in str(
                caught.value
            )
            assert "(0.05 s): is a second site process using this data_dir?" in str(caught.value)
            await state.commit(Commit(stream, 1, 1))
            assert (await state.watermarks())[stream].applied == 1
        finally:
            await state.close()

    run(main())


def test_a_journal_locked_past_the_busy_timeout_refuses_the_append(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An append whose index commit cannot get the lock raises StoreError and journals
    nothing; the next append after the lock is gone is stored."""
    monkeypatch.setattr(sqlitedb, "BUSY_TIMEOUT_MS", 50)
    stream = StreamId(PEER, 0)

    async def main() -> None:
        journal = SqliteJournal(SITE, tmp_path / "journal.sqlite3")
        await journal.open()
        try:
            other = sqlite3.connect(journal.path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreError, match="another process held it locked"):
                await journal.append_remote([remote(1, 1)])
            other.execute("ROLLBACK")
            other.close()
            assert journal.head(stream) == 0
            await journal.append_remote([remote(1, 1)])
            assert journal.head(stream) == 1
        finally:
            await journal.close()

    run(main())


def test_a_second_writer_on_the_same_journal_is_named(tmp_path: Path) -> None:
    """Two processes appending to one journal: the second one's stale view breaks a
    constraint, and that is a StoreError saying one site process writes a data_dir."""

    async def main() -> None:
        first = SqliteJournal(SITE, tmp_path / "journal.sqlite3")
        second = SqliteJournal(SITE, tmp_path / "journal.sqlite3")
        await first.open()
        await second.open()
        try:
            await first.append_remote([remote(1, 1)])
            with pytest.raises(StoreError) as caught:
                await second.append_remote([remote(1, 1)])
            assert "another process may be writing this file" in str(caught.value)
            assert "one site process per data_dir" in str(caught.value)
            assert "SQLITE_CONSTRAINT" in str(caught.value)
        finally:
            await second.close()
            await first.close()

    run(main())


def test_a_read_only_file_and_a_full_disk_are_named(tmp_path: Path) -> None:
    """SQLITE_READONLY and SQLITE_FULL, raised for real by SQLite (the tests run as root,
    whom file modes do not stop, so the connection is made read-only and its size capped with
    pragmas), become StoreErrors saying what to check."""

    async def main() -> None:
        db = SqliteDb(tmp_path / "state.sqlite3", "state", thread="test-db")
        await db.open(lambda conn: conn.execute("CREATE TABLE t(v BLOB)") and None)
        try:
            await db.run(lambda: db.conn.execute("PRAGMA query_only=1"))
            with pytest.raises(StoreError) as readonly:
                await db.run(lambda: db.conn.execute("INSERT INTO t VALUES (x'00')"))
            assert "(data_dir): it cannot be written: check the permissions" in str(readonly.value)
            await db.run(lambda: db.conn.execute("PRAGMA query_only=0"))
            await db.run(lambda: db.conn.execute("PRAGMA max_page_count=3"))
            with pytest.raises(StoreError) as full:
                await db.run(lambda: db.conn.execute("INSERT INTO t VALUES (zeroblob(1 << 20))"))
            assert "(data_dir): the disk is full" in str(full.value)
            assert "SQLITE_FULL" in str(full.value)
        finally:
            await db.close()

    run(main())


def test_a_wrong_use_of_the_api_is_not_dressed_as_a_store_error(tmp_path: Path) -> None:
    """ProgrammingError (a bug here, not a state of the file) passes through unchanged."""

    async def main() -> None:
        db = SqliteDb(tmp_path / "x.sqlite3", "state", thread=None)
        await db.open()
        try:
            with pytest.raises(sqlite3.ProgrammingError):
                await db.run(lambda: db.conn.execute("SELECT ?", ()))
        finally:
            await db.close()
        with pytest.raises(RuntimeError, match=r"state .*x\.sqlite3 is not open"):
            await db.run(lambda: db.conn)

    run(main())


def test_a_writer_that_never_pauses_checkpoints_on_the_thread_and_its_wal_stays_bounded(
    tmp_path: Path,
) -> None:
    """The applier's state: commits do not checkpoint (wal_autocheckpoint 0), the thread
    does, and the writer restarts the WAL each time it passed its bound, so a long catch-up
    does not grow the WAL by everything it writes; a reader sees every commit throughout.
    The thread's checkpoints are taken here at fixed points (as its timer would, without the
    timing), each while a read holds an older snapshot, so that none copies every frame and
    the WAL never starts over by itself; then the thread is shown to run them on its own."""
    path = tmp_path / "state.sqlite3"
    frames = 64  # a 1 MiB bound: restarts come every few commits
    reader = sqlite3.connect(path, isolation_level=None)  # the site's connection, beside

    async def main() -> None:
        state = SqliteState(SITE, path, inline=True, checkpoint_thread=True)
        checkpoints = state._checkpoints
        assert checkpoints is not None
        checkpoints.restart_frames = checkpoints._next_restart = frames
        checkpoints.interval_s = 3600.0  # the thread waits: this test takes the checkpoints
        checkpoints.wake_rows = 10**9
        await state.open()
        try:
            conn = state._db.conn
            assert conn.execute("PRAGMA wal_autocheckpoint").fetchall() == [(0,)]
            largest = 0
            for n in range(1, 201):
                if n % 4 == 1:  # a read in progress, as the site's
                    reader.execute("BEGIN")
                    reader.execute("SELECT count(*) FROM kv").fetchall()
                ops = [("kv.set", f"k{n}.{i}", n, "a", b"v" * 1024) for i in range(20)]
                await state.commit(Commit(StreamId("a", 0), n, len(ops), ops, ()))
                largest = max(largest, (tmp_path / "state.sqlite3-wal").stat().st_size)
                if n % 4 == 3:
                    checkpoints.checkpoint()
                    reader.execute("COMMIT")
                if n % 40 == 0:
                    # fetchall: a cursor left mid-result holds its read open, and the WAL
                    assert reader.execute("SELECT count(*) FROM kv").fetchall() == [(20 * n,)]
            assert checkpoints.restarts >= 5, checkpoints.restarts
            # without restarts the WAL ends holding every page these commits wrote, ~20 MiB;
            # with them the bound and what four commits add
            assert largest < 4 * frames * 16 * 1024, largest
        finally:
            await state.close()
        assert not any(t.name.startswith("checkpoint-") for t in threading.enumerate())

        state = SqliteState(SITE, path, inline=True, checkpoint_thread=True)
        assert state._checkpoints is not None
        state._checkpoints.interval_s = 0.01
        await state.open()
        try:
            ops = [("kv.set", "k", 1000, "a", b"v")]
            await state.commit(Commit(StreamId("a", 0), 1000, 1, ops, ()))
            thread = state._checkpoints

            def checkpointed() -> bool:  # waited for off this loop, which is the writer's
                deadline = time.monotonic() + 10
                while thread.checkpoints == 0 and time.monotonic() < deadline:
                    time.sleep(0.01)
                return thread.checkpoints > 0

            assert await asyncio.to_thread(checkpointed), "the thread never checkpointed"
        finally:
            await state.close()
            reader.close()

    run(main())


def test_a_restart_held_up_by_a_long_read_leaves_the_commit_done_and_is_tried_later(
    tmp_path: Path,
) -> None:
    """A read that holds its snapshot past WAL_RESTART_WAIT_S (the site's long digest, say)
    makes the writer go on without the restart, its commit durable, and try again one bound
    later, when the read is over."""
    path = tmp_path / "state.sqlite3"
    reader = sqlite3.connect(path, isolation_level=None)

    async def main() -> None:
        state = SqliteState(SITE, path, inline=True, checkpoint_thread=True)
        checkpoints = state._checkpoints
        assert checkpoints is not None
        checkpoints.interval_s, checkpoints.wake_rows = 3600.0, 10**9
        await state.open()
        try:
            stream = StreamId("a", 0)
            await state.commit(Commit(stream, 1, 1, [("kv.set", "k1", 1, "a", b"1")], ()))
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM kv").fetchall()  # a read in progress
            checkpoints.frames = checkpoints.restart_frames  # the thread saw the bound passed
            await state.commit(Commit(stream, 2, 1, [("kv.set", "k2", 2, "a", b"2")], ()))
            assert (checkpoints.restarts, checkpoints.deferred) == (0, 1)
            reader.execute("COMMIT")
            assert (await state.get("k2")) is not None
            checkpoints.frames = 2 * checkpoints.restart_frames  # one bound later
            await state.commit(Commit(stream, 3, 1, [("kv.set", "k3", 3, "a", b"3")], ()))
            assert (checkpoints.restarts, checkpoints.deferred) == (1, 1)
        finally:
            await state.close()
            reader.close()

    run(main())
