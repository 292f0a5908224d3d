"""The receiving end of a link alone: CPU per MiB of a catch-up's frames, checked and stored.

    .venv/bin/python benchmarks/receive.py [--megabytes 800] [--runs 3] [--json FILE]

This process runs what a receiving site runs for one link, and nothing else: a listener
(`wire.connection.serve`, uvloop), the `Collector` with its `ReceiverSession` (frame and batch
checks, L1), and a SQLite journal with fdatasynced segments (J3), acknowledging each durable
group. A sender process streams pre-built BATCHES frames of about 1 MiB (one catch-up batch
of ~950 1 KiB messages each) over loopback TCP with up to `--window-mib` unacknowledged, as
a link's sender would, and reads the ACKs. Reported: MiB/s and this process's CPU (user +
system, every thread) per MiB received and stored; beside `benchmarks/receive_floor.py`
(the kernel's copies alone) it shows what the receiver's own code adds. No admin API, no
applier, no WAN emulator, no origin site: `benchmarks/replication.py`'s "receiver CPU per
MiB caught up" counts those too.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import json
import os
import platform
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from multiactive import aio
from multiactive.journal.sqlite import SqliteJournal
from multiactive.model.batch import build_batch
from multiactive.model.clock import HybridClock
from multiactive.model.message import Row
from multiactive.model.topology import Address, LinkConfig, ReplicationSettings
from multiactive.replication.collector import Collector
from multiactive.replication.links import LinkMonitor
from multiactive.wire.connection import FrameConnection, serve
from multiactive.wire.protocol import encode_batches

ROWS_PER_BATCH = 950
PAYLOAD = b"v" * 1024
MAX_FRAME_BYTES = 64 * 1024 * 1024


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def frames(megabytes: int) -> list[bytes]:
    """BATCHES frames of origin `a`, partition 0, seqs from 1, ~1 MiB each."""
    out, seq, size = [], 1, 0
    while size < megabytes << 20:
        rows: list[Row] = [
            (f"id{seq + n}", "kv.set", f"k{seq + n}", seq + n, 1_700_000_000_000, {}, PAYLOAD)
            for n in range(ROWS_PER_BATCH)
        ]
        frame = encode_batches([build_batch("a", 0, seq, rows, 1_700_000_000_000)])
        out.append(frame)
        seq += ROWS_PER_BATCH
        size += len(frame)
    return out


def send(port: int, megabytes: int, window_mib: int) -> None:
    """The sender process: frames out, up to `window_mib` unacknowledged; ACKs read for the
    head they name."""
    todo = frames(megabytes)
    ends = [ROWS_PER_BATCH * n for n in range(1, len(todo) + 1)]  # last seq of each frame
    sizes = list(itertools.accumulate(len(frame) for frame in todo))  # bytes through each
    sock = socket.create_connection(("127.0.0.1", port))
    sent = acked = 0  # frames sent, frames acknowledged
    buffer = b""
    while acked < len(todo):
        while sent < len(todo) and sizes[sent] - (sizes[acked - 1] if acked else 0) <= (
            window_mib << 20
        ):
            sock.sendall(todo[sent])
            sent += 1
        buffer += sock.recv(1 << 16)
        while len(buffer) >= 9 and len(buffer) >= 9 + int.from_bytes(buffer[:4], "big"):
            length = int.from_bytes(buffer[:4], "big")
            head = _ack_head(buffer[9 : 9 + length])
            buffer = buffer[9 + length :]
            acked = bisect.bisect_right(ends, head)
    sock.close()


def _ack_head(body: bytes) -> int:
    import msgpack

    decoded = msgpack.unpackb(body, strict_map_key=False)
    heads = decoded.get("heads", {}) if isinstance(decoded, dict) else {}
    return int(heads.get(0, 0))


async def receive(folder: Path, megabytes: int, window_mib: int) -> dict[str, float]:
    journal = SqliteJournal("b", folder / "journal.sqlite3")
    journal.cache_remote = False  # as a site whose processor runs in its applier process
    await journal.open()
    connected: asyncio.Future[FrameConnection] = asyncio.get_running_loop().create_future()
    server = await serve(Address("127.0.0.1", 0), MAX_FRAME_BYTES, connected.set_result)
    port = server.sockets[0].getsockname()[1]
    sender = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--send", str(port), "--megabytes", str(megabytes),
        "--window-mib", str(window_mib),
    )  # fmt: skip
    conn = await connected
    monitor = LinkMonitor(LinkConfig("a", "b", "push"), "receiver")
    collector = Collector(journal, conn, monitor, HybridClock(), ReplicationSettings())
    started, cpu = time.perf_counter(), cpu_s()
    task = asyncio.ensure_future(collector.run())
    await sender.wait()
    seconds, used = time.perf_counter() - started, cpu_s() - cpu
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await conn.close()
    server.close()
    received = sum(journal.heads().values())
    await journal.close()
    mib = conn.bytes_in / (1 << 20)
    return {
        "mib": round(mib, 1),
        "messages": received,
        "mib_per_s": round(mib / seconds, 1),
        "cpu_ms_per_mib": round(used * 1000 / mib, 3),
    }


def run(megabytes: int, runs: int, window_mib: int) -> dict[str, Any]:
    results = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="multiactive-receive-") as tmp:
            results.append(aio.run(receive(Path(tmp), megabytes, window_mib)))
    return {
        "runs": results,
        "window_mib": window_mib,
        "machine": f"{platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}, {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megabytes", type=int, default=800)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--window-mib", type=int, default=32, help="unacknowledged, at most")
    parser.add_argument("--json", type=Path, help="also write the JSON result here")
    parser.add_argument("--send", type=int, help=argparse.SUPPRESS)  # the sender process
    args = parser.parse_args()
    if args.send:
        send(args.send, args.megabytes, args.window_mib)
        return
    result = run(args.megabytes, args.runs, args.window_mib)
    for n, r in enumerate(result["runs"], start=1):
        print(f"run {n}: {r['mib']} MiB, {r['mib_per_s']} MiB/s, {r['cpu_ms_per_mib']} ms/MiB")
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
