"""Crash recovery of the SQLite journal, at open on the writer thread: what a crash can leave
behind in the segments, mended.

An append makes its batches durable in the active segment before it commits their index
rows, and that commit is not synced. So past the last indexed batch of a segment lies either
a batch whose index commit a machine crash lost (indexed again here, request ids too, as J1
and J2 allow) or the torn end of an append that never completed and was never acknowledged
(cut off). A segment shorter than its index was changed outside multiactive: refused.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from multiactive.errors import JournalError
from multiactive.journal.segments import Location, SegmentWriter, segment_path
from multiactive.journal.sqlite.index import Index
from multiactive.logs import get_logger
from multiactive.model.batch import RecordBatch, scan_batches
from multiactive.model.message import StreamId

log = get_logger("journal")


class Recovery:
    """Mends the segments of one journal; moves its `heads` (the journal's own dict) and
    `max_version` past what it indexes again."""

    def __init__(
        self,
        site: str,
        path: Path,
        index: Index,
        segments: SegmentWriter,
        heads: dict[StreamId, int],
    ) -> None:
        self.site = site
        self.path = path
        self.index = index
        self.segments = segments
        self.heads = heads
        self.max_version = 0

    def run(self, conn: sqlite3.Connection) -> None:
        """Open the segments for appends and mend each."""
        for number in self.segments.open():
            self.segment(conn, number)

    def segment(self, conn: sqlite3.Connection, number: int) -> None:
        """Index what lies past a segment's last indexed batch; cut a torn end off."""
        (indexed,) = conn.execute(
            "SELECT MAX(offset + size) FROM batches WHERE segment = ?", (number,)
        ).fetchone()
        indexed = indexed or 0
        size = self.segments.size_of(number)
        if size < indexed:
            raise JournalError(
                f"{segment_path(self.segments.folder, number)} holds {size} bytes but "
                f"{self.path} indexes batches up to byte {indexed}; the segment was changed "
                "outside multiactive"
            )
        if size == indexed:
            return
        batches, stop, error = scan_batches(self.segments.read_from(number, indexed))
        offset = indexed
        conn.execute("BEGIN IMMEDIATE")
        try:
            for batch in batches:
                self._reindex(conn, batch, Location(number, offset, batch.size))
                offset += batch.size
            conn.execute("COMMIT")
        except BaseException:
            self.index.rollback(conn)
            raise
        if batches:
            log.warning("journal_reindexed", site=self.site, segment=number, batches=len(batches))
        if error is not None:
            self.segments.cut(number, indexed + stop)
            log.warning(
                "journal_torn_end_cut", site=self.site, segment=number, offset=indexed + stop,
                bytes=size - indexed - stop, reason=error,
            )  # fmt: skip

    def _reindex(self, conn: sqlite3.Connection, batch: RecordBatch, location: Location) -> None:
        """Index a durable batch whose index commit was lost (J1 and J2 still decide)."""
        stream = batch.stream
        head = self.heads.get(stream, 0)
        if batch.first_seq != head + 1:
            log.warning(
                "journal_unindexed_batch_skipped", site=self.site, stream=str(stream),
                first_seq=batch.first_seq, head=head,
            )  # fmt: skip
            return
        self.index.insert_batches(conn, [batch], [location])
        if stream.origin == self.site:
            conn.executemany(
                "INSERT OR IGNORE INTO ids VALUES (?, ?, ?)",
                [
                    (row[0], batch.partition, seq)
                    for seq, row in enumerate(batch.rows(), batch.first_seq)
                ],
            )
        self.heads[stream] = batch.last_seq
        self.max_version = max(self.max_version, batch.max_version)
