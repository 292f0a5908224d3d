"""Reads from a site's own database copy: what cache-aside loaders are given.

    async def load_user(key: str, db: DbReader) -> Loaded:
        row = await db.fetchone("SELECT body, version FROM users WHERE id = %s", (key,))
        return Loaded(None) if row is None else Loaded(row[0], row[1])

A reader reads the site's **own** copy (in `writer` mode a binlog replica everywhere but at
the writer): never across the long haul. Statements use `%s` placeholders on every backend.
Every failure is a `DatabaseError`; `transient` when the server does not answer (down,
restarting, unreachable, a locked SQLite file), which the read path turns into
`DatabaseUnavailable` while cached keys keep being served.

- `db.mariadb.MariaReader`: a few autocommit connections (at most `DEFAULT_READ_CONNECTIONS`
  queries at once), opened on first use; a connection that failed is closed, never reused.
- `SqliteReader`: a read-only connection to the site's SQLite database (independent mode),
  on a thread of its own (a locked file waits out its busy timeout there, not on the loop).
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from multiactive.db.base import Dialect, Params, Row
from multiactive.db.config import DatabaseSettings
from multiactive.db.sqlite import qmarks
from multiactive.errors import DatabaseError

# SQLite result codes of a file that does not answer now (locked, missing, unreadable), as
# opposed to a bad query; SQLITE_READONLY only in its extended forms (a WAL this read-only
# connection cannot recover yet), never a loader's write through it.
_TRANSIENT = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_CANTOPEN,
              sqlite3.SQLITE_IOERR}  # fmt: skip


class DbReader(Protocol):
    """Read-only access to the site's own database copy."""

    dialect: Dialect

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        """Run a query (`%s` placeholders) and return its rows."""
        ...

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        """The first row of a query, or None."""
        ...

    async def close(self) -> None: ...


def open_reader(settings: DatabaseSettings, site: str) -> DbReader:
    """The reader of `site`'s own database copy, as [database] names it (not yet connected)."""
    entry = settings.site(site)
    where = f"{settings.source}: {entry.where}.url"
    if entry.url.scheme == "sqlite":
        assert entry.url.path is not None
        return SqliteReader(entry.url.path, where)
    from multiactive.db.mariadb import MariaReader  # needs the [mariadb] extra (asyncmy)

    return MariaReader(entry.url, where)


class SqliteReader:
    dialect: Dialect = "sqlite"

    def __init__(self, path: Path, where: str) -> None:
        self.path, self.where = path, where
        self._conn: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="db-reader")

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._fetchall, sql, tuple(params))

    def _fetchall(self, sql: str, params: tuple[object, ...]) -> list[Row]:
        try:
            conn = self._conn or self._open()
            return [tuple(row) for row in conn.execute(qmarks(sql), params)]
        except sqlite3.Error as exc:
            raise DatabaseError(
                f"{self.where} ({self.path}): {exc}", transient=_transient(exc)
            ) from exc

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def close(self) -> None:
        if self._conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._conn.close)
            self._conn = None

    def _open(self) -> sqlite3.Connection:
        uri = f"{self.path.resolve().as_uri()}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=1000")
        self._conn = conn
        return conn


def _transient(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", 0)
    if code & 0xFF == sqlite3.SQLITE_READONLY:
        return bool(code != sqlite3.SQLITE_READONLY)
    return code & 0xFF in _TRANSIENT
