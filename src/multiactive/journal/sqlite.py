"""SQLite journal: the embedded default. One index file and a folder of segment files per site.

Batches are stored as they were shipped, back to back in segment files
(`multiactive.journal.segments`); SQLite holds the index, in WAL mode (schema version 3):

    meta(key PRIMARY KEY, value)                     site name, schema version
    streams(id PRIMARY KEY, origin, partition, head, max_version)
                                                     one row per (origin, partition)
    batches(stream, last_seq UNIQUE per stream, first_seq, count, created_ms, max_version,
            codec, segment, offset, size)            where each stored batch lies
    ids(id PRIMARY KEY, partition, seq)              request id -> position, local messages
                                                     (one index only: a trim reads the ids of
                                                     the batches it drops from their segments)
    peer_heads(peer, stream, head, updated_ms)       what each peer acknowledged

An append writes its batches to the active segment, fdatasyncs it (with `fsync = true`, the
default) and then commits their index rows; it returns only after both. The index commit
itself is not synced: if a crash of the machine loses it, the batches are still in the
segment, past the last indexed one, and `open()` indexes them again (their request ids too).
A torn end of a segment (an append cut short, never acknowledged) is cut off at open. Trims
are synced before the segments they empty are deleted.

Writes run on one writer thread with its own connection, one index transaction per call
(group commit); reads run on a reader thread with a second connection, which WAL lets proceed
beside the writer.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from multiactive.errors import ConfigError, DecodeError, JournalError
from multiactive.journal.base import Journal, LocalAppend, LocalGroup, RemoteResult
from multiactive.journal.segments import (
    DEFAULT_SEGMENT_BYTES,
    Location,
    SegmentReader,
    SegmentWriter,
    segment_numbers,
    segment_path,
)
from multiactive.logs import get_logger
from multiactive.model.batch import (
    CODEC_NONE,
    RecordBatch,
    parse_batch,
    row_bytes,
    scan_batches,
)
from multiactive.model.message import Position, StreamId
from multiactive.sqlitedb import SqliteDb

SCHEMA_VERSION = "3"
# An append of less than this runs on the event loop when the writer thread is idle: the two
# thread hand-offs cost more than such an append with its fdatasync (0.2-0.6 ms each on our
# VMs, against 0.1-0.2 ms), and a lightly loaded site pays them on every write. Larger
# appends, and any while the thread is busy, go to the thread, so the loop never waits long.
INLINE_APPEND_BYTES = 64 * 1024
# Version 2 also indexed ids by (partition, seq), for trims; that index doubled the cost of
# every local append's id rows (3.4 instead of 1.6 us an id here) and is dropped on open.
UPGRADES = {"2": "DROP INDEX IF EXISTS ids_by_seq"}
# A trim commits at most this many batches of a stream at a time, so appends queued behind it
# on the writer thread wait for one short transaction, not for the whole trim.
TRIM_BATCHES_PER_COMMIT = 1000
TRIM_BYTES_PER_COMMIT = 16 * 1024 * 1024  # of local batches, read back for their ids
_SQL_VARIABLES = 500
_READ_ROWS = 256

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS streams(
    id INTEGER PRIMARY KEY, origin TEXT NOT NULL, partition INTEGER NOT NULL,
    head INTEGER NOT NULL DEFAULT 0, max_version INTEGER NOT NULL DEFAULT 0,
    UNIQUE(origin, partition));
CREATE TABLE IF NOT EXISTS batches(
    stream INTEGER NOT NULL, last_seq INTEGER NOT NULL, first_seq INTEGER NOT NULL,
    count INTEGER NOT NULL, created_ms INTEGER NOT NULL, max_version INTEGER NOT NULL,
    codec INTEGER NOT NULL, segment INTEGER NOT NULL, offset INTEGER NOT NULL,
    size INTEGER NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS batches_by_seq ON batches(stream, last_seq);
CREATE INDEX IF NOT EXISTS batches_by_segment ON batches(segment, offset);
CREATE TABLE IF NOT EXISTS ids(
    id TEXT PRIMARY KEY, partition INTEGER NOT NULL, seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS peer_heads(
    peer TEXT NOT NULL, stream INTEGER NOT NULL, head INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL, PRIMARY KEY(peer, stream));
"""

