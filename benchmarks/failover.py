"""DB failover under load: an unplanned failover (SIGKILL of the writer's mariadbd), then a
planned switchover, three real sites in writer mode writing at every site all along.

    .venv/bin/python benchmarks/failover.py [--rate 1000] [--json FILE]

1. bj-unicom writes the DB; its replicas bj-telecom and gz lag (their IO threads stop) for a
   moment, so the primary commits transactions it never ships; then its mariadbd is killed.
2. `failover --to gz` promotes gz; gz's DB apply resumes from the DB watermark that
   replicated and applies the rest from its journal. `failover_s`: kill -> first DB write by
   gz (no detection: the command is run at once, as an operator or an automation would).
3. `switchover --to bj-telecom`: `switchover_pause_ms` is gz read_only -> first DB write by
   bj-telecom.
4. The load stops; every acknowledged write must be in the final primary exactly once:
   `lost` (acknowledged, missing) and `applied_twice` (rows beyond one per request id).
   `unshipped` counts the GTIDs the old primary committed and never shipped (from `rejoin`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from multiactive.cli.db import post_writer
from multiactive.client import Client
from multiactive.clock import SYSTEM_CLOCK
from multiactive.db.auto import Detector, watch
from multiactive.db.config import database_settings
from multiactive.db.control import WriterRole
from multiactive.db.failover import failover, rejoin, switchover
from multiactive.errors import ClusterError
from multiactive.local.cluster import LocalCluster
from multiactive.local.mariadb import REPL_PASSWORD, REPL_USER, MariaServer, MariaSet
from multiactive.model.topology import load_topology

sys.path.insert(0, str(Path(__file__).parent))
from db_bench_handlers import WRITES_TABLE

SITES = ("bj-unicom", "bj-telecom", "gz")
HERE = Path(__file__).parent


class Load:
    def __init__(self, cluster: LocalCluster, rate: int) -> None:
        self.cluster, self.rate = cluster, rate
        self.acked: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        await asyncio.gather(*(self._site(site) for site in SITES))

    async def _site(self, site: str) -> None:
        """`rate / sites` writes/s from this site, in ticks of 10 ms kept on schedule."""
        per_tick, credit, n = self.rate / len(SITES) / 100, 0.0, 0
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        async with Client(self.cluster.client_address(site)) as client:
            while not self.stop.is_set():
                credit += per_tick
                keys = [f"{site}-{n + i}" for i in range(int(credit))]
                credit -= len(keys)
                n += len(keys)
                acks = await asyncio.gather(*(client.publish("test.row", k, b"y") for k in keys))
                self.acked += [a.id for a in acks]
                next_at += 0.01
                await asyncio.sleep(max(0.0, next_at - loop.time()))


def rows(server: MariaServer) -> tuple[int, int]:
    found = server.sql("SELECT COUNT(*), COUNT(DISTINCT request_id) FROM app.writes")
    return int(found[0][0]), int(found[0][1])


def wait_for(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise ClusterError(f"timed out after {timeout_s} s waiting for {what}")


def first_write(server: MariaServer, writer: str, timeout_s: float = 60) -> float:
    query = f"SELECT COUNT(*) FROM app.writes WHERE writer = '{writer}'"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if int(server.sql(query)[0][0]) > 0:
                return time.monotonic()
        except ClusterError:
            pass
        time.sleep(0.005)
    raise ClusterError(f"no DB write by {writer} within {timeout_s} s")


def watch_first(server: MariaServer, writer: str) -> tuple[threading.Thread, list[float]]:
    found: list[float] = []
    thread = threading.Thread(target=lambda: found.append(first_write(server, writer)))
    thread.start()
    return thread, found


def first_write_thread(*servers: MariaServer) -> tuple[threading.Thread, list[float]]:
    """The first write by any of `servers`' own site (whichever becomes the writer)."""
    found: list[float] = []

    def poll() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not found:
            for server in servers:
                site = server.root.name
                query = f"SELECT COUNT(*) FROM app.writes WHERE writer = '{site}'"
                try:
                    if int(server.sql(query)[0][0]) > 0:
                        found.append(time.monotonic())
                        return
                except ClusterError:
                    pass
            time.sleep(0.005)

    thread = threading.Thread(target=poll)
    thread.start()
    return thread, found


