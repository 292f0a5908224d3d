"""The kernel's share of a catch-up: CPU per MiB of the copies a receiver cannot avoid.

    .venv/bin/python benchmarks/receive_floor.py [--megabytes 800] [--folder DIR] [--json FILE]

A receiver reads every byte from a socket and appends it to a segment file, fdatasynced per
group commit, before it acknowledges (J3). Both copies run in the kernel and are charged to
the receiver's CPU. This measures them alone, with no Python work per byte: `pwrite` of 4 MiB
chunks into a file in `--folder` (the filesystem the journal lives on), with and without an
fdatasync per chunk, and `recv_into` of the same bytes over a loopback TCP connection from a
sender thread. The sum is the floor under `benchmarks/replication.py`'s "receiver CPU ms/MiB".
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

CHUNK = 4 * 1024 * 1024


def cpu_s() -> float:
    """CPU seconds (user + system) of this process so far, every thread included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def file_append(folder: Path, megabytes: int, sync: bool) -> dict[str, float]:
    data = os.urandom(CHUNK)
    path = folder / "floor.seg"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        started, cpu = time.perf_counter(), cpu_s()
        for index in range(megabytes * 1024 * 1024 // CHUNK):
            os.pwrite(fd, data, index * CHUNK)
            if sync:
                os.fdatasync(fd)
        return figures(megabytes, time.perf_counter() - started, cpu_s() - cpu)
    finally:
        os.close(fd)
        path.unlink()


def socket_receive(megabytes: int) -> dict[str, float]:
    """Receive CPU only: the sender thread's CPU is measured and taken off."""
    server = socket.create_server(("127.0.0.1", 0))
    total = megabytes * 1024 * 1024
    sender_cpu: list[float] = []

    def send() -> None:
        data = os.urandom(CHUNK)
        with socket.create_connection(server.getsockname()) as conn:
            begin = time.thread_time()
            for _ in range(total // CHUNK):
                conn.sendall(data)
            sender_cpu.append(time.thread_time() - begin)

    thread = threading.Thread(target=send)
    started, cpu = time.perf_counter(), cpu_s()
    thread.start()
    conn, _ = server.accept()
    buffer = memoryview(bytearray(CHUNK))
    received = 0
    with conn, server:
        while received < total:
            received += conn.recv_into(buffer)
    thread.join()
    return figures(megabytes, time.perf_counter() - started, cpu_s() - cpu - sender_cpu[0])


def figures(megabytes: int, seconds: float, cpu: float) -> dict[str, float]:
    return {
        "seconds": round(seconds, 2),
        "mib_per_s": round(megabytes / seconds, 1),
        "cpu_ms_per_mib": round(cpu * 1000 / megabytes, 2),
    }


def run(megabytes: int, folder: Path) -> dict[str, Any]:
    rows = {
        "pwrite, page cache only": file_append(folder, megabytes, sync=False),
        "pwrite + fdatasync per 4 MiB": file_append(folder, megabytes, sync=True),
        "socket recv_into (loopback)": socket_receive(megabytes),
    }
    floor = rows["pwrite + fdatasync per 4 MiB"]["cpu_ms_per_mib"]
    floor += rows["socket recv_into (loopback)"]["cpu_ms_per_mib"]
    return {
        "megabytes": megabytes,
        "folder": str(folder),
        "rows": rows,
        "receiver_floor_cpu_ms_per_mib": round(floor, 2),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=800, help="bytes moved per row")
    parser.add_argument("--folder", type=Path, default=None, help="where the file is written")
    parser.add_argument("--json", type=Path, help="also write the JSON report here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        report = run(args.megabytes, Path(tmp))
    print("| copy | seconds | MiB/s | CPU ms/MiB |")
    print("|---|---|---|---|")
    for name, row in report["rows"].items():
        print(f"| {name} | {row['seconds']} | {row['mib_per_s']} | {row['cpu_ms_per_mib']} |")
    print(f"\nreceiver floor (fdatasynced append + socket receive): "
          f"{report['receiver_floor_cpu_ms_per_mib']} ms/MiB")  # fmt: skip
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
