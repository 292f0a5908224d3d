"""The SQLite journal's segment files: what a crash can leave behind, and how open() mends it.

An append writes batch bytes to the active segment, fdatasyncs it, then commits their index
rows in SQLite without a sync. These tests make the states a crash can leave (an index commit
lost after the segment write, a torn segment end) by editing the files between a close and an
open, and check that the journal reopens to exactly what was acknowledged.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from multiactive.errors import JournalError, StoreError
from multiactive.journal import SqliteJournal
from multiactive.journal.base import LocalGroup
from multiactive.journal.segments import segment_numbers, segment_path
from multiactive.journal.sqlite import trim as sqlite_trim
from multiactive.model.batch import build_batch, split_batches
from multiactive.model.message import Position, StreamId

from .test_journal import PEER, SITE, all_ids, all_seqs, group, remote, row

STREAM = StreamId(SITE, 0)


def _journal(folder: Path, **options: int) -> SqliteJournal:
    return SqliteJournal(SITE, folder / "journal.sqlite3", **options)


async def _opened(folder: Path, **options: int) -> SqliteJournal:
    journal = _journal(folder, **options)
    await journal.open()
    return journal


def _store_threads(journal: SqliteJournal) -> list[str]:
    """Record, from now on, where each store of the journal runs: "MainThread" (the event
    loop) or "writer" (its writer thread)."""
    threads: list[str] = []
    store = journal._store

    def recorded(*args: Any, **options: Any) -> None:
        name = threading.current_thread().name
        threads.append("writer" if name.startswith("journal-w-") else name)
        store(*args, **options)

    journal._store = recorded  # type: ignore[method-assign]
    return threads


def _count_trim_commits(journal: SqliteJournal) -> list[int]:
    """Record, from now on, each trim transaction of the journal (one entry per commit)."""
    commits: list[int] = []
    trim_once = journal._trim_sync

    def counted(*args: Any) -> Any:
        commits.append(len(commits) + 1)
        return trim_once(*args)

    journal._trim_sync = counted  # type: ignore[method-assign]
    return commits


def _forget_last_index_commit(path: Path, stream: StreamId, last_seq: int, head: int) -> None:
    """What a machine crash can do to an index commit that was not synced yet: the batch row,
    its request ids and the head move are gone; the segment still holds the batch."""
    with sqlite3.connect(path) as db:
        (stream_id,) = db.execute(
            "SELECT id FROM streams WHERE origin = ? AND partition = ?", stream
        ).fetchone()
        first = db.execute(
            "SELECT first_seq FROM batches WHERE stream = ? AND last_seq = ?",
            (stream_id, last_seq),
        ).fetchone()[0]
        db.execute("DELETE FROM batches WHERE stream = ? AND last_seq = ?", (stream_id, last_seq))
        if stream.origin == SITE:
            db.execute(
                "DELETE FROM ids WHERE partition = ? AND seq >= ?", (stream.partition, first)
            )
        db.execute("UPDATE streams SET head = ? WHERE id = ?", (head, stream_id))
    db.close()


def test_a_lost_index_commit_is_indexed_again_at_open(tmp_path: Path) -> None:
    """Batches durable in the segment but missing from the index come back at open, with their
    request ids: the head, the reads and the dedup of a retried id are as acknowledged."""

    async def main() -> None:
        journal = await _opened(tmp_path)
        await journal.append_local([group(0, "a", "b")])
        await journal.append_local([group(0, "c")])
        await journal.append_remote([remote(1, 3)])
        await journal.close()
        _forget_last_index_commit(journal.path, STREAM, last_seq=3, head=2)
        _forget_last_index_commit(journal.path, StreamId(PEER, 0), last_seq=3, head=0)
        journal = await _opened(tmp_path)
        try:
            assert journal.heads() == {STREAM: 3, StreamId(PEER, 0): 3}
            assert await all_ids(journal, STREAM) == ["a", "b", "c"]
            assert await all_seqs(journal, StreamId(PEER, 0)) == [1, 2, 3]
            assert await journal.lookup(["c"]) == {"c": Position(SITE, 0, 3)}
            again = await journal.append_local([group(0, "c", "d")])
            assert [(r.position.seq, r.duplicate) for r in again] == [(3, True), (4, False)]
        finally:
            await journal.close()

    asyncio.run(main())


def test_a_torn_segment_end_is_cut_off_and_appends_go_on(tmp_path: Path) -> None:
    """Half a batch at the end of the active segment (an append cut short by a crash, never
    acknowledged) is cut off at open; the journal keeps what was whole and appends after it."""

    async def main() -> None:
        journal = await _opened(tmp_path)
        await journal.append_local([group(0, "a")])
        await journal.close()
        torn = remote(1, 2).data[:-7]
        (number,) = segment_numbers(journal.segments_folder)
        path = segment_path(journal.segments_folder, number)
        whole = path.stat().st_size
        with path.open("ab") as file:
            file.write(torn)
        journal = await _opened(tmp_path)
        try:
            assert path.stat().st_size == whole
            assert journal.heads() == {STREAM: 1}
            await journal.append_local([group(0, "b")])
        finally:
            await journal.close()
        journal = await _opened(tmp_path)
        try:
            assert await all_ids(journal, STREAM) == ["a", "b"]
        finally:
            await journal.close()

    asyncio.run(main())


def test_a_failed_index_commit_leaves_no_bytes_to_index_later(tmp_path: Path) -> None:
    """When the index commit of an append fails, the segment is cut back: a write reported
    as failed can never reappear as journaled when the file is next opened."""

    async def main() -> None:
        journal = await _opened(tmp_path)
        await journal.append_local([group(0, "a")])
        with sqlite3.connect(journal.path) as db:
            db.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON batches WHEN NEW.last_seq = 2 "
                "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
            )
        db.close()
        with pytest.raises(StoreError, match="injected failure"):
            await journal.append_local([group(0, "refused")])
        assert journal.heads() == {STREAM: 1}
        await journal.close()
        journal = await _opened(tmp_path)
        try:
            assert journal.heads() == {STREAM: 1}
            assert await all_ids(journal, STREAM) == ["a"]
            assert await journal.lookup(["refused"]) == {}
        finally:
            await journal.close()

    asyncio.run(main())


def test_segments_roll_and_a_trim_deletes_the_ones_it_empties(tmp_path: Path) -> None:
    """Appends start a new segment past `segment_bytes`; reads span segments; a trim deletes
    the segments no stored batch lies in any more, never the active one."""

    async def main() -> None:
        size = remote(1, 1).size
        journal = await _opened(tmp_path, segment_bytes=size * 2)
        try:
            for seq in range(1, 9):
                await journal.append_remote([remote(seq, 1)])
            folder = journal.segments_folder
            assert len(segment_numbers(folder)) == 5  # two batches each, then a new active one
            stream = StreamId(PEER, 0)
            assert await all_seqs(journal, stream) == list(range(1, 9))
            dropped = await journal.trim({stream: 5}, older_than_ms=10**15)
            assert dropped == 5
            assert segment_numbers(folder) == [3, 4, 5]  # segment 3 still holds seq 6
            assert await journal.low_water(stream) == 6
            assert [b.first_seq for b in await journal.read(stream, 1, 1 << 20)] == [6, 7, 8]
        finally:
            await journal.close()

    asyncio.run(main())


def test_a_segment_shorter_than_its_index_is_refused_at_open(tmp_path: Path) -> None:
    """A segment cut short outside multiactive (its indexed batches gone) is a JournalError
    at open that names the file, never a silent loss."""

    async def main() -> None:
        journal = await _opened(tmp_path)
        await journal.append_remote([remote(1, 2)])
        await journal.close()
        (number,) = segment_numbers(journal.segments_folder)
        path = segment_path(journal.segments_folder, number)
        with path.open("r+b") as file:
            file.truncate(10)
        broken = _journal(tmp_path)
        try:
            with pytest.raises(JournalError) as caught:
                await broken.open()
        finally:
            await broken.close()
        assert str(path) in str(caught.value)
        assert "changed outside multiactive" in str(caught.value)

    asyncio.run(main())


def test_a_trim_of_many_batches_commits_in_parts_and_forgets_their_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trim drops at most TRIM_BATCHES_PER_COMMIT batches of a stream per transaction (so
    appends wait for one short commit) and goes on until the floor: one call drops them all,
    and the request ids of the dropped local messages, read back from the segments, are
    forgotten while the kept ones still deduplicate."""
    monkeypatch.setattr(sqlite_trim, "TRIM_BATCHES_PER_COMMIT", 3)

    async def main() -> None:
        journal = await _opened(tmp_path, segment_bytes=4096)
        try:
            for i in range(10):
                await journal.append_local([group(0, f"id{2 * i}", f"id{2 * i + 1}")])
            commits = _count_trim_commits(journal)
            assert await journal.trim({STREAM: 16}, older_than_ms=10**15) == 8
            assert len(commits) == 3  # 3 + 3 + 2 batches
            assert await journal.low_water(STREAM) == 17
            ids = [f"id{i}" for i in range(20)]
            assert await journal.lookup(ids) == {
                f"id{i}": Position(SITE, 0, i + 1) for i in range(16, 20)
            }
        finally:
            await journal.close()

    asyncio.run(main())


