"""SQLite journal and state micro-benchmark: the hot paths of one process, without links.

    .venv/bin/python benchmarks/journal.py [--appends 2000] [--megabytes 64] [--json FILE]

In one process, on files in a temporary folder (fsync on, as a site runs; `--no-fsync` leaves
the disk out, to compare the code's own cost):

1. small local appends one at a time (one 1 KiB message each): the inline path, which runs on
   the event loop while the writer thread is idle (median microseconds, and CPU microseconds
   of the process per append: what a loaded machine disturbs least);
2. small local appends from 8 tasks at once: most go through the writer thread (appends/s);
3. remote appends of 1 000-message batches of 1 KiB (a receiver's catch-up; MiB/s);
4. reads of that stream back, 4 MiB at a time, after a reopen (from the index and the
   segments, not the tail cache; MiB/s);
5. one-message state commits, on the state's thread and inline as the applier runs it
   (median microseconds, CPU microseconds per commit).

Each figure is the best of three passes (a shared machine only slows runs down). Prints a
table and a JSON document (also written to --json FILE when given).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from multiactive.journal import SqliteJournal
from multiactive.journal.base import LocalGroup
from multiactive.model.batch import RecordBatch, build_batch
from multiactive.model.message import StreamId
from multiactive.state import Commit, Op, SqliteState

PAYLOAD = b"x" * 1024
BATCH = 1000
READ_BYTES = 4 << 20
TASKS = 8
PASSES = 3


def local_group(n: int) -> LocalGroup:
    return LocalGroup(0, [(f"id-{n}", "kv.set", f"key{n}", n + 1, 1000, {}, PAYLOAD)], 1000)


async def timed_each(
    count: int, step: Callable[[int], Awaitable[object]]
) -> tuple[list[float], float]:
    """Microseconds of each of `count` awaited steps, and the process's CPU microseconds per
    step (every thread's: a loaded machine stretches the first, hardly the second)."""
    took = []
    cpu = time.process_time()
    for n in range(count):
        started = time.perf_counter()
        await step(n)
        took.append((time.perf_counter() - started) * 1e6)
    return took, (time.process_time() - cpu) * 1e6 / count


async def small_appends(folder: Path, count: int, fsync: bool) -> tuple[float, float]:
    journal = SqliteJournal("a", folder / "journal.sqlite3", fsync=fsync)
    await journal.open()
    try:
        took, cpu = await timed_each(count, lambda n: journal.append_local([local_group(n)]))
    finally:
        await journal.close()
    return statistics.median(took), cpu


async def concurrent_appends(folder: Path, count: int, fsync: bool) -> float:
    journal = SqliteJournal("a", folder / "journal.sqlite3", fsync=fsync)
    await journal.open()
    numbers = iter(range(count))

    async def task() -> None:
        for n in numbers:
            await journal.append_local([local_group(n)])

    try:
        started = time.perf_counter()
        await asyncio.gather(*(task() for _ in range(TASKS)))
        return count / (time.perf_counter() - started)
    finally:
        await journal.close()


def remote_batches(megabytes: int) -> list[RecordBatch]:
    rows = [(f"r-{i}", "kv.set", f"key{i}", i + 1, 1000, {}, PAYLOAD) for i in range(BATCH)]
    count = max(1, (megabytes << 20) // (BATCH * len(PAYLOAD)))
    return [build_batch("b", 0, 1 + i * BATCH, rows, created_ms=1000) for i in range(count)]


async def remote_and_reads(
    folder: Path, batches: list[RecordBatch], fsync: bool
) -> tuple[float, float]:
    journal = SqliteJournal("a", folder / "journal.sqlite3", fsync=fsync)
    await journal.open()
    total = sum(b.size for b in batches) / (1 << 20)
    try:
        started = time.perf_counter()
        for start in range(0, len(batches), 4):  # about 4 MiB an append, as a collector does
            await journal.append_remote(batches[start : start + 4])
        appended = total / (time.perf_counter() - started)
    finally:
        await journal.close()
    journal = SqliteJournal("a", folder / "journal.sqlite3", fsync=fsync)
    await journal.open()  # its tail cache empty: reads come from the index and the segments
    try:
        stream, seq = StreamId("b", 0), 1
        started = time.perf_counter()
        while seq <= journal.head(stream):
            read = await journal.read(stream, seq, READ_BYTES)
            seq = read[-1].last_seq + 1
        return appended, total / (time.perf_counter() - started)
    finally:
        await journal.close()


async def state_commits(folder: Path, count: int, inline: bool) -> tuple[float, float]:
    state = SqliteState("a", folder / "state.sqlite3", inline=inline)
    await state.open()
    stream = StreamId("b", 0)

    def commit(n: int) -> Awaitable[None]:
        op = Op("kv.set", f"key{n}", n + 1, "b", PAYLOAD)
        return state.commit(Commit(stream, n + 1, 1, builtin=[op]))

    try:
        took, cpu = await timed_each(count, commit)
        return statistics.median(took), cpu
    finally:
        await state.close()


async def one_pass(
    folder: Path, appends: int, batches: list[RecordBatch], fsync: bool
) -> dict[str, float]:
    dirs = [folder / name for name in ("small", "many", "remote", "state", "inline")]
    for path in dirs:
        path.mkdir()
    median, cpu = await small_appends(dirs[0], appends, fsync)
    many = await concurrent_appends(dirs[1], appends, fsync)
    appended, read = await remote_and_reads(dirs[2], batches, fsync)
    thread = await state_commits(dirs[3], appends, inline=False)
    inline = await state_commits(dirs[4], appends, inline=True)
    return {
        "small_append_p50_us": median,
        "small_append_cpu_us": cpu,
        "concurrent_small_appends_per_s": many,
        "remote_append_mib_per_s": appended,
        "read_mib_per_s": read,
        "state_commit_thread_p50_us": thread[0],
        "state_commit_thread_cpu_us": thread[1],
        "state_commit_inline_p50_us": inline[0],
        "state_commit_inline_cpu_us": inline[1],
    }


LOWER_IS_BETTER = ("_us",)


def best(passes: list[dict[str, float]]) -> dict[str, float]:
    out = {}
    for name in passes[0]:
        values = [p[name] for p in passes]
        out[name] = min(values) if name.endswith(LOWER_IS_BETTER) else max(values)
    return out


def run(appends: int, megabytes: int, fsync: bool) -> dict[str, Any]:
    batches = remote_batches(megabytes)
    passes = []
    for _ in range(PASSES):
        with tempfile.TemporaryDirectory(prefix="multiactive-journal-bench-") as tmp:
            passes.append(asyncio.run(one_pass(Path(tmp), appends, batches, fsync)))
    figures = {name: round(value, 1) for name, value in best(passes).items()}
    return {
        "appends": appends,
        "megabytes": megabytes,
        "fsync": fsync,
        **figures,
        "machine": f"{platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
    }


def _us(result: dict[str, Any], name: str) -> str:
    return f"p50 {result[name + '_p50_us']:.0f} us, CPU {result[name + '_cpu_us']:.0f} us"


def table(result: dict[str, Any]) -> str:
    r = result
    rows = [
        ("small local append, one at a time",
         f"p50 {r['small_append_p50_us']:.0f} us, CPU {r['small_append_cpu_us']:.0f} us"),
        (f"small local appends, {TASKS} tasks", f"{r['concurrent_small_appends_per_s']:,.0f}/s"),
        ("remote appends, 1 000 x 1 KiB batches", f"{r['remote_append_mib_per_s']:.0f} MiB/s"),
        ("reads, 4 MiB at a time", f"{r['read_mib_per_s']:.0f} MiB/s"),
        ("state commit of one message, thread", _us(r, "state_commit_thread")),
        ("state commit of one message, inline", _us(r, "state_commit_inline")),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    lines = [f"{'figure':<{width}}  value", f"{'-' * width}  {'-' * 30}"]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--appends", type=int, default=2000, help="small appends and commits")
    parser.add_argument("--megabytes", type=int, default=64, help="remote bytes to append")
    parser.add_argument("--json", type=Path, help="also write the JSON result here")
    parser.add_argument(
        "--no-fsync", action="store_true", help="journal without fdatasync (the code's cost alone)"
    )
    args = parser.parse_args()
    result = run(args.appends, args.megabytes, not args.no_fsync)
    print(table(result))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
