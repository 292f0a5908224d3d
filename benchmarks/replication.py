"""Replication benchmark over loopback: ingress, link catch-up, end-to-end latency.

    .venv/bin/python benchmarks/replication.py [--messages 200000] [--rate 1000] [--json FILE]

Two real site processes (`a` -> `b`, one link, embedded SQLite journals with fsync on both
ends) and one client process (this one):

1. ingress: one client publishes N messages of 1 KiB to `a` with `Client.publish_batch`,
   batches of 1 000, 8 batches in flight; a message counts once acknowledged (durable in `a`'s
   journal).
2. catch-up: `b` was down during (1); it is started and the time from its link streaming
   to its journal holding all N messages is the link's backlog catch-up (durable at both ends).
   The time until `b` has also applied them all is reported beside it.
3. latency: at a moderate rate, the time from a message's acceptance at `a` to its
   application at `b`, as `b`'s processor measures it (p50/p99 over the last samples).

With `--tls` every connection (the link and the client's) is mutual TLS 1.3 with
certificates made for the run (`multiactive.security`), for the TLS row beside plaintext.

Prints a table and a JSON document (also written to --json FILE when given).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from multiactive.client import Client
from multiactive.local.cluster import LocalCluster
from multiactive.model.topology import Address
from multiactive.security.certs import issue, make_ca
from multiactive.security.tls import client_context
from multiactive.wan.shape import LinkShape
from peers.cpu import CpuMeter, child_pids

PAYLOAD_BYTES = 1024
BATCH = 1000
BATCHES_IN_FLIGHT = 8
# How often the catch-up is polled (through b's admin `/heads`): the cadence the NATS and
# RabbitMQ peers poll at. Each poll is an HTTP request the receiver serves; at 2 ms they were
# 13-16 % of the receiver's CPU samples during a catch-up (py-spy), counted as its cost.
CATCH_UP_POLL_S = 0.02


def make_certificates(root: Path) -> dict[str, str]:
    """A CA and certificates for sites a and b under `root`; the [tls] table naming them."""
    root.mkdir(parents=True, exist_ok=True)
    ca = make_ca("bench")
    (root / "ca.crt").write_bytes(ca[1])
    for site in ("a", "b"):
        key, cert = issue(*ca, site)
        (root / f"{site}.crt").write_bytes(cert)
        (root / f"{site}.key").write_bytes(key)
    return {"ca": str(root / "ca.crt"), "cert": str(root / "{site}.crt"),
            "key": str(root / "{site}.key")}  # fmt: skip


def client_options(tls: dict[str, str] | None) -> dict[str, Any]:
    if tls is None:
        return {}
    return {"tls": client_context([Path(tls["ca"])]), "server_name": "a"}


async def ingress(
    address: Address, count: int, meter: CpuMeter, options: dict[str, Any] | None = None
) -> float:
    """Publish `count` messages in batches of BATCH, BATCHES_IN_FLIGHT at a time; return the
    seconds until the last is acknowledged (durable at the site)."""
    payload = b"x" * PAYLOAD_BYTES
    drafts = [("", "kv.set", f"key{i}", {}, payload) for i in range(count)]
    chunks = [drafts[i : i + BATCH] for i in range(0, count, BATCH)]
    async with Client(address, **(options or {})) as client:
        meter.start("ingress", client=True)
        started = time.perf_counter()
        next_chunk = iter(chunks)

        async def publisher() -> None:
            for chunk in next_chunk:
                await client.publish_batch(chunk)

        await asyncio.gather(*(publisher() for _ in range(BATCHES_IN_FLIGHT)))
        seconds = time.perf_counter() - started
        meter.stop("ingress", count)
        return seconds


async def paced(
    address: Address, rate: float, duration_s: float, options: dict[str, Any] | None = None
) -> int:
    payload = b"x" * PAYLOAD_BYTES
    sent = 0
    tasks: set[asyncio.Task[Any]] = set()
    async with Client(address, **(options or {})) as client:
        started = time.perf_counter()
        while (elapsed := time.perf_counter() - started) < duration_s:
            due = int(elapsed * rate) - sent
            for _ in range(due):
                task = asyncio.create_task(client.publish("kv.set", f"lat{sent}", payload))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
            await asyncio.sleep(0.001)
        if tasks:
            await asyncio.wait(tasks)
    return sent


def received(cluster: LocalCluster, site: str, origin: str) -> tuple[int, int]:
    """Messages of `origin` journaled and applied at `site` (a cheap poll: `/heads`)."""
    heads = cluster.heads(site, origin).values()
    return sum(h for h, _ in heads), sum(a for _, a in heads)


def link_streaming(cluster: LocalCluster, site: str, link: str) -> bool:
    return cluster.link(site, link).state == "streaming"


def catch_up(cluster: LocalCluster, total: int, meter: CpuMeter) -> tuple[float, float]:
    """Start b; seconds from the link streaming until all received, and all applied.

    The origin was retrying its link with backoff while b was down; that wait is the
    reconnect policy, not the link's speed, so the clock (and the CPU count) starts when the
    link is up.
    """
    cluster.start(["b"])
    while not link_streaming(cluster, "b", "a->b"):
        time.sleep(0.002)
    meter.start("catch_up")
    meter.start("catch_up_applied")
    connected = time.perf_counter()
    got_all = 0.0
    while True:
        heads, applied = received(cluster, "b", "a")
        now = time.perf_counter()
        if heads >= total and not got_all:
            got_all = now
            meter.stop("catch_up", total)
        if applied >= total:
            meter.stop("catch_up_applied", total)
            return got_all - connected, now - connected
        time.sleep(CATCH_UP_POLL_S)


def run(
    messages: int,
    rate: float,
    duration_s: float,
    root: Path,
    fsync: bool = True,
    rtt_ms: float | None = None,
    tls: bool = False,
) -> dict[str, Any]:
    """One full measurement; with `rtt_ms` both link directions go through the WAN emulator
    with half of it as one-way delay; with `tls`, mutual TLS on every connection."""
    settings: dict[str, dict[str, Any]] = {"replication": {"fsync": fsync}}
    certificates = make_certificates(root / "certs") if tls else None
    if certificates is not None:
        settings["tls"] = certificates
    options = client_options(certificates)
    wan = None
    if rtt_ms is not None:
        shape = LinkShape(delay_ms=rtt_ms / 2)
        wan = {("a", "b"): shape, ("b", "a"): shape}
    with LocalCluster(
        root, ("a", "b"), partitions=8, log_level="WARNING", settings=settings, wan=wan
    ) as cluster:
        meter = CpuMeter(lambda: site_pids(cluster))
        cluster.start(["a"])
        ingress_s = asyncio.run(ingress(cluster.client_address("a"), messages, meter, options))
        catch_up_s, applied_s = catch_up(cluster, messages, meter)
        meter.start("e2e", client=True)
        sent = asyncio.run(paced(cluster.client_address("a"), rate, duration_s, options))
        cluster.wait_converged(60)
        meter.stop("e2e", sent)
        processor = cluster.status("b").processor.to_json()
    mib = messages * PAYLOAD_BYTES / (1 << 20)
    return {
        "messages": messages,
        "payload_bytes": PAYLOAD_BYTES,
        "ingress_msgs_per_s": round(messages / ingress_s),
        "catch_up_msgs_per_s": round(messages / catch_up_s),
        "catch_up_mib_per_s": round(mib / catch_up_s, 1),
        "catch_up_applied_msgs_per_s": round(messages / applied_s),
        "latency_rate_msgs_per_s": rate,
        "latency_messages": sent,
        "latency_p50_ms": processor["latency_ms_p50"],
        "latency_p99_ms": processor["latency_ms_p99"],
        "rtt_ms": rtt_ms,
        "tls": tls,
        "cpu_us_per_msg": meter.per_message(),
        "catch_up_receiver_cpu_ms_per_mib": round(
            meter.seconds["catch_up"].get("receiver", 0.0) * 1000 / mib, 2
        ),
        "durability": (
            "journal segments fdatasynced per group commit at both ends before anything is "
            "acknowledged (SQLite index re-built from them after a crash)"
            if fsync
            else "no fsync (survives a process crash, not an OS crash)"
        ),
        "machine": f"{platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}, {_cpus()} CPUs",
        "date": time.strftime("%Y-%m-%d"),
    }


def site_pids(cluster: LocalCluster) -> dict[str, int]:
    """The processes a phase's CPU is counted for: each running site ("origin" a, "receiver"
    b), its applier apart, and the WAN emulator."""
    pids: dict[str, int] = {}
    for role, site in (("origin", "a"), ("receiver", "b")):
        process = cluster.processes[site].process
        if process is None or process.poll() is not None:
            continue
        pids[role] = process.pid
        for child in child_pids(process.pid):
            pids[f"{role} applier"] = child
    emulator = cluster.emulator
    if emulator is not None and emulator.process is not None:
        pids["wan"] = emulator.process.pid
    return pids


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


def table(result: dict[str, Any]) -> str:
    rows = [
        ("acknowledged ingress, one client", f"{result['ingress_msgs_per_s']:,} msg/s"),
        (
            "link catch-up, durable both ends",
            f"{result['catch_up_msgs_per_s']:,} msg/s ({result['catch_up_mib_per_s']} MiB/s)",
        ),
        ("catch-up incl. apply at receiver", f"{result['catch_up_applied_msgs_per_s']:,} msg/s"),
        (
            f"end-to-end at {result['latency_rate_msgs_per_s']:.0f} msg/s",
            f"p50 {result['latency_p50_ms']} ms, p99 {result['latency_p99_ms']} ms",
        ),
        *(
            (f"CPU per message, {phase}", cpu_line(figures))
            for phase, figures in result["cpu_us_per_msg"].items()
        ),
        ("receiver CPU per MiB caught up", f"{result['catch_up_receiver_cpu_ms_per_mib']} ms"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'figure':<{width}}  value", f"{'-' * width}  {'-' * 30}"]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)


def cpu_line(figures: dict[str, float]) -> str:
    """ "41.0 us (origin 30.1, client 10.9)": the total, then each role."""
    roles = ", ".join(f"{role} {us}" for role, us in figures.items() if role != "total")
    return f"{figures['total']} us ({roles})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=200_000, help="backlog size")
    parser.add_argument("--rate", type=float, default=1000.0, help="latency phase msg/s")
    parser.add_argument("--duration", type=float, default=10.0, help="latency phase seconds")
    parser.add_argument("--json", type=Path, help="also write the JSON result here")
    parser.add_argument("--no-fsync", action="store_true", help="journals without fsync")
    parser.add_argument(
        "--rtt-ms", type=float, default=None, help="route the link through the WAN emulator"
    )
    parser.add_argument("--tls", action="store_true", help="mutual TLS on every connection")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="multiactive-bench-") as tmp:
        result = run(
            args.messages, args.rate, args.duration, Path(tmp), not args.no_fsync, args.rtt_ms,
            args.tls,
        )  # fmt: skip
    print(table(result))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
