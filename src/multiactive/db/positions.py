"""Where a site's MariaDB replica stands against the writer: the position gate of reads.

A cache fill read from a replica may be stale: the replica applies the writer's binlog some
time after the writer committed it (network, a busy SQL thread, or `MASTER_DELAY`). Instead of
reloading every fill after a fixed ten minutes, the read path asks this gate for a **mark**
right after the load (the writer's `@@gtid_binlog_pos` then: every transaction the writer had
committed when the load ran) and reloads the key once the replica's `@@gtid_current_pos` has
**passed** the mark. Positions are compared per GTID domain by seq_no, which grows across
servers within a domain under `gtid_strict_mode` (a failover keeps the domain's sequence).

Marks are the GTID list as text (`0-1-1234`); two special marks:

    ''   the local database is the writer (nothing to wait for: no reload)
    '?'  the writer's position could not be read (unreachable within `timeout_s`): the reload
         waits for its upper bound (`reload_after_s`), as Weibo's fixed delay did

The gate needs no privilege beyond the processors' account: it reads `ma_db_fence` (which
site writes, replicated with the binlog) and two system variables.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from multiactive.db.config import DatabaseSettings
from multiactive.db.mariadb import MariaReader
from multiactive.db.replication import Gtids, domain_positions, parse_gtids
from multiactive.errors import DatabaseError
from multiactive.reads.gate import CURRENT as CURRENT_MARK
from multiactive.reads.gate import UNKNOWN as UNKNOWN_MARK

__all__ = ["CURRENT_MARK", "UNKNOWN_MARK", "MariaDbGate", "covers", "mark_passed"]
DEFAULT_WRITER_TIMEOUT_S = 1.0  # how long a mark waits for the writer across the long haul


def covers(current: Gtids, mark: Gtids) -> bool:
    """Has a server at `current` applied everything up to `mark`, domain by domain?"""
    held = domain_positions(current)
    return all(held.get(domain, 0) >= seq for domain, seq in domain_positions(mark).items())


def mark_passed(current: Gtids, mark: str) -> bool:
    if mark == CURRENT_MARK:
        return True
    if mark == UNKNOWN_MARK:
        return False
    return covers(current, parse_gtids(mark))


@dataclass(frozen=True, slots=True)
class GateStatistics:
    marks: int = 0  # marks taken
    unknown_marks: int = 0  # of which the writer's position could not be read
    checks: int = 0  # passed() calls answered
    errors: int = 0  # calls that failed (the local or the writer's server did not answer)
    last_error: str | None = None


class MariaDbGate:
    """The `PositionGate` of a site whose database is (or may be) a binlog replica.

    `writer` says which site holds the DB-writer role now (the site's DB apply knows it from
    the replicated control messages); without it the gate reads the local fence row.
    """

    def __init__(
        self,
        settings: DatabaseSettings,
        site: str,
        *,
        writer: Callable[[], str | None] | None = None,
        timeout_s: float = DEFAULT_WRITER_TIMEOUT_S,
    ) -> None:
        self.site = site
        self._settings = settings
        self._writer = writer
        self._timeout_s = timeout_s
        self._local = self._server(site)
        self._remote: dict[str, MariaReader] = {}
        self._stats = GateStatistics()

    async def mark(self) -> str:
        """The writer's binlog position now ('' when this site writes, '?' when unknown)."""
        writer = await self._writer_site()
        if writer is None or writer == self.site:
            mark = CURRENT_MARK
        else:
            mark = await self._writer_position(writer)
        self._count(marks=1, unknown_marks=int(mark == UNKNOWN_MARK))
        return mark

    async def passed(self, marks: Sequence[str]) -> list[bool]:
        """For each mark: has the local copy applied it? One query for all of them."""
        if all(m in (CURRENT_MARK, UNKNOWN_MARK) for m in marks):
            return [m == CURRENT_MARK for m in marks]
        try:
            found = await self._local.fetchone("SELECT @@gtid_current_pos")
        except DatabaseError as exc:
            self._count(errors=1, last_error=str(exc))
            raise
        current = parse_gtids(str(found[0] or "") if found else "")
        self._count(checks=1)
        return [mark_passed(current, m) for m in marks]

    def statistics(self) -> GateStatistics:
        return self._stats

    async def close(self) -> None:
        await self._local.close()
        for server in self._remote.values():
            await server.close()

    async def _writer_site(self) -> str | None:
        if self._writer is not None:
            return self._writer()
        if self._settings.mode != "writer":
            return None
        try:
            found = await self._local.fetchone("SELECT writer FROM ma_db_fence WHERE id = 1")
        except DatabaseError:
            return self._settings.writer  # no fence row yet: the configured first writer
        return str(found[0]) if found else self._settings.writer

    async def _writer_position(self, writer: str) -> str:
        server = self._remote.get(writer)
        if server is None:
            server = self._remote[writer] = self._server(writer)
        try:
            async with asyncio.timeout(self._timeout_s):
                found = await server.fetchone("SELECT @@gtid_binlog_pos")
        except (DatabaseError, TimeoutError) as exc:  # the connection is closed, not reused
            self._count(errors=1, last_error=f"{writer}: {exc or 'timed out'}")
            return UNKNOWN_MARK
        return str(found[0] or "") if found else ""

    def _server(self, site: str) -> MariaReader:
        """One autocommit connection, opened on first use and again after an error."""
        entry = self._settings.site(site)
        return MariaReader(entry.url, f"{self._settings.source}: {entry.where}.url", 1)

    def _count(self, *, last_error: str | None = None, **deltas: int) -> None:
        s = self._stats
        changes: dict[str, Any] = {k: getattr(s, k) + v for k, v in deltas.items()}
        self._stats = replace(s, last_error=last_error or s.last_error, **changes)
