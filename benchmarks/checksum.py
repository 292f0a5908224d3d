"""CRC-32 throughput: the standard library's `zlib.crc32` against the one multiactive uses.

    .venv/bin/python benchmarks/checksum.py [--megabytes 256] [--json FILE]

Every frame and every batch carries a CRC-32, so a catch-up checksums each byte three times
(`docs/architecture.md`, "Checksums"). `multiactive.checksum.crc32` is zlib-ng's when the
`fast` extra is installed and the standard library's otherwise; this prints both, on a
message-sized string, a small frame and a catch-up frame, and checks they agree.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from multiactive import checksum

SIZES = (1024, 64 * 1024, 1024 * 1024)


def rate(function: Callable[[bytes], int], data: bytes, total_bytes: int) -> float:
    """Bytes per second over about `total_bytes`, best of three passes."""
    calls = max(1, total_bytes // len(data))
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(calls):
            function(data)
        best = min(best, time.perf_counter() - started)
    return calls * len(data) / best


def run(megabytes: int) -> dict[str, Any]:
    ours = checksum.crc32
    rows = []
    for size in SIZES:
        data = os.urandom(size)
        if ours(data) != zlib.crc32(data):
            raise SystemExit(f"multiactive.checksum.crc32 disagrees with zlib.crc32 on {size} B")
        stdlib = rate(zlib.crc32, data, megabytes << 20)
        used = rate(ours, data, megabytes << 20)
        rows.append(
            {
                "bytes": size,
                "zlib_gb_per_s": round(stdlib / 1e9, 2),
                "multiactive_gb_per_s": round(used / 1e9, 2),
                "speedup": round(used / stdlib, 1),
            }
        )
    return {"implementation": f"{ours.__module__}.crc32", "sizes": rows}


def table(result: dict[str, Any]) -> str:
    lines = [
        f"multiactive.checksum.crc32 is {result['implementation']}",
        f"{'string':>10}  {'zlib GB/s':>10}  {'ours GB/s':>10}  {'speed-up':>8}",
    ]
    for row in result["sizes"]:
        lines.append(
            f"{row['bytes']:>10,}  {row['zlib_gb_per_s']:>10}  "
            f"{row['multiactive_gb_per_s']:>10}  {row['speedup']:>7}x"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megabytes", type=int, default=256, help="bytes checksummed per pass")
    parser.add_argument("--json", type=Path, help="also write the JSON result here")
    args = parser.parse_args()
    result = run(args.megabytes)
    print(table(result))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
