"""NATS JetStream: a stream mirrored across two `nats-server` processes joined by a leafnode.

    origin server (domain "origin", stream ORIGIN)  <-- leafnode over the emulated link --
        leaf server (domain "leaf", stream MIRROR: mirror of ORIGIN via $JS.origin.API)

Both streams use file storage with one replica. The leaf's leafnode remote is the emulated
link in front of the origin's leafnode port, so every byte between the servers crosses it.

1. ingress: one client publishes N messages of 1 KiB to ORIGIN, IN_FLIGHT unacknowledged at
   most (`publish_async`, a sliding window); a message counts when its JetStream ack came
   back.
2. catch-up: MIRROR is created after (1); the clock starts when it exists and stops when its
   stream info (polled every 20 ms) counts N messages.
3. latency: time-stamped messages at a fixed rate to ORIGIN, received from MIRROR by an
   ordered push consumer on the leaf; latency = receipt - stamp, in this one process.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy, ExternalStream, StorageType, StreamConfig, StreamSource

from multiactive.procs import free_port

from .common import (
    IN_FLIGHT,
    PAYLOAD_BYTES,
    READY_TIMEOUT_S,
    EmulatedLink,
    Latencies,
    Measured,
    PeerError,
    Processes,
    Publish,
    Stopwatch,
    guarded,
    paced,
    port_open,
    start_link,
    wait_until,
    workspace,
)
from .cpu import CpuMeter

SYSTEM = "NATS JetStream"
ORIGIN_DOMAIN = "origin"
LEAF_DOMAIN = "leaf"
SUBJECT = "orders.created"
DURABILITY = (
    "file storage, 1 replica per server; nats-server 2.9 acks once a message is written to the "
    "OS page cache and fsyncs only on its background timer (every 2 min; no sync_interval "
    "option before 2.10), so an OS crash can lose acknowledged messages"
)
POLL_S = 0.02


@dataclass(frozen=True)
class Servers:
    origin_port: int
    leaf_port: int
    link: EmulatedLink


def run(
    rtt_ms: float, messages: int = 200_000, rate: float = 1000.0, duration_s: float = 12.0
) -> dict[str, Any]:
    """Measure a JetStream mirror across an emulated link of `rtt_ms` round-trip time."""
    return guarded(SYSTEM, rtt_ms, lambda: _measure(rtt_ms, messages, rate, duration_s))


def _measure(rtt_ms: float, messages: int, rate: float, duration_s: float) -> dict[str, Any]:
    binary = shutil.which("nats-server", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if binary is None:
        raise PeerError("nats-server is not installed (apt-get install nats-server)")
    with workspace("nats") as procs:
        servers = _start_servers(procs, binary, rtt_ms)
        roles = {"origin": "origin", "receiver": "leaf", "wan": "wan"}
        meter = CpuMeter(lambda: {role: procs.children[name].pid for role, name in roles.items()})
        loaded = _load(servers, messages, rate, duration_s, meter)
        ingress, catch_up_s, latencies = asyncio.run(loaded)
        link_bytes = servers.link.bytes_carried()
    return Measured(
        system=SYSTEM,
        version=_version(binary),
        rtt_ms=rtt_ms,
        durability=DURABILITY,
        messages=messages,
        ingress=ingress,
        catch_up_messages=messages,
        catch_up_s=catch_up_s,
        rate=rate,
        latencies=latencies,
        link_bytes=link_bytes,
        cpu_us_per_msg=meter.per_message(),
        receiver_cpu_s=meter.seconds["catch_up"].get("receiver", 0.0),
    ).result()


# -- servers -----------------------------------------------------------------------------


def _start_servers(procs: Processes, binary: str, rtt_ms: float) -> Servers:
    """The origin, the emulated link in front of its leafnode port, and the leaf connected
    through it."""
    origin_port, leafnode_port, origin_http = free_port(), free_port(), free_port()
    origin = _config(procs.root, "origin", ORIGIN_DOMAIN, origin_port, origin_http)
    origin += f"leafnodes {{ listen: 127.0.0.1:{leafnode_port} }}\n"
    _start(procs, binary, "origin", origin, leafnode_port)
    link = start_link(procs, "leaf-to-origin", leafnode_port, rtt_ms)
    leaf_port = free_port()
    leaf = _config(procs.root, "leaf", LEAF_DOMAIN, leaf_port, free_port())
    leaf += f'leafnodes {{ remotes: [ {{ url: "nats-leaf://127.0.0.1:{link.port}" }} ] }}\n'
    _start(procs, binary, "leaf", leaf, leaf_port)
    wait_until(lambda: _leafnodes(origin_http) == 1, "the leafnode connection", procs, "leaf", 30.0)
    return Servers(origin_port, leaf_port, link)


def _config(root: Path, name: str, domain: str, port: int, http_port: int) -> str:
    return (
        f"server_name: {name}\n"
        f"listen: 127.0.0.1:{port}\n"
        f"http: 127.0.0.1:{http_port}\n"
        f'jetstream {{ store_dir: "{root / name}", domain: {domain} }}\n'
    )


def _start(procs: Processes, binary: str, name: str, config: str, port: int) -> None:
    path = procs.root / f"{name}.conf"
    path.write_text(config)
    procs.start(name, [binary, "-c", str(path)])
    wait_until(lambda: port_open(port), f"nats-server {name}", procs, name, READY_TIMEOUT_S)


def _leafnodes(http_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/leafz", timeout=5) as response:
        return int(json.load(response)["leafnodes"])


def _version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    return out.stdout.strip().removeprefix("nats-server: ")


# -- client load -------------------------------------------------------------------------


async def _load(
    servers: Servers, messages: int, rate: float, duration_s: float, meter: CpuMeter
) -> tuple[Stopwatch, float, Latencies]:
    """Ingress, catch-up (seconds) and latency, in that order."""
    origin_nc = await nats.connect(f"nats://127.0.0.1:{servers.origin_port}")
    leaf_nc = await nats.connect(f"nats://127.0.0.1:{servers.leaf_port}")
    try:
        origin = origin_nc.jetstream(domain=ORIGIN_DOMAIN, publish_async_max_pending=IN_FLIGHT)
        leaf = leaf_nc.jetstream(domain=LEAF_DOMAIN)
        await origin.add_stream(
            StreamConfig(name="ORIGIN", subjects=[SUBJECT], storage=StorageType.FILE)
        )

        async def publish(payload: bytes) -> object:
            return await (await origin.publish_async(SUBJECT, payload))

        with meter.phase("ingress", messages, client=True), Stopwatch() as ingress:
            await _ingress(origin, messages)
        catch_up_s = await _catch_up(leaf, messages, meter)
        meter.start("e2e", client=True)
        latencies = await _latency(leaf, publish, rate, duration_s)
        meter.stop("e2e", len(latencies.samples_ms))
    finally:
        await origin_nc.close()
        await leaf_nc.close()
    return ingress, catch_up_s, latencies


async def _ingress(origin: JetStreamContext, count: int) -> None:
    """Publish `count` 1 KiB messages; `publish_async` keeps IN_FLIGHT unacknowledged at most
    (a sliding window), and all acks are awaited."""
    payload = b"x" * PAYLOAD_BYTES
    acks = [await origin.publish_async(SUBJECT, payload) for _ in range(count)]
    await asyncio.gather(*acks)


async def _catch_up(leaf: JetStreamContext, total: int, meter: CpuMeter) -> float:
    """Create MIRROR on the leaf; seconds from its creation until it holds `total`."""
    mirror = StreamSource(name="ORIGIN", external=ExternalStream(api=f"$JS.{ORIGIN_DOMAIN}.API"))
    meter.start("catch_up")
    await leaf.add_stream(StreamConfig(name="MIRROR", storage=StorageType.FILE, mirror=mirror))
    created = time.perf_counter()
    while True:
        info = await leaf.stream_info("MIRROR")
        if info.state.messages >= total:
            seconds = time.perf_counter() - created
            meter.stop("catch_up", total)
            return seconds
        await asyncio.sleep(POLL_S)


async def _latency(
    leaf: JetStreamContext, publish: Publish, rate: float, duration_s: float
) -> Latencies:
    """Publish at `rate` to ORIGIN while an ordered consumer reads new messages of MIRROR."""
    latencies = Latencies()

    async def on_message(msg: Msg) -> None:
        latencies.received(msg.data)

    sub = await leaf.subscribe(
        SUBJECT,
        stream="MIRROR",
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.NEW,
        cb=on_message,
    )
    try:
        sent = await paced(publish, rate, duration_s)
        await latencies.wait_for(sent, timeout_s=60.0)
    finally:
        await sub.unsubscribe()
    return latencies
