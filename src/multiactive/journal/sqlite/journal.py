"""`SqliteJournal`: the journal interface over the parts of this package, and its two threads.

Writes (appends, repairs, trims, peer heads) run on the writer's `SqliteDb`, one index
transaction per call (group commit); an append of less than INLINE_APPEND_BYTES runs on the
event loop instead while that thread is idle. Reads run on the reader's `SqliteDb`, a second
connection that WAL lets proceed beside the writer, with its own `SegmentReader`.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from multiactive.errors import JournalError
from multiactive.journal.base import Journal, LocalAppend, LocalGroup, RemoteResult
from multiactive.journal.segments import (
    DEFAULT_SEGMENT_BYTES,
    Location,
    SegmentReader,
    SegmentWriter,
)
from multiactive.journal.sqlite import schema
from multiactive.journal.sqlite.index import Index
from multiactive.journal.sqlite.recovery import Recovery
from multiactive.journal.sqlite.trim import Trimmer
from multiactive.model.batch import CODEC_NONE, RecordBatch, row_bytes
from multiactive.model.message import Position, StreamId
from multiactive.sqlitedb import SqliteDb

# An append of less than this runs on the event loop when the writer thread is idle: the two
# thread hand-offs cost more than such an append with its fdatasync (0.2-0.6 ms each on our
# VMs, against 0.1-0.2 ms), and a lightly loaded site pays them on every write. Larger
# appends, and any while the thread is busy, go to the thread, so the loop never waits long.
INLINE_APPEND_BYTES = 64 * 1024


class SqliteJournal(Journal):
    backend = "sqlite"

    def __init__(
        self,
        site: str,
        path: str | Path,
        *,
        fsync: bool = True,
        codec: int = CODEC_NONE,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> None:
        super().__init__(site, codec)
        self.path = Path(path)
        self.segments_folder = self.path.with_suffix(".segments")
        self._fsync = fsync
        # synchronous=NORMAL (sqlitedb) is enough: the segments are the durable record, and a
        # lost index commit is indexed again at open (recovery).
        self._writer = SqliteDb(self.path, "journal", thread=f"journal-w-{site}", inline_small=True)
        self._reader = SqliteDb(self.path, "journal", thread=f"journal-r-{site}")
        self._index = Index(site)
        self._segments = SegmentWriter(self.segments_folder, max_bytes=segment_bytes, fsync=fsync)
        self._segment_reader = SegmentReader(self.segments_folder)
        trim_reader = SegmentReader(self.segments_folder)  # the writer thread's
        self._trimmer = Trimmer(
            site, self._index, self._segments, trim_reader, self.segments_folder
        )

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self._writer.open(self._open_writer)
        await self._reader.open()

    def _open_writer(self, conn: sqlite3.Connection) -> None:
        """Schema and claim, heads as indexed, the segments mended, every head checked."""
        schema.create(conn, self.site, self.path)
        for stream, head, max_version in self._index.load(conn):
            self._heads[stream] = head
            self.max_version = max(self.max_version, max_version)
        recovery = Recovery(self.site, self.path, self._index, self._segments, self._heads)
        recovery.run(conn)
        self.max_version = max(self.max_version, recovery.max_version)
        for stream, stream_id in self._index.stream_ids.items():
            schema.check_head(conn, self.path, stream_id, stream, self._heads.get(stream, 0))

    async def open_for_reading(self) -> None:
        """The index read-only, heads as committed (the writing site recovered the segments
        when it opened, before it started its applier)."""
        if not self.path.exists():
            raise JournalError(f"{self.path} does not exist; the site opens its journal first")
        await self._reader.open(self._open_follower)

    def _open_follower(self, conn: sqlite3.Connection) -> None:
        for stream, head, _ in self._index.load(conn):
            self._heads[stream] = head

    async def close(self) -> None:
        await self._writer.close(self._close_writer)
        await self._reader.close(self._close_reader)

    def _close_writer(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        self._segments.close()
        self._trimmer.reader.close()

    def _close_reader(self, conn: sqlite3.Connection) -> None:
        self._segment_reader.close()

    # -- appends (writer thread) -----------------------------------------------------------

    async def _append_local(
        self, groups: Sequence[LocalGroup]
    ) -> tuple[LocalAppend, list[RecordBatch]]:
        small = _local_bytes(groups, INLINE_APPEND_BYTES) < INLINE_APPEND_BYTES
        return await self._writer.run(lambda: self._append_local_sync(groups), small=small)

    def _append_local_sync(
        self, groups: Sequence[LocalGroup]
    ) -> tuple[LocalAppend, list[RecordBatch]]:
        conn = self._writer.conn
        plan = self.plan_local(groups, lambda ids: self._index.known_ids(conn, ids))
        self._store(conn, plan.batches, plan.index)
        self.commit_plan(plan.batches, deduplicated=len(plan.result.duplicates))
        return plan.result, plan.batches

    async def _append_remote(self, batches: Sequence[RecordBatch]) -> RemoteResult:
        small = sum(batch.size for batch in batches) < INLINE_APPEND_BYTES
        return await self._writer.run(lambda: self._append_remote_sync(batches), small=small)

    def _append_remote_sync(self, batches: Sequence[RecordBatch]) -> RemoteResult:
        plan = self.plan_remote(batches)
        if plan.batches:
            self._store(self._writer.conn, plan.batches, [])
        self.commit_plan(plan.batches)
        return self.remote_result(plan)

    def _store(
        self,
        conn: sqlite3.Connection,
        batches: Sequence[RecordBatch],
        ids: Sequence[tuple[str, int, int]],
        *,
        move_heads: bool = True,
    ) -> None:
        """Write batches to the active segment (durable), then index them in one commit; if
        the commit fails the segment is cut back, so nothing unindexed is left behind."""
        if not batches:
            return
        locations = self._segments.append([b.data for b in batches])
        try:
            conn.execute("BEGIN IMMEDIATE")
            self._index.insert_batches(conn, batches, locations, move_heads=move_heads)
            if ids:
                self._index.insert_ids(conn, ids)
            conn.execute("COMMIT")
        except BaseException:
            self._index.rollback(conn)
            self._segments.undo(locations[0].offset)
            raise
        self._segments.roll_if_full()

    async def _store_repair(self, batch: RecordBatch) -> None:
        await self._writer.run(lambda: self._store_repair_sync(batch))

    def _store_repair_sync(self, batch: RecordBatch) -> None:
        self._store(self._writer.conn, [batch], [], move_heads=False)

    # -- reads (reader thread) -------------------------------------------------------------

    async def _read(self, stream: StreamId, from_seq: int, max_bytes: int) -> list[RecordBatch]:
        if from_seq > self.head(stream):
            return []
        return await self._reader.run(lambda: self._read_sync(stream, from_seq, max_bytes))

    def _read_sync(self, stream: StreamId, from_seq: int, max_bytes: int) -> list[RecordBatch]:
        conn = self._reader.conn
        stream_id = self._index.stream_ids.get(stream)
        if stream_id is None and not self._writer.is_open:  # following: the writer made it since
            self._index.refresh(conn)
            stream_id = self._index.stream_ids.get(stream)
        if stream_id is None:
            return []
        out: list[RecordBatch] = []
        total = 0
        for (
            first_seq,
            count,
            created_ms,
            max_version,
            codec,
            segment,
            offset,
            size,
        ) in self._index.batches_from(conn, stream_id, from_seq):
            if out and total + size > max_bytes:
                break
            data = self._segment_reader.read(Location(segment, offset, size))
            out.append(RecordBatch(*stream, first_seq, count, created_ms, max_version, codec, data))
            total += size
        return out

    async def holes(self, stream: StreamId) -> list[tuple[int, int]]:
        """One indexed aggregate per stream when the stream is whole (the usual case)."""
        stream_id = self._index.stream_ids.get(stream)
        head = self.head(stream)
        if stream_id is None or head == 0:
            return []
        stored, low = await self._reader.run(
            lambda: self._index.coverage(self._reader.conn, stream_id)
        )
        if stored is None or low is None:
            return [(1, head)] if head else []  # head recorded, every batch gone
        if stored == head - low + 1:
            return []
        return await super().holes(stream)

    async def created_at(self, stream: StreamId, seq: int) -> int | None:
        stream_id = self._index.stream_ids.get(stream)
        if stream_id is None:
            return None
        row = await self._reader.run(
            lambda: self._index.created_at(self._reader.conn, stream_id, seq)
        )
        return int(row[1]) if row is not None and row[0] <= seq else None

    async def lookup(self, ids: Sequence[str]) -> dict[str, Position]:
        return await self._reader.run(lambda: self._index.known_ids(self._reader.conn, list(ids)))

    async def low_water(self, stream: StreamId) -> int:
        stream_id = self._index.stream_ids.get(stream)
        if stream_id is None:
            return 1
        low = await self._reader.run(lambda: self._index.lowest_seq(self._reader.conn, stream_id))
        return low if low is not None else self.head(stream) + 1

    # -- trimming and peer heads (writer thread) ----------------------------------------

    async def _trim(self, floors: dict[StreamId, int], older_than_ms: int) -> int:
        dropped = 0
        more = True
        while more:
            count, emptied, more = await self._writer.run(
                lambda: self._trim_sync(floors, older_than_ms)
            )
            dropped += count
            if emptied:
                await self._reader.run(partial(self._segment_reader.forget, emptied))
                await self._writer.run(partial(self._trimmer.forget, emptied))
        return dropped

    def _trim_sync(
        self, floors: dict[StreamId, int], older_than_ms: int
    ) -> tuple[int, list[int], bool]:
        """One trim commit (`Trimmer.once`)."""
        return self._trimmer.once(self._writer.conn, floors, older_than_ms)

    async def save_peer_heads(self, peer: str, heads: dict[StreamId, int]) -> None:
        await self._writer.run(
            lambda: self._index.save_peer_heads(
                self._writer.conn, peer, heads, time.time_ns() // 1_000_000
            )
        )

    async def peer_heads(self) -> dict[str, dict[StreamId, int]]:
        names = {stream_id: stream for stream, stream_id in self._index.stream_ids.items()}
        rows = await self._reader.run(lambda: self._index.peer_heads(self._reader.conn))
        out: dict[str, dict[StreamId, int]] = {}
        for peer, stream_id, head in rows:
            if stream_id in names:
                out.setdefault(peer, {})[names[stream_id]] = head
        return out


def _local_bytes(groups: Sequence[LocalGroup], enough: int) -> int:
    """The bytes local groups take in batches, at most (`row_bytes`), counted until `enough`
    is reached."""
    total = 0
    for group in groups:
        for row in group.rows:
            total += row_bytes(row[0], row[1], row[2], row[5], row[6])
            if total >= enough:
                return total
    return total
