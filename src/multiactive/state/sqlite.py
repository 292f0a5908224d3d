"""SQLite state: the embedded cache. One file per site; each commit is one transaction (P3).

Layout (schema version 1):

    meta(key PRIMARY KEY, value)                        site name, schema version
    kv(key PRIMARY KEY, value NULL = tombstone, version, origin)
    counters(key PRIMARY KEY, value)
    members(key, member, version, origin, present)      PRIMARY KEY(key, member)
    watermarks(origin, partition, applied, count)       PRIMARY KEY(origin, partition)
    dead_letters(origin, partition, seq, id, type, key, error, attempts, parked_ms)

Last-writer-wins is one upsert whose WHERE clause compares (version, origin) as a row value,
so a batch of built-in messages is one `executemany` inside the commit's transaction.
Commits are not fsynced (WAL, synchronous=NORMAL): the journal is the durable record, and a
lost suffix of commits is re-applied from it (see `state.base`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from multiactive.errors import ConfigError, StaleStep
from multiactive.model.message import StreamId
from multiactive.sqlitedb import SqliteDb, WalCheckpointer
from multiactive.state.base import (
    COUNTER_ADD,
    DEFAULT_ZSET_CAP,
    KV_DEL,
    KV_SET,
    ZSET_ADD,
    ZSET_REM,
    Commit,
    DeadLetter,
    Entry,
    Member,
    OpTuple,
    Snapshot,
    StateBackend,
    Watermark,
)
from multiactive.state.ops import sorted_snapshot

SCHEMA_VERSION = "1"
# Pages of a state file made by this build (an older file keeps its 4 KiB). A 1 KiB value
# upsert cost 9.0 us of CPU with 4 KiB pages and 5.5 us with 16 KiB in bulk commits (fewer
# WAL frames, fewer write calls, a quarter of the page splits: docs/benchmarks.md); a one-op
# commit costs ~20 us more, a few percent of a core at 1 000 commits/s.
PAGE_BYTES = 16 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS kv(
    key TEXT PRIMARY KEY, value BLOB, version INTEGER NOT NULL, origin TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS members(
    key TEXT NOT NULL, member BLOB NOT NULL, version INTEGER NOT NULL, origin TEXT NOT NULL,
    present INTEGER NOT NULL, PRIMARY KEY(key, member)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS watermarks(
    origin TEXT NOT NULL, partition INTEGER NOT NULL, applied INTEGER NOT NULL,
    count INTEGER NOT NULL, PRIMARY KEY(origin, partition));
CREATE TABLE IF NOT EXISTS dead_letters(
    origin TEXT NOT NULL, partition INTEGER NOT NULL, seq INTEGER NOT NULL, id TEXT NOT NULL,
    type TEXT NOT NULL, key TEXT NOT NULL, error TEXT NOT NULL, attempts INTEGER NOT NULL,
    parked_ms INTEGER NOT NULL, PRIMARY KEY(origin, partition, seq));
"""

_LWW = """
ON CONFLICT(key) DO UPDATE SET
    value = excluded.value, version = excluded.version, origin = excluded.origin
WHERE (excluded.version, excluded.origin) > (kv.version, kv.origin)
"""
_UPSERT = "INSERT INTO kv(key, value, version, origin) VALUES (?, ?, ?, ?)" + _LWW
# ops.fill_wins as one statement (origin '' is a fill)
_FILL = """
INSERT INTO kv(key, value, version, origin) VALUES (?, ?, ?, '')
ON CONFLICT(key) DO UPDATE SET value = excluded.value, version = excluded.version, origin = ''
WHERE excluded.version > kv.version OR (excluded.version = kv.version AND kv.origin = '')
"""
# Built-in ops bind as they come, (type, key, version, origin, payload): no Python per row.
_APPLY_OP = {
    "kv": (
        "INSERT INTO kv(key, value, version, origin) "
        "VALUES (?2, CASE WHEN ?1 = 'kv.del' THEN NULL ELSE ?5 END, ?3, ?4)" + _LWW
    ),
    "counter": (
        "INSERT INTO counters(key, value) VALUES (?2, CAST(CAST(?5 AS TEXT) AS INTEGER)) "
        "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value"
    ),
    "zset": (
        "INSERT INTO members(key, member, version, origin, present) "
        "VALUES (?2, ?5, ?3, ?4, ?1 = 'zset.add') "
        "ON CONFLICT(key, member) DO UPDATE SET version = excluded.version, "
        "origin = excluded.origin, present = excluded.present "
        "WHERE (excluded.version, excluded.origin) > (members.version, members.origin)"
    ),
}


