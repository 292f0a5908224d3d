"""The read path: cache hits and misses through `multiactive.reads.Cache`, beside a plain
redis-py GET loop in the same run.

    .venv/bin/python benchmarks/read_path.py [--reads 20000] [--keys 10000] [--runs 3]
                                             [--concurrency 1] [--json FILE]

One redis-server is started here (`multiactive.local.redis`: appendonly yes, appendfsync
always), 1 KiB values, `--keys` keys written as message-driven entries (as the processor
writes them), read in a shuffled order, best of `--runs` per phase, phases alternating:

- **redis-py GET**: the baseline, `GET` of a plain string key holding the same value, one
  command per read (what an application reading a bare Redis cache does);
- **hits, Redis**: `Cache.get` on the site's Redis state (one HMGET: value, version, origin);
- **hits, SQLite**: `Cache.get` on the site's SQLite state file (the embedded setup);
- **misses with fills, Redis / SQLite**: `Cache.get_or_load` of keys not in the cache; the
  loader reads a row and its version from a SQLite database (`SqliteReader`) and the value is
  filled in atomically (`fill_wins`); a fill is one read + one Lua call (Redis) or one
  statement (SQLite).

`--concurrency N` runs N readers at once on one event loop (1: a loop of awaited reads, where
latency decides the rate). Latencies are per read, p50/p99 in microseconds. The goal
(ARCHITECTURE.md §11, issue 12): hits through the read API >= 80 % of the redis-py GET rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from multiactive.db.reader import DbReader, SqliteReader
from multiactive.local.redis import RedisServer
from multiactive.reads import Cache, Loaded
from multiactive.state import StateBackend
from multiactive.state.ops import Entry
from multiactive.state.redis import RedisState
from multiactive.state.sqlite import SqliteState

try:
    import uvloop
except ImportError:  # pragma: no cover - the [fast] extra
    uvloop = None

PARTITIONS = 8
VALUE = b"v" * 1024
VERSION = 1_700_000_000_000 << 16
GOAL = 0.80
Read = Callable[[str], Awaitable[Any]]


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def measure(read: Read, keys: list[str], concurrency: int) -> dict[str, float]:
    """Read every key once with `concurrency` readers; rate and per-read latency."""
    latencies: list[float] = []
    queue = iter(keys)

    async def reader() -> None:
        for key in queue:
            started = time.perf_counter()
            await read(key)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(reader() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "reads_per_s": len(keys) / elapsed,
        "p50_us": percentile(latencies, 0.50) * 1e6,
        "p99_us": percentile(latencies, 0.99) * 1e6,
    }


def make_database(path: Path, keys: list[str]) -> None:
    """The rows the loaders read: (k, v, version)."""
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE items (k TEXT PRIMARY KEY, v BLOB, version INTEGER)")
        conn.executemany("INSERT INTO items VALUES (?, ?, ?)", [(k, VALUE, VERSION) for k in keys])


async def load_item(key: str, db: DbReader) -> Loaded:
    row = await db.fetchone("SELECT v, version FROM items WHERE k = %s", (key,))
    return Loaded(None) if row is None else Loaded(row[0], row[1])


async def fill_state(state: StateBackend, keys: list[str]) -> None:
    for start in range(0, len(keys), 1000):
        chunk = keys[start : start + 1000]
        await state.put([Entry(k, VALUE, VERSION + i, "bj") for i, k in enumerate(chunk)])


class Bench:
    def __init__(self, args: argparse.Namespace, root: Path, redis_url: str) -> None:
        self.args, self.root, self.redis_url = args, root, redis_url
        self.keys = [f"item:{i}" for i in range(args.keys)]
        self.reads = [random.choice(self.keys) for _ in range(args.reads)]
        self.database = root / "items.sqlite"
        make_database(self.database, [f"miss:{i}" for i in range(args.reads * args.runs * 2)])
        self._misses = 0

    def miss_keys(self) -> list[str]:
        first = self._misses
        self._misses += self.args.reads
        return [f"miss:{i}" for i in range(first, self._misses)]

    async def redis_get(self) -> dict[str, float]:
        client = aioredis.Redis.from_url(self.redis_url)
        try:
            async with client.pipeline(transaction=False) as pipe:
                for key in self.keys:
                    pipe.set(f"plain:{key}", VALUE)
                await pipe.execute()
            reads = [f"plain:{k}" for k in self.reads]
            return await measure(client.get, reads, self.args.concurrency)
        finally:
            await client.aclose()

    async def cache_hits(self, state: StateBackend) -> dict[str, float]:
        async with Cache(state) as cache:
            await fill_state(cache.state, self.keys)
            return await measure(cache.get, self.reads, self.args.concurrency)

    async def cache_misses(self, state: StateBackend) -> dict[str, float]:
        reader = SqliteReader(self.database, "bench: the loaders' database")
        async with Cache(state, db=reader) as cache:

            async def miss(key: str) -> Any:
                found = await cache.get_or_load(key, load_item)
                assert found is not None
                assert found.filled
                return found

            return await measure(miss, self.miss_keys(), self.args.concurrency)

    def redis_state(self) -> RedisState:
        return RedisState("bench", self.redis_url, PARTITIONS)

    def sqlite_state(self, name: str) -> SqliteState:
        return SqliteState("bench", self.root / f"{name}.sqlite3")

    async def phases(self, run: int) -> dict[str, dict[str, float]]:
        return {
            "redis-py GET": await self.redis_get(),
            "hits, Redis": await self.cache_hits(self.redis_state()),
            "hits, SQLite": await self.cache_hits(self.sqlite_state(f"hits{run}")),
            "misses with fills, Redis": await self.cache_misses(self.redis_state()),
            "misses with fills, SQLite": await self.cache_misses(self.sqlite_state(f"miss{run}")),
        }


async def bench(args: argparse.Namespace, root: Path, redis_url: str) -> dict[str, Any]:
    runner = Bench(args, root, redis_url)
    best: dict[str, dict[str, float]] = {}
    for run in range(args.runs):
        for name, figures in (await runner.phases(run)).items():
            if name not in best or figures["reads_per_s"] > best[name]["reads_per_s"]:
                best[name] = figures
    baseline = best["redis-py GET"]["reads_per_s"]
    ratio = best["hits, Redis"]["reads_per_s"] / baseline
    return {
        "reads": args.reads, "keys": args.keys, "runs": args.runs,
        "concurrency": args.concurrency, "value_bytes": len(VALUE), "phases": best,
        "hits_redis_vs_redis_py": ratio, "goal": GOAL, "goal_met": ratio >= GOAL,
    }  # fmt: skip


def print_table(result: dict[str, Any]) -> None:
    print(f"{'phase':<28} {'reads/s':>10} {'p50 us':>8} {'p99 us':>8}")
    for name, f in result["phases"].items():
        print(f"{name:<28} {f['reads_per_s']:>10,.0f} {f['p50_us']:>8.0f} {f['p99_us']:>8.0f}")
    met = "met" if result["goal_met"] else "missed"
    ratio = result["hits_redis_vs_redis_py"]
    print(f"hits through the read API (Redis) / redis-py GET: {ratio:.2f} (goal >= {GOAL}: {met})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reads", type=int, default=20_000, help="reads per phase and run")
    parser.add_argument("--keys", type=int, default=10_000, help="keys in the cache")
    parser.add_argument("--runs", type=int, default=3, help="runs; the best of each phase")
    parser.add_argument("--concurrency", type=int, default=1, help="readers at once")
    parser.add_argument("--json", type=Path, help="also write the JSON result here")
    args = parser.parse_args()
    if uvloop is not None:
        uvloop.install()
    with tempfile.TemporaryDirectory(prefix="read-path-") as tmp, RedisServer(Path(tmp)) as server:
        result = asyncio.run(bench(args, Path(tmp), server.url))
    print_table(result)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
