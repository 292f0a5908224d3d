"""A TCP proxy that behaves like a long-haul link: delay, jitter, bandwidth cap, cut and heal.

Each accepted connection is paired with a connection to the target; bytes in each direction go
through a `Pacer` and are delivered at their delivery time. When nothing is to be emulated the
bytes are forwarded as they arrive, so the proxy is not the bottleneck on loopback.

Cutting a link:
- `reset`: every connection is aborted (the peers see a reset) and the listener is closed, so
  new connections are refused, until `heal()`.
- `blackhole`: connections stay open but no byte moves either way (as when a path drops every
  packet and TCP keeps retransmitting); new connections are accepted and held. On `heal()`
  held bytes flow again, in order.

Flow control: a direction holding more than `MAX_QUEUED_BYTES` stops reading its source, and a
destination whose write buffer is full stops its source too, so memory stays bounded.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Literal, cast

from multiactive.logs import get_logger
from multiactive.model.topology import Address
from multiactive.wan.shape import LinkShape, Pacer

CutMode = Literal["reset", "blackhole"]
LinkState = Literal["up", "reset", "blackhole"]
MAX_QUEUED_BYTES = 64 * 1024 * 1024
RESUME_QUEUED_BYTES = 16 * 1024 * 1024
TIMER_SLACK_S = 0.0002

log = get_logger("wan")


@dataclass(frozen=True, slots=True)
class WanLinkStatistics:
    name: str
    listen: str
    target: str
    state: LinkState
    delay_ms: float
    jitter_ms: float
    bandwidth_mbps: float
    connections: int
    bytes_forward: int  # listener side -> target
    bytes_backward: int  # target -> listener side
    queued_bytes: int
    connects: int


class _Direction:
    """Bytes one way through one connection: queued with delivery times, released by timer."""

    def __init__(self, link: WanLink, forward: bool) -> None:
        self._link = link
        self._forward = forward
        self._pacer = Pacer(link.shape)
        self._queue: deque[tuple[float, bytes]] = deque()
        self.queued = 0
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self.source: asyncio.Transport | None = None
        self.target: asyncio.Transport | None = None
        self._source_paused = False
        self._target_full = False

    def reshape(self, shape: LinkShape) -> None:
        self._pacer = Pacer(shape)

    def push(self, data: bytes) -> None:
        self._link.count(self._forward, len(data))
        if (
            not self._queue
            and self._link.state == "up"
            and self._link.shape.passthrough
            and self.target is not None
            and not self._target_full
        ):
            self.target.write(data)
            return
        when = self._pacer.delivery_time(self._loop.time(), len(data))
        self._queue.append((when, data))
        self.queued += len(data)
        if self.queued > MAX_QUEUED_BYTES:
            self._pause_source()
        self.schedule()

    def schedule(self) -> None:
        if self._timer is not None or not self._queue or self._link.state != "up":
            return
        if self.target is None or self._target_full:
            return
        self._timer = self._loop.call_at(self._queue[0][0], self.release)

    def release(self) -> None:
        self._timer = None
        if self._link.state != "up" or self.target is None:
            return
        horizon = self._loop.time() + TIMER_SLACK_S
        while self._queue and self._queue[0][0] <= horizon and not self._target_full:
            _, data = self._queue.popleft()
            self.queued -= len(data)
            self.target.write(data)
        if self.queued < RESUME_QUEUED_BYTES:
            self._resume_source()
        self.schedule()

    def target_full(self, full: bool) -> None:
        self._target_full = full
        if full:
            self._pause_source()
        else:
            self._resume_source()
            self.schedule()

    def _pause_source(self) -> None:
        if not self._source_paused and self.source is not None:
            self._source_paused = True
            self.source.pause_reading()

    def _resume_source(self) -> None:
        if self._source_paused and self.source is not None and self.queued < RESUME_QUEUED_BYTES:
            self._source_paused = False
            self.source.resume_reading()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _End(asyncio.Protocol):
    """One TCP end of a proxied connection; feeds the direction that leaves from it."""

    def __init__(self, conn: _Connection, outgoing: _Direction, incoming: _Direction) -> None:
        self._conn = conn
        self._outgoing = outgoing
        self._incoming = incoming
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._outgoing.source = self.transport
        self._incoming.target = self.transport
        self._incoming.schedule()

    def data_received(self, data: bytes) -> None:
        self._outgoing.push(data)

    def eof_received(self) -> bool | None:
        self._conn.close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._conn.close()

    def pause_writing(self) -> None:
        self._incoming.target_full(True)

    def resume_writing(self) -> None:
        self._incoming.target_full(False)


class _Connection:
    """A client connection and its paired connection to the target."""

    def __init__(self, link: WanLink) -> None:
        self.link = link
        self.forward = _Direction(link, forward=True)
        self.backward = _Direction(link, forward=False)
        self.client = _End(self, self.forward, self.backward)
        self.upstream = _End(self, self.backward, self.forward)
        self.closed = False

    async def open_upstream(self) -> None:
        loop = asyncio.get_running_loop()
        target = self.link.target
        try:
            await loop.create_connection(lambda: self.upstream, target.host, target.port)
        except OSError as exc:
            log.info("wan_upstream_failed", link=self.link.name, target=target, reason=exc)
            self.close()

    def queued(self) -> int:
        return self.forward.queued + self.backward.queued

    def reshape(self, shape: LinkShape) -> None:
        self.forward.reshape(shape)
        self.backward.reshape(shape)

    def resume(self) -> None:
        self.forward.schedule()
        self.backward.schedule()

    def abort(self) -> None:
        for end in (self.client, self.upstream):
            if end.transport is not None:
                end.transport.abort()
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.forward.stop()
        self.backward.stop()
        for end in (self.client, self.upstream):
            if end.transport is not None and not end.transport.is_closing():
                end.transport.close()
        self.link.forget(self)


class WanLink:
    """One emulated link: a listening port that forwards to one target."""

    def __init__(self, name: str, listen: Address, target: Address, shape: LinkShape) -> None:
        self.name = name
        self.listen = listen
        self.target = target
        self.shape = shape
        self.state: LinkState = "up"
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._held: list[_Connection] = []
        self._opening: set[asyncio.Future[None]] = set()
        self._bytes = [0, 0]
        self._connects = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._accept, self.listen.host, self.listen.port, reuse_address=True
        )

    def _accept(self) -> asyncio.Protocol:
        conn = _Connection(self)
        self._connections.add(conn)
        self._connects += 1
        if self.state == "blackhole":
            self._held.append(conn)
        else:
            task = asyncio.ensure_future(conn.open_upstream())
            self._opening.add(task)
            task.add_done_callback(self._opening.discard)
        return conn.client

    def count(self, forward: bool, size: int) -> None:
        self._bytes[0 if forward else 1] += size

    def forget(self, conn: _Connection) -> None:
        self._connections.discard(conn)

    def reshape(self, shape: LinkShape) -> None:
        self.shape = shape
        for conn in self._connections:
            conn.reshape(shape)

    async def cut(self, mode: CutMode) -> None:
        if mode == "reset":
            self.state = "reset"
            if self._server is not None:
                self._server.close()
                self._server = None
            for conn in list(self._connections):
                conn.abort()
        else:
            self.state = "blackhole"
        log.info("wan_cut", link=self.name, mode=mode)

    async def heal(self) -> None:
        previous, self.state = self.state, "up"
        if previous == "reset" and self._server is None:
            await self.start()
        held, self._held = self._held, []
        for conn in held:
            if not conn.closed:
                await conn.open_upstream()
        for conn in self._connections:
            conn.resume()
        log.info("wan_healed", link=self.name, was=previous)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.abort()

    def statistics(self) -> WanLinkStatistics:
        return WanLinkStatistics(
            self.name,
            str(self.listen),
            str(self.target),
            self.state,
            self.shape.delay_ms,
            self.shape.jitter_ms,
            self.shape.bandwidth_mbps,
            len(self._connections),
            self._bytes[0],
            self._bytes[1],
            sum(c.queued() for c in self._connections),
            self._connects,
        )
