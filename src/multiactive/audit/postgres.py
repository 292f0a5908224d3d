"""PostgreSQL audit store: one table shared by every site, for scale and for one place to ask.

    multiactive_audit(site, origin, partition, first_seq, last_seq, stage, at_ms, detail)
    index multiactive_audit_by_position(origin, partition, last_seq)

Uses psycopg 3 (async). The DSN comes from `[audit] dsn` in the topology.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from multiactive.audit.base import AuditRecord, AuditStore
from multiactive.errors import ConfigError

# Every site creates the schema when it opens the store; several at once would race inside
# PostgreSQL's catalog (CREATE ... IF NOT EXISTS is not safe concurrently), so the creation
# runs in one transaction holding this advisory lock (any constant our tables own).
_SCHEMA_LOCK = 0x6D61_6175  # "maau"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS multiactive_audit(
    site TEXT NOT NULL, origin TEXT NOT NULL, partition INTEGER NOT NULL,
    first_seq BIGINT NOT NULL, last_seq BIGINT NOT NULL, stage TEXT NOT NULL,
    at_ms BIGINT NOT NULL, detail TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS multiactive_audit_by_position
    ON multiactive_audit(origin, partition, last_seq);
"""


class PostgresAuditStore(AuditStore):
    name = "postgresql"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None

    async def open(self) -> None:
        try:
            self._conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        except psycopg.Error as exc:
            raise ConfigError(
                f"cannot connect to the audit store at {_safe(self.dsn)} ([audit] dsn): {exc}"
            ) from exc
        async with self._conn.transaction(), self._conn.cursor() as cur:
            await cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            await cur.execute(_SCHEMA)

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def write(self, records: Sequence[AuditRecord]) -> None:
        conn = self._db()
        async with (
            conn.cursor() as cur,
            cur.copy(
                "COPY multiactive_audit (site, origin, partition, first_seq, last_seq, stage, "
                "at_ms, detail) FROM STDIN"
            ) as copy,
        ):
            for r in records:
                await copy.write_row(
                    (r.site, r.origin, r.partition, r.first_seq, r.last_seq, r.stage, r.at_ms,
                     r.detail)
                )  # fmt: skip

    async def covering(self, origin: str, partition: int, seq: int) -> list[AuditRecord]:
        async with self._db().cursor() as cur:
            await cur.execute(
                "SELECT site, origin, partition, first_seq, last_seq, stage, at_ms, detail "
                "FROM multiactive_audit WHERE origin = %s AND partition = %s "
                "AND last_seq >= %s AND first_seq <= %s ORDER BY at_ms",
                (origin, partition, seq, seq),
            )
            rows = await cur.fetchall()
        return [AuditRecord(*row) for row in rows]  # type: ignore[arg-type]

    def _db(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        if self._conn is None:
            raise RuntimeError("the PostgreSQL audit store is not open")
        return self._conn


def _safe(dsn: str) -> str:
    """A DSN without its password, for error messages."""
    if "@" in dsn and "://" in dsn:
        scheme, rest = dsn.split("://", 1)
        credentials, host = rest.split("@", 1)
        return f"{scheme}://{credentials.split(':')[0]}@{host}"
    return dsn
