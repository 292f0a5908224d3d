"""Apply throughput into Redis at a receiver: `RedisState.commit` against a hand-written baseline.

    .venv/bin/python benchmarks/apply_redis.py [--messages 200000] [--step 1000] [--runs 3]
                                              [--url redis://host:port/0] [--json FILE]

Both sides write the same `kv.set` messages (1 KiB values, 50 000 keys, versions that always
win) into the same redis-server, measured in the same run, alternating, best of `--runs`:

- **ours**: what the processor does at a receiver, `RedisState.commit` of steps of `--step`
  operations of one stream: one Lua call per step applies them all under last-writer-wins and
  moves the stream's watermark, atomically (P3).
- **baseline**: the obvious hand-written approach, a redis-py pipeline of one EVALSHA of a
  minimal LWW script per key, `--step` calls per pipeline; no watermark, so no exactly-once.

The server is started here (`multiactive.local.redis`: appendonly yes, appendfsync always)
unless `--url` names one; its database is flushed between phases. The goal: ours >= 80 % of
the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from multiactive.local.redis import RedisServer
from multiactive.model.message import StreamId
from multiactive.model.partition import partition_for
from multiactive.state.base import Commit, OpTuple
from multiactive.state.redis import RedisState

PARTITIONS = 8
KEYS = 50_000
PAYLOAD = b"v" * 1024
ORIGIN = "a"
BASE_VERSION = 1_700_000_000_000 << 16
GOAL = 0.80

BASELINE_LWW = """
local held = redis.call('HMGET', KEYS[1], 'version', 'origin')
if held[1] and tonumber(held[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'origin', ARGV[2], 'value', ARGV[3])
return 1
"""


def steps_of(messages: int, step: int) -> list[Commit]:
    """`messages` kv.set operations in steps of one stream per partition, keys placed in
    their partition as ingress places them."""
    by_partition: dict[int, list[OpTuple]] = {p: [] for p in range(PARTITIONS)}
    for n in range(messages):
        key = f"user:{n % KEYS}"
        op = ("kv.set", key, BASE_VERSION + n, ORIGIN, PAYLOAD)
        by_partition[partition_for(key, PARTITIONS)].append(op)
    steps = []
    for partition, ops in by_partition.items():
        for through, start in enumerate(range(0, len(ops), step), start=1):
            chunk = ops[start : start + step]
            steps.append(Commit(StreamId(ORIGIN, partition), through, len(chunk), chunk))
    return steps


async def run_ours(url: str, steps: list[Commit]) -> float:
    state = RedisState("b", url, PARTITIONS)
    await state.open()
    try:
        started = time.perf_counter()
        for step in steps:
            await state.commit(step)
        return time.perf_counter() - started
    finally:
        await state.close()


async def run_baseline(url: str, steps: list[Commit]) -> float:
    client = aioredis.Redis.from_url(url)
    try:
        sha = await client.script_load(BASELINE_LWW)
        started = time.perf_counter()
        for step in steps:
            pipe = client.pipeline(transaction=False)
            for _, key, version, origin, payload in step.builtin:
                pipe.evalsha(sha, 1, f"base:{key}", version, origin, payload)
            await pipe.execute()
        return time.perf_counter() - started
    finally:
        await client.aclose()


async def flush(url: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


Runner = Callable[[str, list[Commit]], Coroutine[Any, Any, float]]


async def measure(url: str, messages: int, step: int, runs: int) -> dict[str, Any]:
    steps = steps_of(messages, step)
    best: dict[str, float] = {}
    runners: dict[str, Runner] = {"ours": run_ours, "baseline": run_baseline}
    for _ in range(runs):
        for name, runner in runners.items():
            await flush(url)
            seconds = await runner(url, steps)
            best[name] = min(best.get(name, seconds), seconds)
    rates = {name: messages / seconds for name, seconds in best.items()}
    return {
        "messages": messages,
        "step_ops": step,
        "payload_bytes": len(PAYLOAD),
        "keys": KEYS,
        "runs": runs,
        "ours_msgs_per_s": round(rates["ours"]),
        "baseline_msgs_per_s": round(rates["baseline"]),
        "ours_mib_per_s": round(rates["ours"] * len(PAYLOAD) / 2**20, 1),
        "baseline_mib_per_s": round(rates["baseline"] * len(PAYLOAD) / 2**20, 1),
        "ratio": round(rates["ours"] / rates["baseline"], 3),
        "goal_ratio": GOAL,
    }


def report(result: dict[str, Any]) -> None:
    rows = [
        (f"ours: RedisState.commit, {result['step_ops']}-op steps", "ours"),
        ("baseline: EVALSHA pipeline, one per key", "baseline"),
    ]
    print(f"{'approach':<44} {'msg/s':>10} {'MiB/s':>8}")
    for label, name in rows:
        print(f"{label:<44} {result[name + '_msgs_per_s']:>10,} {result[name + '_mib_per_s']:>8}")
    verdict = "meets" if result["ratio"] >= GOAL else "misses"
    print(f"ours / baseline = {result['ratio']:.2f} ({verdict} the goal of {GOAL:.2f})")
    print(json.dumps(result, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--step", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--url", default=None, help="use this Redis instead of starting one")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    if args.url:
        result = asyncio.run(measure(args.url, args.messages, args.step, args.runs))
    else:
        with (
            tempfile.TemporaryDirectory(prefix="apply-redis-") as tmp,
            RedisServer(Path(tmp)) as server,
        ):
            result = asyncio.run(measure(server.url, args.messages, args.step, args.runs))
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