def test_a_journal_of_schema_2_is_upgraded_at_open(tmp_path: Path) -> None:
    """Schema 2 also indexed request ids by position; opening drops that index, records
    schema 3, and keeps every batch and id."""

    async def main() -> None:
        journal = await _opened(tmp_path)
        await journal.append_local([group(0, "a", "b")])
        await journal.close()
        with sqlite3.connect(journal.path) as db:
            db.execute("CREATE INDEX ids_by_seq ON ids(partition, seq)")
            db.execute("UPDATE meta SET value = '2' WHERE key = 'schema'")
        db.close()
        journal = await _opened(tmp_path)
        try:
            assert await all_ids(journal, STREAM) == ["a", "b"]
            assert await journal.lookup(["b"]) == {"b": Position(SITE, 0, 2)}
        finally:
            await journal.close()
        with sqlite3.connect(journal.path) as db:
            assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("3",)
            indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        db.close()
        assert "ids_by_seq" not in indexes

    asyncio.run(main())


def test_small_appends_run_on_the_loop_only_while_the_writer_thread_is_idle(
    tmp_path: Path,
) -> None:
    """An append under INLINE_APPEND_BYTES skips the two thread hand-offs when the writer
    thread has nothing queued; a large one goes to the thread, and so does a small one while
    the thread is busy, so writes still run one at a time and in order."""

    async def main() -> None:
        journal = await _opened(tmp_path)
        threads = _store_threads(journal)
        try:
            await journal.append_local([group(0, "small")])
            big = [row(f"big{i}", payload=b"x" * 1024) for i in range(80)]
            await journal.append_local([LocalGroup(0, big, 1000)])
            assert threads == ["MainThread", "writer"]
            threads.clear()
            large = asyncio.ensure_future(journal.append_local([LocalGroup(1, big, 1000)]))
            await asyncio.sleep(0)  # the large append is on the thread now
            await journal.append_local([group(1, "after")])
            await large
            assert threads == ["writer", "writer"]
            assert (await all_ids(journal, StreamId(SITE, 1)))[-1] == "after"
            await journal.append_local([group(2, "idle-again")])
            assert threads[-1] == "MainThread"
        finally:
            await journal.close()

    asyncio.run(main())


