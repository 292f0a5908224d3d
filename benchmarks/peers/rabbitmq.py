"""RabbitMQ: a dynamic shovel moving a queue from one `rabbitmq-server` node to another.

    node A (queue "bench")  -- shovel running on A, its destination connection over the
        emulated link -->  node B (queue "bench")

Both queues are durable classic queues (the default queue type, v1 index in 3.10), messages
are persistent, and every publish to A waits for a publisher confirm. The shovel consumes from
A through a direct (in-node) connection and publishes to B through the emulated link in front
of B's AMQP port, acknowledging A only once B confirmed (`ack-mode: on-confirm`).

The nodes use their own epmd on a free port, their own Erlang cookie and every file under the
run's temporary folder; a node already running on this machine is neither used nor touched.

1. ingress: one client (pika) publishes N messages of 1 KiB to A, IN_FLIGHT unconfirmed at
   most (a sliding window); a message counts when its confirm came back.
2. catch-up: the shovel is created after (1). Creating it goes through `rabbitmqctl`, which
   takes a moment, so the clock starts at the first poll (every 20 ms, passive queue.declare)
   that sees messages on B, and counts only the messages that arrived after it.
3. latency: B's queue is purged, then time-stamped messages at a fixed rate to A, consumed
   from B (no-ack), both with aio-pika; latency = receipt - stamp, in this one process.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import pika
import pika.spec
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from pika.channel import Channel
from pika.frame import Method

from multiactive.procs import die_with_parent, free_port

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

SYSTEM = "RabbitMQ shovel"
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")  # the Debian /usr/sbin wrappers switch user
QUEUE = "bench"
SHOVEL_PREFETCH = 1000  # the shovel's default src-prefetch-count: unconfirmed at most
DURABILITY = (
    "durable classic queues, persistent messages, publisher confirms: a confirm is sent once "
    "the message is fsynced (fsyncs batched across messages); the shovel acks A only after B "
    "confirmed (on-confirm), so both nodes fsync before a message counts"
)
POLL_S = 0.02


@dataclass(frozen=True)
class Node:
    name: str  # Erlang node name, e.g. bench-a@localhost
    port: int  # AMQP

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"


@dataclass(frozen=True)
class Nodes:
    a: Node
    b: Node
    link: EmulatedLink  # in front of B's AMQP port
    ctl_env: dict[str, str]


def run(
    rtt_ms: float, messages: int = 200_000, rate: float = 1000.0, duration_s: float = 12.0
) -> dict[str, Any]:
    """Measure a shovel between two nodes across an emulated link of `rtt_ms` round trip."""
    return guarded(SYSTEM, rtt_ms, lambda: _measure(rtt_ms, messages, rate, duration_s))


def stop_default_service() -> None:
    """Stop the node the Debian package may have started on 5672; this benchmark never uses
    it, and it would compete for the CPU."""
    if port_open(5672):
        subprocess.run(["rabbitmqctl", "stop"], capture_output=True, timeout=120, check=False)


def _measure(rtt_ms: float, messages: int, rate: float, duration_s: float) -> dict[str, Any]:
    if not (RABBITMQ_BIN / "rabbitmq-server").exists():
        raise PeerError("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
    with workspace("rabbitmq") as procs:
        nodes = _start_nodes(procs, rtt_ms)
        version = _ctl(nodes, nodes.a, "version").strip()
        roles = {"origin": "bench-a", "receiver": "bench-b", "wan": "wan"}
        meter = CpuMeter(lambda: {role: procs.children[name].pid for role, name in roles.items()})
        ingress = Stopwatch()
        with meter.phase("ingress", messages, client=True):
            _ConfirmedPublisher(nodes.a.url, messages, ingress).run(timeout_s=600.0)
        replicated = _replicate(nodes, messages, rate, duration_s, meter)
        moved, catch_up_s, latencies = asyncio.run(replicated)
        link_bytes = nodes.link.bytes_carried()
    return Measured(
        system=SYSTEM,
        version=version,
        rtt_ms=rtt_ms,
        durability=DURABILITY,
        messages=messages,
        ingress=ingress,
        catch_up_messages=moved,
        catch_up_s=catch_up_s,
        rate=rate,
        latencies=latencies,
        link_bytes=link_bytes,
        cpu_us_per_msg=meter.per_message(),
        receiver_cpu_s=meter.seconds["catch_up"].get("receiver", 0.0),
    ).result()


# -- nodes -------------------------------------------------------------------------------


def _start_nodes(procs: Processes, rtt_ms: float) -> Nodes:
    env = _common_env(procs)
    a = _start_node(procs, env, "bench-a")
    b = _start_node(procs, env, "bench-b")
    link = start_link(procs, "a-to-b", b.port, rtt_ms)
    nodes = Nodes(a, b, link, env)
    for node in (a, b):
        _ctl(nodes, node, "await_startup", "--timeout", str(int(READY_TIMEOUT_S)))
    return nodes


def _common_env(procs: Processes) -> dict[str, str]:
    """Environment for both nodes and rabbitmqctl: a private epmd, cookie and plugin list."""
    home = procs.root / "home"
    home.mkdir()
    cookie = home / ".erlang.cookie"
    cookie.write_text(secrets.token_hex(16))
    cookie.chmod(0o400)
    (procs.root / "enabled_plugins").write_text("[rabbitmq_shovel].\n")
    (procs.root / "rabbitmq-env.conf").write_text("")
    epmd_port = free_port()
    procs.start("epmd", ["epmd", "-port", str(epmd_port), "-address", "127.0.0.1"])
    wait_until(lambda: port_open(epmd_port), "epmd", procs, "epmd", READY_TIMEOUT_S)
    return {
        **os.environ,
        "HOME": str(home),
        "ERL_EPMD_PORT": str(epmd_port),
        # No Erlang VM (node or CLI) starts an epmd of its own that would outlive the run.
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-start_epmd false",
        "RABBITMQ_CTL_ERL_ARGS": "-start_epmd false",
        "RABBITMQ_CONF_ENV_FILE": str(procs.root / "rabbitmq-env.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(procs.root / "enabled_plugins"),
    }


def _start_node(procs: Processes, common: dict[str, str], name: str) -> Node:
    node = Node(f"{name}@localhost", free_port())
    folder = procs.root / name
    folder.mkdir()
    (folder / "rabbitmq.conf").write_text("log.console = false\nlog.file.level = warning\n")
    env = {
        **common,
        "RABBITMQ_NODENAME": node.name,
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(node.port),
        "RABBITMQ_DIST_PORT": str(free_port()),
        "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq.conf"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(folder / "advanced.config"),
        "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
        "RABBITMQ_LOG_BASE": str(folder / "log"),
        "RABBITMQ_PLUGINS_EXPAND_DIR": str(folder / "plugins"),
        "RABBITMQ_PID_FILE": str(folder / "pid"),
        # With input allowed the script execs the Erlang VM instead of waiting on it in a
        # shell, so the VM itself dies with this process. Its stdin is kept open.
        "RABBITMQ_ALLOW_INPUT": "1",
    }
    procs.start(name, [str(RABBITMQ_BIN / "rabbitmq-server")], env, keep_stdin_open=True)
    wait_until(lambda: port_open(node.port), f"RabbitMQ {name}", procs, name, READY_TIMEOUT_S)
    return node


def _ctl(nodes: Nodes, node: Node, *args: str) -> str:
    command = [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", node.name, *args]
    done = subprocess.run(
        command,
        env=nodes.ctl_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        preexec_fn=die_with_parent,
    )
    if done.returncode != 0:
        raise PeerError(f"{' '.join(args[:2])} on {node.name} failed: {done.stderr.strip()}")
    return done.stdout


def _create_shovel(nodes: Nodes) -> None:
    definition = {
        "src-protocol": "amqp091",
        "src-uri": "amqp://",  # direct connection inside node A
        "src-queue": QUEUE,
        "src-prefetch-count": SHOVEL_PREFETCH,
        "dest-protocol": "amqp091",
        "dest-uri": f"amqp://guest:guest@127.0.0.1:{nodes.link.port}",
        "dest-queue": QUEUE,
        "ack-mode": "on-confirm",
    }
    _ctl(nodes, nodes.a, "set_parameter", "shovel", "a-to-b", json.dumps(definition))


# -- client load -------------------------------------------------------------------------


class _ConfirmedPublisher:
    """Publishes `count` persistent 1 KiB messages to A's queue with pika's callback API,
    IN_FLIGHT unconfirmed at most (a sliding window); the stopwatch runs from the first
    publish to the last confirm.

    pika rather than aio-pika here: aio-pika spends about five times the client CPU per
    message, which made the client, not RabbitMQ, the limit of this figure.
    """

    def __init__(self, url: str, count: int, watch: Stopwatch) -> None:
        self._count = count
        self._watch = watch
        self._payload = b"x" * PAYLOAD_BYTES
        self._properties = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
        self._sent = 0
        self._unconfirmed: set[int] = set()  # delivery tags: 1, 2, ... in publish order
        self._error = ""
        self._connection = pika.SelectConnection(
            pika.URLParameters(url),
            on_open_callback=self._opened,
            on_open_error_callback=lambda _, exc: self._fail(f"cannot connect: {exc}"),
            on_close_callback=lambda *_: self._connection.ioloop.stop(),
        )

    def run(self, timeout_s: float) -> None:
        self._connection.ioloop.call_later(timeout_s, lambda: self._fail("timed out"))
        self._connection.ioloop.start()
        if self._error:
            raise PeerError(f"ingress to RabbitMQ: {self._error}")

    def _opened(self, connection: pika.SelectConnection) -> None:
        connection.channel(on_open_callback=self._channel_opened)

    def _channel_opened(self, channel: Channel) -> None:
        self._channel = channel
        channel.queue_declare(QUEUE, durable=True, callback=self._declared)

    def _declared(self, _frame: object) -> None:
        self._channel.confirm_delivery(self._confirmed, callback=self._start)

    def _start(self, _frame: object) -> None:
        self._watch.start()
        self._fill()

    def _fill(self) -> None:
        while self._sent < self._count and len(self._unconfirmed) < IN_FLIGHT:
            self._channel.basic_publish("", QUEUE, self._payload, self._properties)
            self._sent += 1
            self._unconfirmed.add(self._sent)

    def _confirmed(self, frame: Method) -> None:
        method = frame.method
        if isinstance(method, pika.spec.Basic.Nack):
            self._fail(f"message {method.delivery_tag} was nacked")
            return
        if method.multiple:
            self._unconfirmed = {tag for tag in self._unconfirmed if tag > method.delivery_tag}
        else:
            self._unconfirmed.discard(method.delivery_tag)
        if self._sent == self._count and not self._unconfirmed:
            self._watch.stop()
            self._connection.close()
        else:
            self._fill()

    def _fail(self, error: str) -> None:
        self._error = self._error or error
        if self._connection.is_open:
            self._connection.close()
        else:
            self._connection.ioloop.stop()


async def _replicate(
    nodes: Nodes, messages: int, rate: float, duration_s: float, meter: CpuMeter
) -> tuple[int, float, Latencies]:
    """Create the shovel, then catch-up (messages moved while the clock ran, seconds) and
    latency; A's queue holds the messages of the ingress phase."""
    conn_a = await aio_pika.connect(nodes.a.url)
    conn_b = await aio_pika.connect(nodes.b.url)
    try:
        channel_a = await conn_a.channel(publisher_confirms=True)
        channel_b = await conn_b.channel()
        await channel_b.declare_queue(QUEUE, durable=True)

        async def publish(payload: bytes) -> object:
            message = aio_pika.Message(payload, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            return await channel_a.default_exchange.publish(message, routing_key=QUEUE)

        _create_shovel(nodes)  # rabbitmqctl; blocks this loop briefly, nothing else runs yet
        moved, catch_up_s = await _catch_up(channel_b, messages, meter)
        meter.start("e2e", client=True)
        latencies = await _latency(channel_b, publish, rate, duration_s)
        meter.stop("e2e", len(latencies.samples_ms))
    finally:
        await conn_a.close()
        await conn_b.close()
    return moved, catch_up_s, latencies


async def _depth(channel: AbstractChannel) -> int:
    queue = await channel.declare_queue(QUEUE, passive=True)
    return int(queue.declaration_result.message_count or 0)


async def _catch_up(channel_b: AbstractChannel, total: int, meter: CpuMeter) -> tuple[int, float]:
    """Messages moved to B and seconds, from the first poll that sees some on B until B
    holds `total`."""
    first = 0
    while first == 0:
        await asyncio.sleep(POLL_S)
        first = await _depth(channel_b)
    if first >= total:
        raise PeerError(f"all {total} messages moved within one poll: too few to time")
    meter.start("catch_up")
    started = time.perf_counter()
    depth = first
    while depth < total:
        await asyncio.sleep(POLL_S)
        depth = await _depth(channel_b)
    seconds = time.perf_counter() - started
    meter.stop("catch_up", total - first)
    return total - first, seconds


async def _latency(
    channel_b: AbstractChannel, publish: Publish, rate: float, duration_s: float
) -> Latencies:
    """Publish at `rate` to A while consuming from B's (purged) queue."""
    latencies = Latencies()
    queue = await channel_b.declare_queue(QUEUE, passive=True)
    await queue.purge()

    async def on_message(message: AbstractIncomingMessage) -> None:
        latencies.received(message.body)

    tag = await queue.consume(on_message, no_ack=True)
    try:
        sent = await paced(publish, rate, duration_s)
        await latencies.wait_for(sent, timeout_s=60.0)
    finally:
        await queue.cancel(tag)
    return latencies
