"""`multiactive demo --database mariadb`: three sites in writer mode on three real mariadbd
(bj-unicom primary, bj-telecom and gz GTID replicas), writes at every site all along, the
writer's mariadbd SIGKILLed a third of the way in and `db failover --to gz` run at once; at the
end the old primary is rejoined (rebuilt when it holds what it never shipped), and the report
gives each database's row count and CHECKSUM TABLE, which must all be equal, with every
acknowledged write there exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multiactive.db.config import database_settings
from multiactive.db.control import WriterRole
from multiactive.db.failover import failover, rejoin
from multiactive.db.rowlog import CREATE_TABLE, TABLE
from multiactive.errors import ClusterError
from multiactive.local.cluster import DEFAULT_SITES, LocalCluster
from multiactive.local.mariadb import DATABASE, MariaSet
from multiactive.local.rowload import rows, write_rows
from multiactive.model.topology import Topology, load_topology

WRITER, TARGET = "bj-unicom", "gz"
SETTLE_TIMEOUT_S = 60.0
Report = Callable[[str], None]
Announce = Callable[[Topology, WriterRole], None]


@dataclass
class DbDemoResult:
    acknowledged: int = 0
    failover_s: float = 0.0
    steps: list[str] = field(default_factory=list)
    databases: dict[str, dict[str, Any]] = field(default_factory=dict)  # rows, distinct, sum
    missing: int = 0
    primary: str = ""  # the server that is the primary at the end
    epoch: int = 0  # the writer epoch at the end (1 before any failover)
    writers: list[str] = field(default_factory=list)  # sites whose rows are in the table

    @property
    def failed_over(self) -> bool:
        """The writer moved to TARGET: its server is the primary, the epoch moved, and both
        the old and the new writer wrote rows."""
        return (self.primary == TARGET and self.epoch >= 2
                and {WRITER, TARGET} <= set(self.writers))  # fmt: skip

    @property
    def ok(self) -> bool:
        counts = {(d["rows"], d["distinct"], d["checksum"]) for d in self.databases.values()}
        first = next(iter(counts), (0, 0, ""))
        return (
            len(self.databases) == len(DEFAULT_SITES) and len(counts) == 1
            and first[0] == first[1] >= self.acknowledged > 0 and self.missing == 0
            and self.failed_over
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "acknowledged": self.acknowledged, "failover_s": round(self.failover_s, 3),
            "steps": self.steps, "databases": self.databases, "missing": self.missing,
            "primary": self.primary, "epoch": self.epoch, "writers": self.writers,
            "failed_over": self.failed_over, "ok": self.ok,
        }  # fmt: skip


def _wait(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {SETTLE_TIMEOUT_S} s waiting for {what}")
        time.sleep(0.05)


async def _scenario(
    cluster: LocalCluster, dbs: MariaSet, duration_s: float, rate: float, announce: Announce,
    report: Report, result: DbDemoResult,
) -> list[str]:  # fmt: skip
    topology = load_topology(cluster.topology_path)
    settings = database_settings(topology)
    acked: list[str] = []
    until = time.monotonic() + duration_s

    def done() -> bool:
        return time.monotonic() >= until

    writers = [
        asyncio.create_task(write_rows(cluster.client_address(s), s, rate / 3, done, acked))
        for s in DEFAULT_SITES
    ]
    await asyncio.sleep(duration_s / 3)
    report(f"killing {WRITER}'s mariadbd (SIGKILL) with {len(acked)} writes acknowledged")
    killed = time.monotonic()
    dbs.servers[WRITER].kill()

    async def tell(role: WriterRole) -> None:
        await asyncio.to_thread(announce, topology, role)

    moved = await failover(settings, TARGET, tell, report=report)
    result.failover_s = time.monotonic() - killed
    result.steps = [step for _, step in moved.steps]
    await asyncio.gather(*writers)
    return acked


def run_db_demo(root: Path, duration_s: float, rate: float, announce: Announce,
                report: Report, servers: MariaSet | None = None) -> DbDemoResult:  # fmt: skip
    """`servers`: a started primary and replicas to use (the tests' session servers), left
    running; by default three fresh ones under `root`, killed at the end."""
    result = DbDemoResult()
    given = None if servers is None else contextlib.nullcontext(servers)
    with given or MariaSet(root / "mariadb", DEFAULT_SITES) as dbs:
        dbs.servers[WRITER].sql(f"USE {DATABASE}; {CREATE_TABLE}")
        database = dbs.writer_database(WRITER)
        with LocalCluster(
            root / "cluster", DEFAULT_SITES, partitions=4, handlers=["multiactive.db.rowlog"],
            settings={"database": database},
        ) as cluster:  # fmt: skip
            report("starting 3 mariadbd and 3 sites in writer mode (writer: bj-unicom)")
            cluster.start()
            acked = asyncio.run(_scenario(cluster, dbs, duration_s, rate, announce, report, result))
            result.acknowledged = len(acked)
            new = dbs.servers[TARGET]
            _wait(lambda: rows(new)[0] >= len(acked), "every acknowledged write at gz")
            dbs.servers[WRITER].start()
            settings = database_settings(load_topology(cluster.topology_path))
            asyncio.run(rejoin(settings, WRITER, rebuild=True, report=report))
            dbs.wait_replicated()
            stored = {r[0] for r in new.sql(f"SELECT request_id FROM {DATABASE}.{TABLE}")}
            result.missing = len(set(acked) - stored)
            primary = dbs.primary()
            result.primary = next(n for n, s in dbs.servers.items() if s is primary)
            fence = primary.sql(f"SELECT epoch FROM {DATABASE}.ma_db_fence")
            result.epoch = int(fence[0][0]) if fence else 0
            writers = primary.sql(f"SELECT DISTINCT writer FROM {DATABASE}.{TABLE}")
            result.writers = sorted(str(r[0]) for r in writers)
            sums = dbs.checksums([TABLE])
            for name, server in dbs.servers.items():
                total, distinct = rows(server)
                result.databases[name] = {
                    "rows": total, "distinct": distinct,
                    "checksum": sums[name][f"{DATABASE}.{TABLE}"],
                }  # fmt: skip
    return result
