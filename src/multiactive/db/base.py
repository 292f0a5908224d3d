"""The seam between the DB apply and a database: `Database` opens transactions, a
`Transaction` is what a DB handler writes through.

Statements use `%s` placeholders on every backend (SQLite's `?` is substituted). Writes are
buffered and sent in order at the next read or at commit, consecutive runs of one statement
as one `executemany` (one multi-row INSERT on MariaDB): a round of 4 000 upserts is a few
round trips, not 4 000. `buffered=False` sends each write at once (the DB apply uses it to
find which message's statement failed).

Tables of ours, in every site's database (they replicate with the binlog in writer mode):

    ma_db_watermarks   (origin, part) -> seq: the last message whose DB handlers committed
    ma_db_fence        one row: the writer site and its epoch; every writer-mode transaction
                       locks it and commits only under its own epoch
    ma_db_dead_letters (origin, part, seq): a message whose DB handler kept failing
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

Dialect = Literal["sqlite", "mysql"]
Params = Sequence[Any]
Row = tuple[Any, ...]
FENCE_ROW = 1

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS ma_db_watermarks (origin VARCHAR(63) NOT NULL, "
    "part INTEGER NOT NULL, seq BIGINT NOT NULL, PRIMARY KEY (origin, part))",
    "CREATE TABLE IF NOT EXISTS ma_db_fence (id INTEGER NOT NULL PRIMARY KEY, "
    "writer VARCHAR(63) NOT NULL, epoch BIGINT NOT NULL, changed_ms BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ma_db_dead_letters (origin VARCHAR(63) NOT NULL, "
    "part INTEGER NOT NULL, seq BIGINT NOT NULL, id VARCHAR(64) NOT NULL, "
    "type VARCHAR(255) NOT NULL, msg_key VARCHAR(1024) NOT NULL, error TEXT NOT NULL, "
    "attempts INTEGER NOT NULL, at_ms BIGINT NOT NULL, PRIMARY KEY (origin, part, seq))",
)


class Transaction(Protocol):
    """One database transaction; a DB handler writes its rows through it."""

    dialect: Dialect

    async def execute(self, sql: str, params: Params = ()) -> None:
        """Queue a write (`%s` placeholders); sent in order before the next read or commit."""
        ...

    async def fetchall(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """Run a read (after the queued writes) and return its rows."""
        ...

    async def upsert(
        self,
        table: str,
        row: Mapping[str, Any],
        key: Sequence[str],
        version_column: str | None = None,
    ) -> None:
        """Insert `row`, or update the row with the same `key` columns. With
        `version_column`, an existing row is only overwritten by a higher version: store
        `message.version` there and a late or replayed message never overwrites newer data."""
        ...


class Database(Protocol):
    """A site's database."""

    dialect: Dialect

    async def open(self) -> None:
        """Connect (and check the account); raises DatabaseError naming the setting."""
        ...

    async def begin(self, *, buffered: bool = True) -> DbTransaction: ...

    async def close(self) -> None: ...


class DbTransaction(Transaction, Protocol):
    async def commit(self) -> None: ...

    async def rollback(self) -> None: ...


class BufferedWrites(ABC):
    """The write queue and the SQL text shared by the backends' transactions."""

    dialect: Dialect

    def __init__(self, buffered: bool) -> None:
        self._buffered = buffered
        self._queue: list[tuple[str, list[Params]]] = []

    async def execute(self, sql: str, params: Params = ()) -> None:
        if not self._buffered:
            await self._run_many(sql, [params])
        elif self._queue and self._queue[-1][0] == sql:
            self._queue[-1][1].append(params)
        else:
            self._queue.append((sql, [params]))

    async def flush(self) -> None:
        queue, self._queue = self._queue, []
        for sql, rows in queue:
            await self._run_many(sql, rows)

    async def upsert(
        self,
        table: str,
        row: Mapping[str, Any],
        key: Sequence[str],
        version_column: str | None = None,
    ) -> None:
        key = key if isinstance(key, tuple) else tuple(key)
        sql = upsert_sql(self.dialect, table, tuple(row), key, version_column)
        await self.execute(sql, tuple(row.values()))

    @abstractmethod
    async def _run_many(self, sql: str, rows: list[Params]) -> None:
        """Send one statement with each of `rows` (the backend's executemany)."""


@functools.lru_cache(maxsize=256)
def upsert_sql(
    dialect: Dialect,
    table: str,
    columns: Sequence[str],
    key: Sequence[str],
    version_column: str | None,
) -> str:
    """INSERT ... ON DUPLICATE KEY UPDATE (MariaDB) / ON CONFLICT DO UPDATE (SQLite); with a
    version column, each column is only replaced when the new version is higher."""
    others = [c for c in columns if c not in key]
    names = ", ".join(columns)
    marks = ", ".join(["%s"] * len(columns))
    head = f"INSERT INTO {table} ({names}) VALUES ({marks})"
    if dialect == "mysql":
        newer = f"VALUES({version_column}) > {version_column}" if version_column else None
        # The version column is assigned last: the others compare against the old version.
        ordered = sorted(others, key=lambda c: c == version_column)
        sets = ", ".join(
            f"{c} = IF({newer}, VALUES({c}), {c})" if newer else f"{c} = VALUES({c})"
            for c in ordered
        )
        return f"{head} ON DUPLICATE KEY UPDATE {sets}"
    sets = ", ".join(f"{c} = excluded.{c}" for c in others)
    where = f" WHERE excluded.{version_column} > {table}.{version_column}" if version_column else ""
    action = f"DO UPDATE SET {sets}{where}" if others else "DO NOTHING"
    return f"{head} ON CONFLICT ({', '.join(key)}) {action}"
