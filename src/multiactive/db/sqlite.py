"""The embedded database: one SQLite file per site (`independent` mode, the default).

Calls are synchronous on the event loop, as the embedded SQLite state is: a transaction is
a few statements on a local file, and the DB apply runs where the processor runs.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from multiactive.db.base import SCHEMA, BufferedWrites, Dialect, Params
from multiactive.errors import DatabaseError


class SqliteDatabase:
    dialect: Dialect = "sqlite"

    def __init__(self, path: Path, where: str) -> None:
        self.path = path
        self._where = where  # the setting that names this database, for messages
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            for statement in SCHEMA:
                conn.execute(statement)
        except (OSError, sqlite3.Error) as exc:
            raise DatabaseError(
                f"{self._where}: cannot open SQLite database {self.path}: {exc}"
            ) from exc
        self._conn = conn

    async def begin(self, *, buffered: bool = True) -> SqliteTransaction:
        if self._conn is None:
            raise DatabaseError(f"{self._where}: the database is not open")
        self._conn.execute("BEGIN IMMEDIATE")
        return SqliteTransaction(self._conn, buffered)

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class SqliteTransaction(BufferedWrites):
    dialect: Dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection, buffered: bool) -> None:
        super().__init__(buffered)
        self._conn = conn

    async def fetchall(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        await self.flush()
        return [tuple(row) for row in self._conn.execute(qmarks(sql), tuple(params))]

    async def commit(self) -> None:
        await self.flush()
        self._conn.execute("COMMIT")

    async def rollback(self) -> None:
        self._queue.clear()
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    async def _run_many(self, sql: str, rows: list[Params]) -> None:
        self._conn.executemany(qmarks(sql), [tuple(r) for r in rows])


def qmarks(sql: str) -> str:
    """`%s` placeholders (every backend's) as SQLite's `?`."""
    return sql.replace("%s", "?")
