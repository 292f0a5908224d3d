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
import tempfile
import time
from pathlib import Path
from typing import Any

from multiactive.cli.db import post_writer
from multiactive.clock import SYSTEM_CLOCK
from multiactive.db.auto import Detector, watch
from multiactive.db.config import database_settings
from multiactive.db.control import WriterRole
from multiactive.db.failover import failover, rejoin, switchover
from multiactive.db.rowlog import CREATE_TABLE
from multiactive.errors import ClusterError
from multiactive.local.cluster import LocalCluster
from multiactive.local.mariadb import REPL_PASSWORD, REPL_USER, MariaSet
from multiactive.local.rowload import FirstWrite, RowLoad, row_ids, rows
from multiactive.model.topology import load_topology

SITES = ("bj-unicom", "bj-telecom", "gz")


def wait_for(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise ClusterError(f"timed out after {timeout_s} s waiting for {what}")


def run(root: Path, rate: int, auto_detect_s: float | None) -> dict[str, Any]:
    with MariaSet(root / "mariadb", SITES) as dbs:
        dbs.servers["bj-unicom"].sql(f"USE app; {CREATE_TABLE}")
        database = {
            "mode": "writer", "writer": "bj-unicom",
            "replication_user": REPL_USER, "replication_password": REPL_PASSWORD,
            "sites": {s: {"url": dbs.processor_url(s), "admin_url": dbs.admin_url(s)}
                      for s in SITES},
        }  # fmt: skip
        with LocalCluster(
            root / "cluster", SITES, partitions=4, handlers=["multiactive.db.rowlog"],
            settings={"database": database},
        ) as cluster:  # fmt: skip
            cluster.start()
            topology = load_topology(cluster.topology_path)
            settings = database_settings(topology)

            async def announce(role: WriterRole) -> None:
                await asyncio.to_thread(post_writer, topology, role)

            load = RowLoad(cluster, SITES, rate)
            load.start()
            old, gz, tel = (dbs.servers[s] for s in SITES)
            wait_for(lambda: rows(old)[0] > rate, 30, "writes flowing")
            for name in ("gz", "bj-telecom"):
                dbs.servers[name].sql("STOP SLAVE IO_THREAD")
            shipped = rows(gz)[0]
            wait_for(lambda: rows(old)[0] > shipped + rate // 5, 30, "unshipped commits")
            first = FirstWrite(gz, tel)
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
            failover_s = first.wait() - killed
            time.sleep(1.0)  # load goes on at the new writer
            other = "bj-telecom" if new_writer == "gz" else "gz"
            final = dbs.servers[other]
            first = FirstWrite(final, writer=other)
            planned = asyncio.run(switchover(settings, other, announce))
            assert planned.read_only_at_s is not None
            pause_ms = (first.wait() - planned.read_only_at_s) * 1000
            time.sleep(1.0)
            load.stop()
            acked = set(load.acked)
            wait_for(lambda: rows(final)[0] >= len(acked), 60, "every acknowledged write")
            total, distinct = rows(final)
            stored = row_ids(final)
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
