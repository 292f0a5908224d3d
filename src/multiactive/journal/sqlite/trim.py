"""Trims of the SQLite journal (writer thread): dropping a prefix of each stream's batches
(J1 keeps what is left whole; J4's floors say how far), in short commits, and the segment files
no batch lies in any more.

A trim commit is synced (`synchronous=FULL` for it) before the segments it empties are
deleted, so a crash can never bring back index rows of a deleted segment. The request ids of
dropped local batches are read back from their segments (the ids table has one index only).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from multiactive.errors import DecodeError, JournalError
from multiactive.journal.segments import Location, SegmentReader, SegmentWriter, segment_numbers
from multiactive.journal.sqlite.index import Index
from multiactive.logs import get_logger
from multiactive.model.batch import parse_batch
from multiactive.model.message import StreamId

# A trim commits at most this many batches of a stream at a time, so appends queued behind it
# on the writer thread wait for one short transaction, not for the whole trim.
TRIM_BATCHES_PER_COMMIT = 1000
TRIM_BYTES_PER_COMMIT = 16 * 1024 * 1024  # of local batches, read back for their ids

log = get_logger("journal")


class Trimmer:
    def __init__(
        self,
        site: str,
        index: Index,
        segments: SegmentWriter,
        reader: SegmentReader,
        folder: Path,
    ) -> None:
        """`reader` reads segments on the writer thread (the reader thread has its own)."""
        self.site = site
        self.index = index
        self.segments = segments
        self.reader = reader
        self.folder = folder

    def once(
        self, conn: sqlite3.Connection, floors: dict[StreamId, int], older_than_ms: int
    ) -> tuple[int, list[int], bool]:
        """Drop index rows, up to TRIM_BATCHES_PER_COMMIT a stream; return how many, the
        segments no row refers to any more, and whether a stream has more to drop. The commit
        is synced, so a crash can never bring back rows of a deleted segment."""
        dropped = 0
        more = False
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stream, floor in floors.items():
                stream_id = self.index.stream_ids.get(stream)
                if stream_id is None:
                    continue
                count, capped = self._stream(conn, stream, stream_id, floor, older_than_ms)
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
        active = self.segments.active
        stored = segment_numbers(self.folder)
        return dropped, [n for n in stored if n != active and n not in live], more

    def forget(self, numbers: list[int]) -> None:
        """Delete emptied segments (after the reader thread forgot them too)."""
        self.reader.forget(numbers)
        self.segments.remove(numbers)

    def _stream(
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
                batch = parse_batch(self.reader.read(location))
                found = batch.rows()
            except (DecodeError, JournalError) as exc:
                log.warning(
                    "journal_trim_ids_unreadable", site=self.site, partition=partition,
                    segment=location.segment, offset=location.offset, reason=exc,
                )  # fmt: skip
                continue
            rows.extend((row[0], partition, seq) for seq, row in enumerate(found, batch.first_seq))
        return rows
