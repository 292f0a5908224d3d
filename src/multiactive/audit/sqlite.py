"""SQLite audit store: one file per site (`audit.sqlite3` in its data_dir), embedded default.

records(site, origin, partition, first_seq, last_seq, stage, at_ms, detail)
index records_by_position(origin, partition, last_seq)
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from multiactive.audit.base import AuditRecord, AuditStore

T = TypeVar("T")

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
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="audit")
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self._run(self._open_sync)

    def _open_sync(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        self._conn = conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None
        self._thread.shutdown(wait=True)

    async def write(self, records: Sequence[AuditRecord]) -> None:
        rows = [
            (r.site, r.origin, r.partition, r.first_seq, r.last_seq, r.stage, r.at_ms, r.detail)
            for r in records
        ]
        await self._run(lambda: self._write_sync(rows))

    def _write_sync(self, rows: Sequence[tuple[object, ...]]) -> None:
        conn = self._db()
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")

    async def covering(self, origin: str, partition: int, seq: int) -> list[AuditRecord]:
        rows = await self._run(
            lambda: (
                self._db()
                .execute(
                    "SELECT * FROM records WHERE origin = ? AND partition = ? AND last_seq >= ? "
                    "AND first_seq <= ? ORDER BY at_ms",
                    (origin, partition, seq, seq),
                )
                .fetchall()
            )
        )
        return [AuditRecord(*row) for row in rows]

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"audit store {self.path} is not open")
        return self._conn

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)
