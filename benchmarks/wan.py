"""WAN emulator throughput: bytes per second through one emulated link on loopback.

    .venv/bin/python benchmarks/wan.py [--seconds 5] [--delay-ms 0] [--json FILE]

A sink server, an emulated link in front of it (in this process, as `multiactive wan run`
would run it) and a source that writes 1 MiB chunks as fast as the link takes them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from multiactive.model.topology import Address
from multiactive.procs import free_port
from multiactive.wan.proxy import WanLink
from multiactive.wan.shape import LinkShape

CHUNK = b"x" * (1 << 20)


async def measure(seconds: float, delay_ms: float) -> dict[str, float]:
    received = 0

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        while data := await reader.read(1 << 20):
            received += len(data)
        writer.close()

    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    target = Address("127.0.0.1", server.sockets[0].getsockname()[1])
    link = WanLink("bench", Address("127.0.0.1", free_port()), target, LinkShape(delay_ms=delay_ms))
    await link.start()
    _, writer = await asyncio.open_connection(link.listen.host, link.listen.port)
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        writer.write(CHUNK)
        await writer.drain()
    sent_s = time.perf_counter() - started
    writer.close()
    await asyncio.sleep(delay_ms / 1000 + 0.5)
    await link.close()
    server.close()
    return {
        "delay_ms": delay_ms,
        "seconds": round(sent_s, 2),
        "mb_per_s": round(received / sent_s / 1e6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from multiactive import aio

    result = aio.run(measure(args.seconds, args.delay_ms))
    print(f"{'figure':<40}  value")
    label = f"through one emulated link, {args.delay_ms} ms"
    print(f"{label:<40}  {result['mb_per_s']} MB/s")
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