class SqliteState(StateBackend):
    backend = "sqlite"

    def __init__(
        self,
        site: str,
        path: str | Path,
        zset_cap: int = DEFAULT_ZSET_CAP,
        *,
        inline: bool = False,
        checkpoint_thread: bool = False,
    ) -> None:
        """`inline` runs statements on the calling thread instead of a worker thread: for a
        process whose event loop does nothing else (the applier), where the two thread
        hand-offs of each commit cost more than the commit (docs/benchmarks.md).
        `checkpoint_thread`: WAL checkpoints on a thread of their own instead of inside
        commits (`WalCheckpointer`), for the state's busy writer, the applier."""
        self.site = site
        self.zset_cap = zset_cap
        self.path = Path(path)
        # synchronous=NORMAL: no fsync needed (see state.base); the busy timeout because the
        # site and its applier share the file.
        self._db = SqliteDb(
            self.path, "state", thread=None if inline else f"state-{site}", page_size=PAGE_BYTES
        )
        self._checkpoints = WalCheckpointer(self._db) if checkpoint_thread else None

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self._db.open(self._setup)
        if self._checkpoints is not None:
            self._checkpoints.start()

    def _setup(self, conn: sqlite3.Connection) -> None:
        if self._checkpoints is not None:
            self._checkpoints.writer_setup(conn)
        conn.executescript(_SCHEMA)
        found = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if not found:
            conn.executemany(
                "INSERT INTO meta VALUES (?, ?)", [("site", self.site), ("schema", SCHEMA_VERSION)]
            )
        elif found.get("site") != self.site:
            raise ConfigError(
                f"{self.path} is the state of site {found.get('site')!r}, not {self.site!r}; "
                "check --site and data_dir"
            )

    async def close(self) -> None:
        if self._checkpoints is not None:
            self._checkpoints.stop()
        await self._db.close()

    async def watermarks(self) -> dict[StreamId, Watermark]:
        rows = await self._db.run(
            lambda: self._db.conn.execute(
                "SELECT origin, partition, applied, count FROM watermarks"
            ).fetchall()
        )
        return {StreamId(o, p): Watermark(a, c) for o, p, a, c in rows}

    async def commit(self, *steps: Commit) -> None:
        await self._db.run(lambda: self._commit_sync(steps))
        if self._checkpoints is not None:
            await self._checkpoints.committed(sum(len(s.builtin) + len(s.dead) for s in steps))

    def _commit_sync(self, steps: tuple[Commit, ...]) -> None:
        conn = self._db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for step in steps:
                self._move_watermark(conn, step)
                for family, ops in _by_family(step.builtin).items():
                    conn.executemany(_APPLY_OP[family], ops)
                conn.executemany(
                    "INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [_dead_row(d) for d in step.dead],
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _move_watermark(self, conn: sqlite3.Connection, step: Commit) -> None:
        origin, partition = step.stream
        row = conn.execute(
            "SELECT applied FROM watermarks WHERE origin = ? AND partition = ?", step.stream
        ).fetchone()
        applied = 0 if row is None else row[0]
        if step.through_seq <= applied:
            raise StaleStep(step.stream, applied, step.through_seq)
        conn.execute(
            "INSERT INTO watermarks VALUES (?, ?, ?, ?) ON CONFLICT(origin, partition) "
            "DO UPDATE SET applied = excluded.applied, count = count + excluded.count",
            (origin, partition, step.through_seq, step.processed),
        )

    async def get(self, key: str) -> Entry | None:
        row = await self._db.run(
            lambda: self._db.conn.execute(
                "SELECT key, value, version, origin FROM kv WHERE key = ?", (key,)
            ).fetchone()
        )
        return None if row is None else Entry(*row)

    async def put(self, entries: Sequence[Entry]) -> int:
        return await self._db.run(lambda: self._put_sync(entries))

    def _put_sync(self, entries: Sequence[Entry]) -> int:
        conn = self._db.conn
        before = conn.total_changes
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(_UPSERT, [_row(e) for e in entries])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return conn.total_changes - before

    async def fill(self, key: str, value: bytes, version: int) -> bool:
        return await self._db.run(lambda: self._fill_sync(key, value, version))

    def _fill_sync(self, key: str, value: bytes, version: int) -> bool:
        conn = self._db.conn
        before = conn.total_changes
        conn.execute(_FILL, (key, value, version))  # one statement: atomic on its own
        return conn.total_changes > before

    async def entries(self) -> list[Entry]:
        rows = await self._db.run(
            lambda: self._db.conn.execute(
                "SELECT key, value, version, origin FROM kv ORDER BY key"
            ).fetchall()
        )
        return [Entry(*row) for row in rows]

    async def counter(self, key: str) -> int:
        row = await self._db.run(
            lambda: self._db.conn.execute(
                "SELECT value FROM counters WHERE key = ?", (key,)
            ).fetchone()
        )
        return 0 if row is None else int(row[0])

    async def members(self, key: str) -> list[Member]:
        rows = await self._db.run(
            lambda: self._db.conn.execute(
                "SELECT member, version, origin, present FROM members WHERE key = ? "
                "ORDER BY member",
                (key,),
            ).fetchall()
        )
        return [Member(bytes(m), v, o, bool(p)) for m, v, o, p in rows]

    async def snapshot(self) -> Snapshot:
        return await self._db.run(self._snapshot_sync)

    def _snapshot_sync(self) -> Snapshot:
        conn = self._db.conn
        conn.execute("BEGIN")  # one consistent read of all three tables
        try:
            entries = [
                Entry(*row) for row in conn.execute("SELECT key, value, version, origin FROM kv")
            ]
            counters = conn.execute("SELECT key, value FROM counters").fetchall()
            zsets: dict[str, list[Member]] = {}
            for key, member, version, origin, present in conn.execute(
                "SELECT key, member, version, origin, present FROM members"
            ):
                zsets.setdefault(key, []).append(
                    Member(bytes(member), version, origin, bool(present))
                )
        finally:
            conn.execute("COMMIT")
        return sorted_snapshot(entries, counters, zsets.items())

    async def forget_dead_letters(self, positions: Sequence[tuple[str, int, int]]) -> int:
        return await self._db.run(lambda: self._forget_sync(positions))

    def _forget_sync(self, positions: Sequence[tuple[str, int, int]]) -> int:
        conn = self._db.conn
        before = conn.total_changes
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "DELETE FROM dead_letters WHERE origin = ? AND partition = ? AND seq = ?",
            [tuple(p) for p in positions],
        )
        conn.execute("COMMIT")
        return conn.total_changes - before

    async def dead_letters(self, limit: int = 1000) -> list[DeadLetter]:
        rows = await self._db.run(
            lambda: self._db.conn.execute(
                "SELECT * FROM dead_letters ORDER BY parked_ms, origin, partition, seq LIMIT ?",
                (limit,),
            ).fetchall()
        )
        return [DeadLetter(*row) for row in rows]


def _by_family(ops: Sequence[OpTuple]) -> dict[str, list[OpTuple]]:
    """Ops grouped by the table they change, order kept within each (the common case, a
    batch of one family, costs one pass)."""
    families: dict[str, list[OpTuple]] = {}
    try:
        for op in ops:
            families.setdefault(_FAMILY[op[0]], []).append(op)
    except KeyError as exc:  # a caller's bug, as in the other backends
        raise ValueError(f"{exc.args[0]!r} is not a built-in operation") from None
    return families


_FAMILY = {
    KV_SET: "kv",
    KV_DEL: "kv",
    COUNTER_ADD: "counter",
    ZSET_ADD: "zset",
    ZSET_REM: "zset",
}


def _row(entry: Entry) -> tuple[str, bytes | None, int, str]:
    return (entry.key, entry.value, entry.version, entry.origin)


def _dead_row(d: DeadLetter) -> tuple[object, ...]:
    return (d.origin, d.partition, d.seq, d.id, d.type, d.key, d.error, d.attempts, d.parked_ms)
