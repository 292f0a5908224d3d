"""The SQLite journal's index file: its tables, claiming it for one site, upgrades, and the
check at open that it agrees with itself.

Schema version 3, in WAL mode:

    meta(key PRIMARY KEY, value)                     site name, schema version
    streams(id PRIMARY KEY, origin, partition, head, max_version)
                                                     one row per (origin, partition)
    batches(stream, last_seq UNIQUE per stream, first_seq, count, created_ms, max_version,
            codec, segment, offset, size)            where each stored batch lies
    ids(id PRIMARY KEY, partition, seq)              request id -> position, local messages
                                                     (one index only: a trim reads the ids of
                                                     the batches it drops from their segments)
    peer_heads(peer, stream, head, updated_ms)       what each peer acknowledged
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from multiactive.errors import ConfigError, JournalError
from multiactive.logs import get_logger
from multiactive.model.message import StreamId

SCHEMA_VERSION = "3"
# Version 2 also indexed ids by (partition, seq), for trims; that index doubled the cost of
# every local append's id rows (3.4 instead of 1.6 us an id here) and is dropped on open.
UPGRADES = {"2": "DROP INDEX IF EXISTS ids_by_seq"}

DDL = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS streams(
    id INTEGER PRIMARY KEY, origin TEXT NOT NULL, partition INTEGER NOT NULL,
    head INTEGER NOT NULL DEFAULT 0, max_version INTEGER NOT NULL DEFAULT 0,
    UNIQUE(origin, partition));
CREATE TABLE IF NOT EXISTS batches(
    stream INTEGER NOT NULL, last_seq INTEGER NOT NULL, first_seq INTEGER NOT NULL,
    count INTEGER NOT NULL, created_ms INTEGER NOT NULL, max_version INTEGER NOT NULL,
    codec INTEGER NOT NULL, segment INTEGER NOT NULL, offset INTEGER NOT NULL,
    size INTEGER NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS batches_by_seq ON batches(stream, last_seq);
CREATE INDEX IF NOT EXISTS batches_by_segment ON batches(segment, offset);
CREATE TABLE IF NOT EXISTS ids(
    id TEXT PRIMARY KEY, partition INTEGER NOT NULL, seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS peer_heads(
    peer TEXT NOT NULL, stream INTEGER NOT NULL, head INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL, PRIMARY KEY(peer, stream));
"""

log = get_logger("journal")


def create(conn: sqlite3.Connection, site: str, path: Path) -> None:
    """Create the tables if missing, and claim the file for `site` (or refuse it)."""
    conn.executescript(DDL)
    _claim(conn, site, path)


def _claim(conn: sqlite3.Connection, site: str, path: Path) -> None:
    found = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    if not found:
        conn.executemany(
            "INSERT INTO meta VALUES (?, ?)", [("site", site), ("schema", SCHEMA_VERSION)]
        )
        return
    if found.get("site") != site:
        raise ConfigError(
            f"{path} is the journal of site {found.get('site')!r}, not {site!r}; "
            "check --site and data_dir"
        )
    upgrade = UPGRADES.get(found.get("schema", ""))
    if upgrade is not None:
        conn.execute(upgrade)
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (SCHEMA_VERSION,))
        log.info("journal_schema_upgraded", site=site, to=SCHEMA_VERSION)
    elif found.get("schema") != SCHEMA_VERSION:
        raise ConfigError(
            f"{path} has journal schema {found.get('schema')}, this build reads {SCHEMA_VERSION}"
        )


def check_head(
    conn: sqlite3.Connection, path: Path, stream_id: int, stream: StreamId, head: int
) -> None:
    """A stream's recorded head is its last stored seq (J1), or the file was edited."""
    (stored,) = conn.execute(
        "SELECT MAX(last_seq) FROM batches WHERE stream = ?", (stream_id,)
    ).fetchone()
    if stored is not None and stored != head:
        raise JournalError(
            f"{path}: stream {stream} records head {head} but stores seq {stored}; "
            "the file was changed outside multiactive"
        )
