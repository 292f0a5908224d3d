"""Reconciler cost: one reconcile run per site with 10 million journaled messages in all.

    .venv/bin/python benchmarks/reconcile.py [--messages 10000000] [--runs 5] [--json FILE]

Three sites (a, b, c), 8 partitions; each site's SQLite journal holds every origin's streams
(its own written through `append_local`, the others' through `append_remote`, batches of
1 000 messages) and its SQLite state has applied everything. A reconcile run compares heads
and watermarks per stream and checks each stream for holes with one indexed aggregate: it
never reads messages, so its cost follows the number of streams, not of messages.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from multiactive.journal.base import LocalGroup
from multiactive.model.batch import build_batch, encode_body
from multiactive.model.message import StreamId
from multiactive.model.topology import parse_topology
from multiactive.site.node import SiteNode
from multiactive.state.base import Commit

SITES = ("a", "b", "c")
PARTITIONS = 8
BATCH = 1000


def topology(root: Path) -> Any:
    raw = {
        "cluster": {"name": "bench", "partitions": PARTITIONS},
        "sites": [
            {
                "name": s,
                "listen": f"127.0.0.1:{17000 + i}",
                "admin": f"127.0.0.1:{18000 + i}",
                "data_dir": str(root / s),
            }
            for i, s in enumerate(SITES)
        ],
    }
    return parse_topology(raw, source="bench")


async def fill(node: SiteNode, per_stream: int) -> int:
    """Journal `per_stream` messages in every stream of every origin; mark them applied."""
    rows = [(f"id-{i}", "kv.set", f"k{i}", 1 << 20, 1, {}, b"x" * 16) for i in range(BATCH)]
    body = encode_body(rows)
    total = 0
    for origin in SITES:
        for partition in range(PARTITIONS):
            for first in range(1, per_stream + 1, BATCH):
                if origin == node.name:
                    unique = [
                        (f"{origin}{partition}-{first + i}", *r[1:]) for i, r in enumerate(rows)
                    ]
                    await node.journal.append_local([LocalGroup(partition, unique, 1)])
                else:
                    batch = build_batch(origin, partition, first, rows, 1, body=body)
                    await node.journal.append_remote([batch])
                total += BATCH
            stream = StreamId(origin, partition)
            head = node.journal.head(stream)
            await node.state.commit(Commit(stream, head, head))
    return total


async def measure(root: Path, messages: int, runs: int) -> dict[str, Any]:
    topo = topology(root)
    per_stream = max(BATCH, messages // (len(SITES) ** 2 * PARTITIONS) // BATCH * BATCH)
    nodes = [SiteNode(topo, site) for site in SITES]
    journaled = 0
    durations: dict[str, list[float]] = {}
    for node in nodes:
        await node.journal.open()
        await node.state.open()
        journaled += await fill(node, per_stream)
        await node.processor.load()
    for node in nodes:
        reports = [await node.reconciler.reconcile() for _ in range(runs)]
        assert all(r.holes_found == 0 and not r.behind for r in reports)
        durations[node.name] = [r.duration_ms for r in reports]
    for node in nodes:
        await node.state.close()
        await node.journal.close()
    return {
        "journaled_messages": journaled,
        "streams_per_site": len(SITES) * PARTITIONS,
        "runs": runs,
        "reconcile_ms_median": {s: round(statistics.median(d), 2) for s, d in durations.items()},
        "reconcile_ms_max": {s: round(max(d), 2) for s, d in durations.items()},
        "date": time.strftime("%Y-%m-%d"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="multiactive-reconcile-") as tmp:
        result = asyncio.run(measure(Path(tmp), args.messages, args.runs))
    print(f"{'site':<6} {'median ms':>10} {'max ms':>10}")
    for site in SITES:
        median, worst = result["reconcile_ms_median"][site], result["reconcile_ms_max"][site]
        print(f"{site:<6} {median:>10} {worst:>10}")
    print(f"journaled messages in all: {result['journaled_messages']:,}")
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
