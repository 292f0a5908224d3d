"""Apply alone: the processor draining a receiver's journal into its state, as its applier does.

    .venv/bin/python benchmarks/apply.py [--messages 400000] [--runs 3] [--json FILE]

A SQLite journal (segments fdatasynced, as at a receiver) is filled with `--messages` remote
`kv.set` messages of 1 KiB from origin `a` over 8 partitions, in batches of about 900 (a
catch-up's ~1 MiB batches), each key distinct; then, in this process, a `Processor` over a
read-only view of that journal (`open_for_reading`, as the applier process opens it) and a
fresh SQLite state on its event loop (`inline`, as the applier runs it) applies them all.
Reported per run: messages applied per second of wall clock and the CPU microseconds per
message of this process (user + system), split into the processor's own work (journal reads,
body decoding, op building) and the state commits (`SqliteState.commit`; its wall time too,
since a WAL checkpoint's fsyncs are waited for inside a commit). No link, no site, no other
process: the figure the catch-up's "including apply" phase is bounded by.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from multiactive.cli.site import GC_THRESHOLDS
from multiactive.journal.sqlite import SqliteJournal
from multiactive.model.batch import build_batch, parse_batch
from multiactive.model.message import Row
from multiactive.model.partition import partition_for
from multiactive.model.topology import ReplicationSettings
from multiactive.replication.handlers import HandlerRegistry
from multiactive.replication.processor import Processor
from multiactive.state.sqlite import SqliteState

PARTITIONS = 8
PAYLOAD = b"v" * 1024
ROWS_PER_BATCH = 900
ORIGIN = "a"
BASE_VERSION = 1_700_000_000_000 << 16


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def fill(path: Path, messages: int) -> None:
    """The receiver's journal: `messages` kv.set rows of ORIGIN, as received batches."""
    rows: dict[int, list[Row]] = {p: [] for p in range(PARTITIONS)}
    for n in range(messages):
        key = f"key{n}"
        row: Row = (f"id{n}", "kv.set", key, BASE_VERSION + n, 1_700_000_000_000, {}, PAYLOAD)
        rows[partition_for(key, PARTITIONS)].append(row)
    journal = SqliteJournal("b", path)
    await journal.open()
    try:
        for partition, stream in rows.items():
            for start in range(0, len(stream), ROWS_PER_BATCH):
                chunk = stream[start : start + ROWS_PER_BATCH]
                built = build_batch(ORIGIN, partition, start + 1, chunk, 1_700_000_000_000)
                await journal.append_remote([parse_batch(bytes(built.data))])
    finally:
        await journal.close()


class CommitClock:
    """Wraps a state's commit to count the CPU spent in it."""

    def __init__(self, state: SqliteState) -> None:
        self.cpu_s = 0.0
        self.wall_s = 0.0
        self.commits = 0
        self._commit = state.commit
        state.commit = self.commit  # type: ignore[method-assign]

    async def commit(self, *steps: Any) -> None:
        started, wall = cpu_s(), time.perf_counter()
        try:
            await self._commit(*steps)
        finally:
            self.cpu_s += cpu_s() - started
            self.wall_s += time.perf_counter() - wall
            self.commits += 1


async def apply_all(path: Path, state_path: Path, messages: int) -> dict[str, float]:
    journal = SqliteJournal("b", path)
    await journal.open_for_reading()
    state = SqliteState("b", state_path, inline=True, checkpoint_thread=True)
    await state.open()
    clock = CommitClock(state)
    processor = Processor("b", journal, state, HandlerRegistry(), ReplicationSettings())
    await processor.load()
    started, cpu = time.perf_counter(), cpu_s()
    try:
        while await processor.step():
            pass
        seconds, cpu_used = time.perf_counter() - started, cpu_s() - cpu
    finally:
        await state.close()
        await journal.close()
    applied = processor.totals()[0]
    if applied != messages:
        raise SystemExit(f"applied {applied} of {messages} messages")
    return {
        "msgs_per_s": round(messages / seconds),
        "cpu_us_per_msg": round(cpu_used * 1e6 / messages, 2),
        "commit_cpu_us_per_msg": round(clock.cpu_s * 1e6 / messages, 2),
        "processor_cpu_us_per_msg": round((cpu_used - clock.cpu_s) * 1e6 / messages, 2),
        "commit_wall_us_per_msg": round(clock.wall_s * 1e6 / messages, 2),
        "commits": clock.commits,
    }


def run(messages: int, runs: int) -> dict[str, Any]:
    results = []
    with tempfile.TemporaryDirectory(prefix="multiactive-apply-") as tmp:
        journal = Path(tmp) / "journal.sqlite3"
        asyncio.run(fill(journal, messages))
        for n in range(runs):
            state = Path(tmp) / f"state-{n}.sqlite3"
            results.append(asyncio.run(apply_all(journal, state, messages)))
    return {
        "messages": messages,
        "payload_bytes": len(PAYLOAD),
        "runs": results,
        "machine": f"{platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def table(result: dict[str, Any]) -> str:
    lines = ["run  msg/s      CPU us/msg  processor  state commit  commit wall  commits"]
    for n, r in enumerate(result["runs"], start=1):
        lines.append(
            f"{n:<4} {r['msgs_per_s']:<10,} {r['cpu_us_per_msg']:<11} "
            f"{r['processor_cpu_us_per_msg']:<10} {r['commit_cpu_us_per_msg']:<13} "
            f"{r['commit_wall_us_per_msg']:<12} {r['commits']}"
        )
    return "\n".join(lines)


def main() -> None:
    gc.freeze()  # as the applier process does (`multiactive site apply`)
    gc.set_threshold(*GC_THRESHOLDS)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=400_000)
    parser.add_argument("--runs", type=int, default=3, help="fresh states applied in turn")
    parser.add_argument("--json", type=Path, help="also write the JSON result here")
    args = parser.parse_args()
    result = run(args.messages, args.runs)
    print(table(result))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
