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
- `SqliteReader`: a read-only connection to the site's SQLite database (independent mode).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Protocol

from multiactive.db.base import Dialect, Params, Row
from multiactive.db.config import DatabaseSettings
from multiactive.errors import DatabaseError


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

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        try:
            conn = self._conn or self._open()
            return [tuple(row) for row in conn.execute(sql.replace("%s", "?"), tuple(params))]
        except sqlite3.Error as exc:
            transient = isinstance(exc, sqlite3.OperationalError) and _unavailable(exc)
            raise DatabaseError(f"{self.where} ({self.path}): {exc}", transient=transient) from exc

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _open(self) -> sqlite3.Connection:
        uri = f"{self.path.resolve().as_uri()}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=1000")
        self._conn = conn
        return conn


def _unavailable(exc: sqlite3.OperationalError) -> bool:
    """Locked, missing or unreadable: the file does not answer now (not a bad query)."""
    text = str(exc)
    return any(s in text for s in ("locked", "unable to open", "disk I/O", "readonly"))
