"""The SQLite journal's index: the statements appends and reads share (tables in `schema`).

`Index` keeps the one piece of memory they share, the id of each stream's row; it holds no
connection: every call is given the connection of the thread it runs on (the writer's or the
reader's). Only the writer creates stream rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from multiactive.journal.segments import Location
from multiactive.model.batch import RecordBatch
from multiactive.model.message import Position, StreamId

_SQL_VARIABLES = 500
_READ_ROWS = 256

BatchRow = tuple[int, int, int, int, int, int, int, int]
"""first_seq, count, created_ms, max_version, codec, segment, offset, size"""


class Index:
    def __init__(self, site: str) -> None:
        self.site = site
        self.stream_ids: dict[StreamId, int] = {}

    # -- streams -------------------------------------------------------------------------

    def load(self, conn: sqlite3.Connection) -> list[tuple[StreamId, int, int]]:
        """Every stream's (stream, head, max_version); remembers their ids."""
        streams = []
        for stream_id, origin, partition, head, max_version in conn.execute(
            "SELECT id, origin, partition, head, max_version FROM streams"
        ):
            stream = StreamId(origin, partition)
            self.stream_ids[stream] = stream_id
            streams.append((stream, head, max_version))
        return streams

    def refresh(self, conn: sqlite3.Connection) -> None:
        """Learn the ids of streams the writer made since (a reader following the writer)."""
        for stream_id, origin, partition in conn.execute(
            "SELECT id, origin, partition FROM streams"
        ):
            self.stream_ids[StreamId(origin, partition)] = stream_id

    def stream_id(self, conn: sqlite3.Connection, stream: StreamId) -> int:
        """The stream's row id, making the row (inside the caller's transaction) if new."""
        stream_id = self.stream_ids.get(stream)
        if stream_id is None:
            cursor = conn.execute("INSERT INTO streams(origin, partition) VALUES (?, ?)", stream)
            stream_id = self.stream_ids[stream] = cursor.lastrowid or 0
        return stream_id

    def rollback(self, conn: sqlite3.Connection) -> None:
        """Undo a failed transaction, and forget stream ids the undone transaction had made."""
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        self.stream_ids = {
            StreamId(origin, partition): stream_id
            for stream_id, origin, partition in conn.execute(
                "SELECT id, origin, partition FROM streams"
            )
        }

    # -- writes (writer thread, inside the caller's transaction) -------------------------

    def insert_batches(
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
            stream_id = self.stream_id(conn, batch.stream)
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

    def insert_ids(self, conn: sqlite3.Connection, ids: Sequence[tuple[str, int, int]]) -> None:
        conn.executemany("INSERT INTO ids VALUES (?, ?, ?)", ids)

    def save_peer_heads(
        self, conn: sqlite3.Connection, peer: str, heads: dict[StreamId, int], now_ms: int
    ) -> None:
        rows = [
            (peer, self.stream_id(conn, stream), head, now_ms) for stream, head in heads.items()
        ]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT OR REPLACE INTO peer_heads VALUES (?, ?, ?, ?)", rows)
        conn.execute("COMMIT")

    # -- reads (either thread) -----------------------------------------------------------

    def known_ids(self, conn: sqlite3.Connection, ids: list[str]) -> dict[str, Position]:
        """Where the request ids among `ids` that this site journaled lie."""
        found: dict[str, Position] = {}
        for start in range(0, len(ids), _SQL_VARIABLES):
            chunk = ids[start : start + _SQL_VARIABLES]
            marks = ",".join("?" * len(chunk))
            for id_, partition, seq in conn.execute(
                f"SELECT id, partition, seq FROM ids WHERE id IN ({marks})", chunk
            ):
                found[id_] = Position(self.site, partition, seq)
        return found

    def batches_from(
        self, conn: sqlite3.Connection, stream_id: int, from_seq: int
    ) -> sqlite3.Cursor:
        """Rows (`BatchRow`) of the stored batches reaching `from_seq` or beyond, in order, at
        most a page of them."""
        return conn.execute(
            "SELECT first_seq, count, created_ms, max_version, codec, segment, offset, size "
            "FROM batches WHERE stream = ? AND last_seq >= ? ORDER BY last_seq LIMIT ?",
            (stream_id, from_seq, _READ_ROWS),
        )

    def coverage(self, conn: sqlite3.Connection, stream_id: int) -> tuple[int | None, int | None]:
        """(messages stored, lowest seq stored) of a stream: one indexed aggregate."""
        stored, low = conn.execute(
            "SELECT SUM(count), MIN(first_seq) FROM batches WHERE stream = ?", (stream_id,)
        ).fetchone()
        return stored, low

    def created_at(
        self, conn: sqlite3.Connection, stream_id: int, seq: int
    ) -> tuple[int, int] | None:
        """(first_seq, created_ms) of the first batch whose seqs reach `seq`."""
        row: tuple[int, int] | None = conn.execute(
            "SELECT first_seq, created_ms FROM batches WHERE stream = ? AND last_seq >= ? "
            "ORDER BY last_seq LIMIT 1",
            (stream_id, seq),
        ).fetchone()
        return row

    def lowest_seq(self, conn: sqlite3.Connection, stream_id: int) -> int | None:
        (low,) = conn.execute(
            "SELECT MIN(first_seq) FROM batches WHERE stream = ?", (stream_id,)
        ).fetchone()
        return None if low is None else int(low)

    def peer_heads(self, conn: sqlite3.Connection) -> list[tuple[str, int, int]]:
        """(peer, stream id, head) of every peer head saved."""
        rows: list[tuple[str, int, int]] = conn.execute(
            "SELECT peer, stream, head FROM peer_heads"
        ).fetchall()
        return rows
