"""MariaDB replication as the `multiactive db` commands see and change it (admin accounts).

GTID positions are compared per (domain, server_id) with `@@gtid_binlog_state`: a replica
holds an **errant** transaction when its binlog has a GTID of some server that the primary's
binlog does not (a write on a replica through read_only, or what a dead primary committed and
never shipped); under `gtid_strict_mode` it stops replication from the new primary, so status
and failover report it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from asyncmy.errors import MySQLError

from multiactive.db.config import DatabaseSettings, DatabaseUrl
from multiactive.db.mariadb import connect, translate
from multiactive.errors import DatabaseError

Gtids = dict[tuple[int, int], int]  # (domain, server_id) -> seq_no


def parse_gtids(text: str) -> Gtids:
    """`0-1-100,0-3-7` -> {(0, 1): 100, (0, 3): 7}."""
    found: Gtids = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        domain, server, seq = (int(x) for x in part.split("-"))
        found[(domain, server)] = max(seq, found.get((domain, server), 0))
    return found


def domain_positions(gtids: Gtids) -> dict[int, int]:
    """The highest seq_no per domain (seq_no grows across servers within a domain)."""
    positions: dict[int, int] = {}
    for (domain, _), seq in gtids.items():
        positions[domain] = max(seq, positions.get(domain, 0))
    return positions


def behind(ahead: Gtids, other: Gtids) -> int:
    """Transactions `other` lacks of `ahead`, counted per domain by seq_no."""
    mine, theirs = domain_positions(ahead), domain_positions(other)
    return sum(max(0, seq - theirs.get(d, 0)) for d, seq in mine.items())


def errant(replica: Gtids, primary: Gtids) -> list[str]:
    """GTIDs in the replica's binlog that the primary's binlog does not hold."""
    return [
        f"{d}-{s}-{seq}" for (d, s), seq in sorted(replica.items()) if primary.get((d, s), 0) < seq
    ]


@dataclass(frozen=True, slots=True)
class ServerState:
    """One site's database as an admin sees it."""

    site: str
    reachable: bool
    error: str | None = None
    server_id: int = 0
    read_only: bool = False
    replica_of: str | None = None  # host:port of its primary, if it is a replica
    io_running: str = ""
    sql_running: str = ""
    seconds_behind: int | None = None
    gtid_binlog_state: str = ""
    gtid_current_pos: str = ""
    gtid_io_pos: str = ""
    fence_writer: str | None = None
    fence_epoch: int = 0
    last_error: str = ""

    @property
    def is_replica(self) -> bool:
        return self.replica_of is not None

    @property
    def binlog(self) -> Gtids:
        return parse_gtids(self.gtid_binlog_state)

    @property
    def current(self) -> Gtids:
        return parse_gtids(self.gtid_current_pos)


@dataclass(frozen=True, slots=True)
class SiteReport:
    site: str
    role: str  # primary | replica | down | standalone
    state: ServerState
    lag_transactions: int | None
    errant_gtids: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self.state)
        data.update(
            role=self.role, lag_transactions=self.lag_transactions, errant_gtids=self.errant_gtids
        )
        return data


@dataclass(frozen=True, slots=True)
class DbStatus:
    mode: str
    writer: str | None
    epoch: int
    primary: str | None
    sites: list[SiteReport]

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "writer": self.writer,
            "epoch": self.epoch,
            "primary": self.primary,
            "sites": [s.to_json() for s in self.sites],
        }


class Admin:
    """An autocommit admin connection to one site's server."""

    def __init__(self, site: str, url: DatabaseUrl, where: str) -> None:
        self.site, self.url, self.where = site, url, where
        self._conn: Any = None

    async def __aenter__(self) -> Admin:
        self._conn = await connect(self.url, self.where, autocommit=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._conn is not None:
            self._conn.close()

    async def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        try:
            async with self._conn.cursor() as cursor:
                await cursor.execute(sql, params)
                names = [d[0] for d in cursor.description or ()]
                return [dict(zip(names, row, strict=True)) for row in await cursor.fetchall()]
        except (MySQLError, OSError) as exc:
            raise translate(exc, self.where, self.url) from exc

    async def run(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        await self.rows(sql, params)

    async def value(self, expression: str, params: tuple[Any, ...] = ()) -> Any:
        found = await self.rows(f"SELECT {expression} AS v", params)
        return found[0]["v"] if found else None

    async def state(self) -> ServerState:
        variables = await self.rows(
            "SELECT @@server_id AS server_id, @@read_only AS read_only, "
            "@@gtid_binlog_state AS binlog, @@gtid_current_pos AS current_pos"
        )
        v = variables[0]
        slave = await self.rows("SHOW SLAVE STATUS")
        fence = await self._fence()
        s = slave[0] if slave else {}
        return ServerState(
            self.site,
            True,
            server_id=int(v["server_id"]),
            read_only=bool(v["read_only"]),
            replica_of=f"{s['Master_Host']}:{s['Master_Port']}" if slave else None,
            io_running=str(s.get("Slave_IO_Running", "")),
            sql_running=str(s.get("Slave_SQL_Running", "")),
            seconds_behind=s.get("Seconds_Behind_Master"),
            gtid_binlog_state=str(v["binlog"] or ""),
            gtid_current_pos=str(v["current_pos"] or ""),
            gtid_io_pos=str(s.get("Gtid_IO_Pos", "")),
            fence_writer=fence[0] if fence else None,
            fence_epoch=fence[1] if fence else 0,
            last_error=str(s.get("Last_IO_Error") or s.get("Last_SQL_Error") or ""),
        )

    async def _fence(self) -> tuple[str, int] | None:
        try:
            found = await self.rows("SELECT writer, epoch FROM ma_db_fence WHERE id = 1")
        except DatabaseError:
            return None  # no fence table yet
        return (str(found[0]["writer"]), int(found[0]["epoch"])) if found else None


def admin_for(settings: DatabaseSettings, site: str) -> Admin:
    entry = settings.site(site)
    key = "admin_url" if entry.admin_url is not None else "url"
    return Admin(site, settings.admin_url(site), f"{settings.source}: {entry.where}.{key}")


async def server_state(settings: DatabaseSettings, site: str) -> ServerState:
    try:
        async with admin_for(settings, site) as admin:
            return await admin.state()
    except DatabaseError as exc:
        return ServerState(site, False, error=str(exc))


async def gather_states(settings: DatabaseSettings) -> dict[str, ServerState]:
    states = await asyncio.gather(*(server_state(settings, s) for s in settings.sites))
    return {s.site: s for s in states}


def find_primary(states: Mapping[str, ServerState]) -> str | None:
    """The reachable writable server that replicates from nobody."""
    for state in states.values():
        if state.reachable and not state.is_replica and not state.read_only:
            return state.site
    return None


async def db_status(settings: DatabaseSettings) -> DbStatus:
    states = await gather_states(settings)
    primary = find_primary(states)
    fence = max(
        ((s.fence_epoch, s.fence_writer) for s in states.values() if s.fence_writer),
        default=(0, settings.writer),
    )
    reports = []
    for state in states.values():
        lead = states[primary] if primary else None
        if not state.reachable:
            reports.append(SiteReport(state.site, "down", state, None))
            continue
        role = (
            "primary" if state.site == primary else "replica" if state.is_replica else "standalone"
        )
        lag = behind(lead.binlog, state.current) if lead and state.site != primary else 0
        wrong = errant(state.binlog, lead.binlog) if lead and state.site != primary else []
        reports.append(SiteReport(state.site, role, state, lag if lead else None, wrong))
    return DbStatus(settings.mode, fence[1], fence[0], primary, reports)
