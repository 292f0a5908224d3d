"""Apply throughput into MariaDB at the writer: the DB apply against a raw `executemany`.

    .venv/bin/python benchmarks/db_apply.py [--messages 40000] [--runs 3] [--json FILE]

Both sides upsert the same rows (1 KiB bodies, 20 000 keys, a version column) into the same
mariadbd (started here by `multiactive.local.mariadb`: ROW binlog, GTID strict, sync_binlog=1,
InnoDB flush at every commit), through the processors' account, measured in the same run,
alternating, best of `--runs`:

- **ours**: `DbApply` in writer mode over a journal holding the messages: each round reads
  the journal, runs the DB handler of every message (`tx.upsert(..., version_column=...)`),
  and commits the writes with the DB watermark rows and the fence check in one transaction;
- **baseline**: asyncmy `executemany` of the same upsert statement over the same rows in the
  same order, one transaction per as many rows as one of our rounds commits; no watermark,
  no fence, no exactly-once.

The goal: ours >= 80 % of the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncmy

from multiactive.clock import SYSTEM_CLOCK
from multiactive.db.apply import ROUND_BYTES, DbApply
from multiactive.db.base import SCHEMA, upsert_sql
from multiactive.db.config import parse_database_url
from multiactive.db.handlers import DbDelivery
from multiactive.db.mariadb import MariaDatabase
from multiactive.journal import MemoryJournal
from multiactive.local.mariadb import MariaSet
from multiactive.model.batch import build_batch
from multiactive.model.partition import partition_for
from multiactive.model.topology import ReplicationSettings

SITE = "bj-unicom"
ORIGIN = "gz"
PARTITIONS = 8
KEYS = 20_000
BODY = b"b" * 1024
PER_BATCH = 500
GOAL = 0.80
TABLE = (
    "CREATE TABLE IF NOT EXISTS bench_rows (id VARCHAR(64) NOT NULL PRIMARY KEY, "
    "body BLOB NOT NULL, version BIGINT NOT NULL)"
)
COLUMNS = ("id", "body", "version")


def rows_of(messages: int) -> list[tuple[str, bytes, int]]:
    """The rows in the order the DB apply meets them: stream by stream (a key's partition is
    the hash ingress gives it), in seq order within a stream. Both sides write this order:
    B-tree locality makes it matter (in key order the same rows insert ~1.4x faster)."""
    rows = [(f"user:{n % KEYS}", BODY, 1_700_000_000_000 + n) for n in range(messages)]
    return sorted(rows, key=lambda r: partition_for(r[0], PARTITIONS))  # stable: seq order


async def journal_of(messages: int) -> MemoryJournal:
    journal = MemoryJournal(SITE)
    await journal.open()
    by_partition: dict[int, list[Any]] = {p: [] for p in range(PARTITIONS)}
    for n, (key, body, version) in enumerate(rows_of(messages)):
        row = (f"id-{n}", "bench.put", key, version, 0, {}, body)
        by_partition[partition_for(key, PARTITIONS)].append(row)
    for partition, rows in by_partition.items():
        for start in range(0, len(rows), PER_BATCH):
            chunk = rows[start : start + PER_BATCH]
            await journal.append_remote([build_batch(ORIGIN, partition, start + 1, chunk, 0)])
    return journal


async def put(delivery: DbDelivery) -> None:
    m = delivery.message
    await delivery.tx.upsert(
        "bench_rows", {"id": m.key, "body": m.payload, "version": m.version}, ["id"], "version"
    )


async def reset(url: str) -> None:
    conn = await connect(url)
    async with conn.cursor() as cursor:
        for statement in (*SCHEMA, TABLE, "DELETE FROM bench_rows", "DELETE FROM ma_db_watermarks"):
            await cursor.execute(statement)
    await conn.commit()
    conn.close()


async def connect(url: str) -> Any:
    u = parse_database_url(url, "url", Path())
    return await asyncmy.connect(
        host=u.host, port=u.port, user=u.user, password=u.password, database=u.database
    )


async def run_ours(url: str, messages: int) -> float:
    journal = await journal_of(messages)
    database = MariaDatabase(parse_database_url(url, "url", Path()), "bench")
    apply = DbApply(
        SITE, "writer", database, {"bench.put": put}.get, journal, ReplicationSettings(),
        SYSTEM_CLOCK, SITE,
    )  # fmt: skip
    await apply.load()
    await reset(url)
    started = time.perf_counter()
    while await apply.step():
        pass
    elapsed = time.perf_counter() - started
    assert apply.caught_up(), apply.last_error
    await apply.close()
    return elapsed


async def run_baseline(url: str, messages: int) -> float:
    await reset(url)
    rows = rows_of(messages)
    per_commit = ROUND_BYTES // (len(BODY) + 64)
    sql = upsert_sql("mysql", "bench_rows", COLUMNS, ("id",), "version")
    conn = await connect(url)
    started = time.perf_counter()
    for start in range(0, len(rows), per_commit):
        async with conn.cursor() as cursor:
            await cursor.executemany(sql, rows[start : start + per_commit])
        await conn.commit()
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


async def measure(url: str, messages: int, runs: int) -> dict[str, Any]:
    ours, baseline = [], []
    for _ in range(runs):
        baseline.append(await run_baseline(url, messages))
        ours.append(await run_ours(url, messages))
    result: dict[str, Any] = {"messages": messages, "row_bytes": len(BODY), "runs": runs}
    for name, times in (("ours", ours), ("baseline", baseline)):
        result[f"{name}_msgs_per_s"] = round(messages / min(times))
    result["ratio"] = round(result["ours_msgs_per_s"] / result["baseline_msgs_per_s"], 3)
    result["goal"] = GOAL
    return result


def report(result: dict[str, Any]) -> None:
    print(f"{'approach':<52} {'msg/s':>10}")
    for name, label in (
        ("ours", "ours: DbApply (handler upsert + watermark + fence)"),
        ("baseline", "baseline: asyncmy executemany of the same upsert"),
    ):
        print(f"{label:<52} {result[name + '_msgs_per_s']:>10,}")
    verdict = "meets" if result["ratio"] >= GOAL else "misses"
    print(f"ours / baseline = {result['ratio']:.2f} ({verdict} the goal of {GOAL:.2f})")
    print(json.dumps(result, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=40_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-db-") as tmp, MariaSet(Path(tmp), [SITE]) as dbs:
        result = asyncio.run(measure(dbs.processor_url(SITE), args.messages, args.runs))
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