log = get_logger("journal")


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
        # Writes on one thread (small appends inline when it is idle), reads on another.
        self._writer = SqliteDb(self.path, "journal", thread=f"journal-w-{site}", inline_small=True)
        self._reader = SqliteDb(self.path, "journal", thread=f"journal-r-{site}")
        self._stream_ids: dict[StreamId, int] = {}
        self._segments = SegmentWriter(self.segments_folder, max_bytes=segment_bytes, fsync=fsync)
        self._segment_reader = SegmentReader(self.segments_folder)
        self._trim_reader = SegmentReader(self.segments_folder)  # the writer thread's

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # synchronous=NORMAL: the segments are the durable record; a lost index commit is
        # re-indexed at open.
        await self._writer.open(self._open_writer)
        await self._reader.open()

    def _open_writer(self, conn: sqlite3.Connection) -> None:
        conn.executescript(_SCHEMA)
        self._claim(conn)
        for stream_id, origin, partition, head, max_version in conn.execute(
            "SELECT id, origin, partition, head, max_version FROM streams"
        ):
            stream = StreamId(origin, partition)
            self._stream_ids[stream] = stream_id
            self._heads[stream] = head
            self.max_version = max(self.max_version, max_version)
        for number in self._segments.open():
            self._recover(conn, number)
        for stream, stream_id in self._stream_ids.items():
            self._check_head(conn, stream_id, stream, self._heads.get(stream, 0))

    def _claim(self, conn: sqlite3.Connection) -> None:
        found = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if not found:
            conn.executemany(
                "INSERT INTO meta VALUES (?, ?)", [("site", self.site), ("schema", SCHEMA_VERSION)]
            )
            return
        if found.get("site") != self.site:
            raise ConfigError(
                f"{self.path} is the journal of site {found.get('site')!r}, not {self.site!r}; "
                "check --site and data_dir"
            )
        upgrade = UPGRADES.get(found.get("schema", ""))
        if upgrade is not None:
            conn.execute(upgrade)
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (SCHEMA_VERSION,))
            log.info("journal_schema_upgraded", site=self.site, to=SCHEMA_VERSION)
        elif found.get("schema") != SCHEMA_VERSION:
            raise ConfigError(
                f"{self.path} has journal schema {found.get('schema')}, this build reads "
                f"{SCHEMA_VERSION}"
            )

    def _check_head(
        self, conn: sqlite3.Connection, stream_id: int, stream: StreamId, head: int
    ) -> None:
        (stored,) = conn.execute(
            "SELECT MAX(last_seq) FROM batches WHERE stream = ?", (stream_id,)
        ).fetchone()
        if stored is not None and stored != head:
            raise JournalError(
                f"{self.path}: stream {stream} records head {head} but stores seq {stored}; "
                "the file was changed outside multiactive"
            )

    # -- recovery (writer thread, at open) -------------------------------------------------

    def _recover(self, conn: sqlite3.Connection, number: int) -> None:
        """Index what lies past a segment's last indexed batch; cut a torn end off."""
        (indexed,) = conn.execute(
            "SELECT MAX(offset + size) FROM batches WHERE segment = ?", (number,)
        ).fetchone()
        indexed = indexed or 0
        size = self._segments.size_of(number)
        if size < indexed:
            raise JournalError(
                f"{segment_path(self.segments_folder, number)} holds {size} bytes but "
                f"{self.path} indexes batches up to byte {indexed}; the segment was changed "
                "outside multiactive"
            )
        if size == indexed:
            return
        batches, stop, error = scan_batches(self._segments.read_from(number, indexed))
        offset = indexed
        conn.execute("BEGIN IMMEDIATE")
        try:
            for batch in batches:
                self._reindex(conn, batch, Location(number, offset, batch.size))
                offset += batch.size
            conn.execute("COMMIT")
        except BaseException:
            self._rollback(conn)
            raise
        if batches:
            log.warning("journal_reindexed", site=self.site, segment=number, batches=len(batches))
        if error is not None:
            self._segments.cut(number, indexed + stop)
            log.warning(
                "journal_torn_end_cut", site=self.site, segment=number, offset=indexed + stop,
                bytes=size - indexed - stop, reason=error,
            )  # fmt: skip

    def _reindex(self, conn: sqlite3.Connection, batch: RecordBatch, location: Location) -> None:
        """Index a durable batch whose index commit was lost (J1 and J2 still decide)."""
        stream = batch.stream
        head = self._heads.get(stream, 0)
        if batch.first_seq != head + 1:
            log.warning(
                "journal_unindexed_batch_skipped", site=self.site, stream=str(stream),
                first_seq=batch.first_seq, head=head,
            )  # fmt: skip
            return
        self._insert_batches(conn, [batch], [location])
        if stream.origin == self.site:
            conn.executemany(
                "INSERT OR IGNORE INTO ids VALUES (?, ?, ?)",
                [
                    (row[0], batch.partition, seq)
                    for seq, row in enumerate(batch.rows(), batch.first_seq)
                ],
            )
        self._heads[stream] = batch.last_seq
        self.max_version = max(self.max_version, batch.max_version)

    async def open_for_reading(self) -> None:
        """The index read-only, heads as committed (the writing site recovered the segments
        when it opened, before it started its applier)."""
        if not self.path.exists():
            raise JournalError(f"{self.path} does not exist; the site opens its journal first")
        await self._reader.open(self._open_follower)

    def _open_follower(self, conn: sqlite3.Connection) -> None:
        self._load_stream_ids(conn)
        for origin, partition, head in conn.execute("SELECT origin, partition, head FROM streams"):
            self._heads[StreamId(origin, partition)] = head

    def _load_stream_ids(self, conn: sqlite3.Connection) -> None:
        for stream_id, origin, partition in conn.execute(
            "SELECT id, origin, partition FROM streams"
        ):
            self._stream_ids[StreamId(origin, partition)] = stream_id

    async def close(self) -> None:
        await self._writer.close(self._close_writer)
        await self._reader.close(self._close_reader)

    def _close_writer(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        self._segments.close()
        self._trim_reader.close()

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
        plan = self.plan_local(groups, lambda ids: self._known_ids(conn, ids))
        self._store(conn, plan.batches, plan.index)
        self.commit_plan(plan.batches, deduplicated=len(plan.result.duplicates))
        return plan.result, plan.batches

    def _known_ids(self, conn: sqlite3.Connection, ids: list[str]) -> dict[str, Position]:
        found: dict[str, Position] = {}
        for start in range(0, len(ids), _SQL_VARIABLES):
            chunk = ids[start : start + _SQL_VARIABLES]
            marks = ",".join("?" * len(chunk))
            for id_, partition, seq in conn.execute(
                f"SELECT id, partition, seq FROM ids WHERE id IN ({marks})", chunk
            ):
                found[id_] = Position(self.site, partition, seq)
        return found

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
            self._insert_batches(conn, batches, locations, move_heads=move_heads)
            if ids:
                conn.executemany("INSERT INTO ids VALUES (?, ?, ?)", ids)
            conn.execute("COMMIT")
        except BaseException:
            self._rollback(conn)
            self._segments.undo(locations[0].offset)
            raise
        self._segments.roll_if_full()

    def _insert_batches(
        self,
        conn: sqlite3.Connection,
        batches: Sequence[RecordBatch],
        locations: Sequence[Location],
        *,
        move_heads: bool = True,
    ) -> None:
        heads: dict[int, tuple[int, int]] = {}
        rows = []
        for batch, where in zip(batches, locations, strict=True):
            stream_id = self._stream_id(conn, batch.stream)
            _, version = heads.get(stream_id, (0, 0))
            heads[stream_id] = (batch.last_seq, max(version, batch.max_version))
            rows.append(
                (
                    stream_id, batch.last_seq, batch.first_seq, batch.count, batch.created_ms,
                    batch.max_version, batch.codec, where.segment, where.offset, where.size,
                )
            )  # fmt: skip
        conn.executemany("INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        if move_heads:
            conn.executemany(
                "UPDATE streams SET head = ?, max_version = MAX(max_version, ?) WHERE id = ?",
                [(head, version, s) for s, (head, version) in heads.items()],
            )

    def _rollback(self, conn: sqlite3.Connection) -> None:
        """Undo a failed append, and forget stream ids the undone transaction had created."""
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        self._stream_ids = {
            StreamId(origin, partition): stream_id
            for stream_id, origin, partition in conn.execute(
                "SELECT id, origin, partition FROM streams"
            )
        }

    def _stream_id(self, conn: sqlite3.Connection, stream: StreamId) -> int:
        stream_id = self._stream_ids.get(stream)
        if stream_id is None:
            cursor = conn.execute("INSERT INTO streams(origin, partition) VALUES (?, ?)", stream)
            stream_id = self._stream_ids[stream] = cursor.lastrowid or 0
        return stream_id

    # -- reads (reader thread) -------------------------------------------------------------

    async def _read(self, stream: StreamId, from_seq: int, max_bytes: int) -> list[RecordBatch]:
        if from_seq > self.head(stream):
            return []
        return await self._reader.run(lambda: self._read_sync(stream, from_seq, max_bytes))

    def _read_sync(self, stream: StreamId, from_seq: int, max_bytes: int) -> list[RecordBatch]:
        stream_id = self._stream_ids.get(stream)
        if stream_id is None and not self._writer.is_open:  # following: the writer made it since
            self._load_stream_ids(self._reader.conn)
            stream_id = self._stream_ids.get(stream)
        if stream_id is None:
            return []
        out: list[RecordBatch] = []
        total = 0
        cursor = self._reader.conn.execute(
            "SELECT first_seq, count, created_ms, max_version, codec, segment, offset, size "
            "FROM batches WHERE stream = ? AND last_seq >= ? ORDER BY last_seq LIMIT ?",
            (stream_id, from_seq, _READ_ROWS),
        )
        for first_seq, count, created_ms, max_version, codec, segment, offset, size in cursor:
            if out and total + size > max_bytes:
                break
            data = self._segment_reader.read(Location(segment, offset, size))
            out.append(RecordBatch(*stream, first_seq, count, created_ms, max_version, codec, data))
            total += size
        return out

    async def holes(self, stream: StreamId) -> list[tuple[int, int]]:
        """One indexed aggregate per stream when the stream is whole (the usual case)."""
        stream_id = self._stream_ids.get(stream)
        head = self.head(stream)
        if stream_id is None or head == 0:
            return []
        stored, low = await self._reader.run(
            lambda: self._reader.conn.execute(
                "SELECT SUM(count), MIN(first_seq) FROM batches WHERE stream = ?", (stream_id,)
            ).fetchone()
        )
        if stored is None:
            return [(1, head)] if head else []  # head recorded, every batch gone
        if stored == head - low + 1:
            return []
        return await super().holes(stream)

    async def _store_repair(self, batch: RecordBatch) -> None:
        await self._writer.run(lambda: self._store_repair_sync(batch))

    def _store_repair_sync(self, batch: RecordBatch) -> None:
        self._store(self._writer.conn, [batch], [], move_heads=False)

    async def created_at(self, stream: StreamId, seq: int) -> int | None:
        stream_id = self._stream_ids.get(stream)
        if stream_id is None:
            return None
        row = await self._reader.run(
            lambda: self._reader.conn.execute(
                "SELECT first_seq, created_ms FROM batches WHERE stream = ? AND last_seq >= ? "
                "ORDER BY last_seq LIMIT 1",
                (stream_id, seq),
            ).fetchone()
        )
        return int(row[1]) if row is not None and row[0] <= seq else None

    async def lookup(self, ids: Sequence[str]) -> dict[str, Position]:
        return await self._reader.run(lambda: self._known_ids(self._reader.conn, list(ids)))

    async def low_water(self, stream: StreamId) -> int:
        stream_id = self._stream_ids.get(stream)
        if stream_id is None:
            return 1
        (low,) = await self._reader.run(
            lambda: self._reader.conn.execute(
                "SELECT MIN(first_seq) FROM batches WHERE stream = ?", (stream_id,)
            ).fetchone()
        )
        return int(low) if low is not None else self.head(stream) + 1

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
                await self._writer.run(partial(self._forget_segments, emptied))
        return dropped

    def _forget_segments(self, numbers: list[int]) -> None:
        self._trim_reader.forget(numbers)
        self._segments.remove(numbers)

    def _trim_sync(
        self, floors: dict[StreamId, int], older_than_ms: int
    ) -> tuple[int, list[int], bool]:
        """Drop index rows, up to TRIM_BATCHES_PER_COMMIT a stream; return how many, the
        segments no row refers to any more, and whether a stream has more to drop. The commit
        is synced, so a crash can never bring back rows of a deleted segment."""
        conn = self._writer.conn
        dropped = 0
        more = False
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stream, floor in floors.items():
                stream_id = self._stream_ids.get(stream)
                if stream_id is None:
                    continue
                count, capped = self._trim_stream(conn, stream, stream_id, floor, older_than_ms)
                dropped += count
                more = more or capped
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        finally:
            conn.execute("PRAGMA synchronous=NORMAL")
        if not dropped:
            return 0, [], False
        live = {row[0] for row in conn.execute("SELECT DISTINCT segment FROM batches")}
        active = self._segments.active
        stored = segment_numbers(self.segments_folder)
        return dropped, [n for n in stored if n != active and n not in live], more

    def _trim_stream(
        self, conn: sqlite3.Connection, stream: StreamId, stream_id: int, floor: int, before: int
    ) -> tuple[int, bool]:
        """Drop a prefix of one stream's batches; return how many, and whether a cap on this
        commit (batches, or bytes of local batches to read ids from) stopped it short."""
        # Keep J1: drop only a prefix, up to the first batch that must stay.
        (stop,) = conn.execute(
            "SELECT MIN(last_seq) FROM batches WHERE stream = ? AND "
            "(last_seq > ? OR created_ms >= ?)",
            (stream_id, floor, before),
        ).fetchone()
        limit = floor if stop is None else min(floor, stop - 1)
        dropping = conn.execute(
            "SELECT last_seq, segment, offset, size FROM batches "
            "WHERE stream = ? AND last_seq <= ? ORDER BY last_seq LIMIT ?",
            (stream_id, limit, TRIM_BATCHES_PER_COMMIT),
        ).fetchall()
        if not dropping:
            return 0, False
        capped = len(dropping) == TRIM_BATCHES_PER_COMMIT
        if stream.origin == self.site:
            size = 0
            for count, row in enumerate(dropping, start=1):
                size += row[3]
                if size >= TRIM_BYTES_PER_COMMIT and count < len(dropping):
                    dropping, capped = dropping[:count], True
                    break
            conn.executemany(
                "DELETE FROM ids WHERE id = ? AND partition = ? AND seq = ?",
                self._ids_of(stream.partition, [Location(*row[1:]) for row in dropping]),
            )
        cursor = conn.execute(
            "DELETE FROM batches WHERE stream = ? AND last_seq <= ?", (stream_id, dropping[-1][0])
        )
        return cursor.rowcount, capped

    def _ids_of(self, partition: int, locations: Sequence[Location]) -> list[tuple[str, int, int]]:
        """The id rows of stored local batches, read back from their segments. A batch that
        cannot be read any more keeps its id rows (they only answer a very late retry with
        the trimmed position): a damaged segment must not stop every trim, and the site."""
        rows: list[tuple[str, int, int]] = []
        for location in locations:
            try:
                batch = parse_batch(self._trim_reader.read(location))
                found = batch.rows()
            except (DecodeError, JournalError) as exc:
                log.warning(
                    "journal_trim_ids_unreadable", site=self.site, partition=partition,
                    segment=location.segment, offset=location.offset, reason=exc,
                )  # fmt: skip
                continue
            rows.extend((row[0], partition, seq) for seq, row in enumerate(found, batch.first_seq))
        return rows

    async def save_peer_heads(self, peer: str, heads: dict[StreamId, int]) -> None:
        await self._writer.run(lambda: self._save_peer_heads_sync(peer, heads))

    def _save_peer_heads_sync(self, peer: str, heads: dict[StreamId, int]) -> None:
        conn = self._writer.conn
        now_ms = time.time_ns() // 1_000_000
        rows = [
            (peer, self._stream_id(conn, stream), head, now_ms) for stream, head in heads.items()
        ]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT OR REPLACE INTO peer_heads VALUES (?, ?, ?, ?)", rows)
        conn.execute("COMMIT")

    async def peer_heads(self) -> dict[str, dict[StreamId, int]]:
        names = {stream_id: stream for stream, stream_id in self._stream_ids.items()}
        sql = "SELECT peer, stream, head FROM peer_heads"
        rows = await self._reader.run(lambda: self._reader.conn.execute(sql).fetchall())
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