def run(root: Path, rate: int, auto_detect_s: float | None) -> dict[str, Any]:
    with MariaSet(root / "mariadb", SITES) as dbs:
        dbs.servers["bj-unicom"].sql(WRITES_TABLE)
        database = {
            "mode": "writer", "writer": "bj-unicom",
            "replication_user": REPL_USER, "replication_password": REPL_PASSWORD,
            "sites": {s: {"url": dbs.processor_url(s), "admin_url": dbs.admin_url(s)}
                      for s in SITES},
        }  # fmt: skip
        with LocalCluster(
            root / "cluster", SITES, partitions=4, handlers=["db_bench_handlers"],
            settings={"database": database}, extra_pythonpath=[str(HERE)],
        ) as cluster:  # fmt: skip
            cluster.start()
            topology = load_topology(cluster.topology_path)
            settings = database_settings(topology)

            async def announce(role: WriterRole) -> None:
                await asyncio.to_thread(post_writer, topology, role)

            load = Load(cluster, rate)
            load.thread.start()
            old, gz, tel = (dbs.servers[s] for s in SITES)
            wait_for(lambda: rows(old)[0] > rate, 30, "writes flowing")
            for name in ("gz", "bj-telecom"):
                dbs.servers[name].sql("STOP SLAVE IO_THREAD")
            shipped = rows(gz)[0]
            wait_for(lambda: rows(old)[0] > shipped + rate // 5, 30, "unshipped commits")
            thread, seen = first_write_thread(gz, tel)
            killed = time.monotonic()
            old.kill()
            if auto_detect_s is None:
                unplanned = asyncio.run(failover(settings, "gz", announce))
            else:  # `db watch --auto`: holistic detection, then the most advanced replica
                detector = Detector(detect_s=auto_detect_s)
                found = asyncio.run(
                    watch(settings, announce, detector, SYSTEM_CLOCK, period_s=0.2, act=True,
                          stop_after_failover=True)
                )  # fmt: skip
                assert found is not None
                unplanned = found
                # The most advanced replica may be bj-telecom: the switchover then goes to gz.
            new_writer = unplanned.target
            thread.join()
            failover_s = seen[0] - killed
            time.sleep(1.0)  # load goes on at the new writer
            other = "bj-telecom" if new_writer == "gz" else "gz"
            final = dbs.servers[other]
            thread, seen = watch_first(final, other)
            planned = asyncio.run(switchover(settings, other, announce))
            thread.join()
            assert planned.read_only_at_s is not None
            pause_ms = (seen[0] - planned.read_only_at_s) * 1000
            time.sleep(1.0)
            load.stop.set()
            load.thread.join(30)
            acked = set(load.acked)
            wait_for(lambda: rows(final)[0] >= len(acked), 60, "every acknowledged write")
            total, distinct = rows(final)
            stored = {r[0] for r in final.sql("SELECT request_id FROM app.writes")}
            old.start()
            back = asyncio.run(rejoin(settings, "bj-unicom"))
    return {
        "rate_msgs_per_s": rate,
        "acknowledged": len(acked),
        "lost": len(acked - stored),
        "applied_twice": total - distinct,
        "unshipped_gtids_at_old_primary": back.errant_gtids,
        "failover_s": round(failover_s, 3),
        "failover_detection": "none" if auto_detect_s is None else f"db watch, {auto_detect_s} s",
        "failover_target": new_writer,
        "failover_steps": unplanned.to_json()["steps"],
        "switchover_pause_ms": round(pause_ms, 1),
        "switchover_steps": planned.to_json()["steps"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=int, default=1000, help="writes/s in all, at 3 sites")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    parser.add_argument(
        "--auto-detect-s", type=float, default=None,
        help="fail over by `db watch --auto` with this detection period instead of at once",
    )  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp:
        result = run(Path(tmp), args.rate, args.auto_detect_s)
    print(f"{'figure':<28} {'value':>10}  goal")
    for key, goal in (
        ("acknowledged", ""), ("lost", "0"), ("applied_twice", "0"),
        ("failover_s", "< 10 s (with detection)"), ("switchover_pause_ms", "< 1000"),
    ):  # fmt: skip
        print(f"{key:<28} {result[key]:>10}  {goal}")
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
