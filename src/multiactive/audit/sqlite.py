"""SQLite audit store: one file per site (`audit.sqlite3` in its data_dir), embedded default.

records(site, origin, partition, first_seq, last_seq, stage, at_ms, detail)
index records_by_position(origin, partition, last_seq)
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from multiactive.audit.base import AuditRecord, AuditStore
from multiactive.sqlitedb import SqliteDb

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records(
    site TEXT NOT NULL, origin TEXT NOT NULL, partition INTEGER NOT NULL,
    first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL, stage TEXT NOT NULL,
    at_ms INTEGER NOT NULL, detail TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS records_by_position ON records(origin, partition, last_seq);
"""


class SqliteAuditStore(AuditStore):
    name = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = SqliteDb(self.path, "audit store", thread="audit")

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self._db.open(_create)

    async def close(self) -> None:
        await self._db.close()

    async def write(self, records: Sequence[AuditRecord]) -> None:
        rows = [
            (r.site, r.origin, r.partition, r.first_seq, r.last_seq, r.stage, r.at_ms, r.detail)
            for r in records
        ]
        await self._db.run(lambda: self._write_sync(rows))

    def _write_sync(self, rows: Sequence[tuple[object, ...]]) -> None:
        conn = self._db.conn
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")

    async def covering(self, origin: str, partition: int, seq: int) -> list[AuditRecord]:
        rows = await self._db.run(
            lambda: self._db.conn.execute(
                "SELECT * FROM records WHERE origin = ? AND partition = ? AND last_seq >= ? "
                "AND first_seq <= ? ORDER BY at_ms",
                (origin, partition, seq, seq),
            ).fetchall()
        )
        return [AuditRecord(*row) for row in rows]


def _create(conn: sqlite3.Connection) -> None:
    conn.executescript(_SCHEMA)