def test_a_cancelled_writer_job_leaves_small_appends_on_the_loop(tmp_path: Path) -> None:
    """A job cancelled before the writer thread ran it counts as done: small appends that come
    after run on the loop again, instead of on the thread for good."""

    async def main() -> None:
        journal = await _opened(tmp_path)
        threads = _store_threads(journal)
        try:
            big = [row(f"big{i}", payload=b"x" * 1024) for i in range(80)]
            large = asyncio.ensure_future(journal.append_local([LocalGroup(0, big, 1000)]))
            await asyncio.sleep(0)  # on the thread now
            queued = asyncio.ensure_future(journal.save_peer_heads(PEER, {STREAM: 1}))
            await asyncio.sleep(0)  # queued behind it
            queued.cancel()
            await large
            with pytest.raises(asyncio.CancelledError):
                await queued
            await journal.append_local([group(1, "after")])
            assert threads[-1] == "MainThread"
        finally:
            await journal.close()

    asyncio.run(main())


def test_a_trim_reads_at_most_trim_bytes_of_local_batches_per_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each commit of a trim reads back at most TRIM_BYTES_PER_COMMIT of local batches (but
    always one batch), so a trim of large batches is many short transactions."""
    monkeypatch.setattr(sqlite_trim, "TRIM_BYTES_PER_COMMIT", 1)

    async def main() -> None:
        journal = await _opened(tmp_path)
        try:
            for i in range(5):
                await journal.append_local([group(0, f"id{i}")])
            commits = _count_trim_commits(journal)
            assert await journal.trim({STREAM: 4}, older_than_ms=10**15) == 4
            assert len(commits) == 4  # one batch each (the last one was all that was left)
            assert await journal.lookup([f"id{i}" for i in range(5)]) == {
                "id4": Position(SITE, 0, 5)
            }
        finally:
            await journal.close()

    asyncio.run(main())


def test_stored_remote_batches_are_not_kept_once_appended(tmp_path: Path) -> None:
    """A catch-up is a long run of large appends on the writer thread: once appended, the
    journal keeps no reference to their batches (with `cache_remote` off, as when the applier
    process reads them), so the receive buffers they are views of can be used again. The
    writer's finished jobs, which hold each append's result, were kept until the next small
    append: a whole backlog stayed in memory."""

    async def main() -> None:
        journal = await _opened(tmp_path)
        journal.cache_remote = False
        buffers: list[bytearray] = []
        try:
            for n in range(20):
                rows = [row(f"{PEER}-{80 * n + i}", payload=b"x" * 1024) for i in range(80)]
                buffer = bytearray(build_batch(PEER, 0, 80 * n + 1, rows, created_ms=1000).data)
                buffers.append(buffer)
                result = await journal.append_remote(split_batches(buffer))
                assert result.stored == 1
            del result
            held = [b for b in buffers if not _unreferenced(b)]
            assert len(held) <= 1  # the newest job's result until the next append
            assert await all_seqs(journal, StreamId(PEER, 0)) == list(range(1, 1601))
        finally:
            await journal.close()

    asyncio.run(main())


def _unreferenced(buffer: bytearray) -> bool:
    """No view of `buffer` is alive (a bytearray with live views cannot be resized)."""
    try:
        buffer.append(0)
    except BufferError:
        return False
    del buffer[-1:]
    return True
