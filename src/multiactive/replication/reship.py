"""Reship: the sending end of a link. Streams this site's own batches to one receiver.

After the handshake the sender knows the receiver's durable heads and sends, for every
partition, the stored batches from head + 1 on, as stored (never re-encoded). Several frames
are in flight at once, up to `window_bytes` (L2); an ACK names the receiver's new durable heads
and frees the window; an ACK that reports a gap rewinds that partition to the head it names.
"""

from __future__ import annotations

import asyncio
from collections import deque

from multiactive.aio import Pulse, run_together, wait_any
from multiactive.errors import ProtocolError
from multiactive.journal.base import Journal
from multiactive.model.clock import wall_ms
from multiactive.model.message import StreamId
from multiactive.model.topology import ReplicationSettings
from multiactive.replication.links import LinkMonitor
from multiactive.wire.connection import FrameConnection
from multiactive.wire.frames import FrameType
from multiactive.wire.protocol import decode_ack, decode_error, encode_batches, encode_heartbeat

PEER_HEADS_SAVE_INTERVAL_S = 1.0


class Reship:
    """One sending session on one connection; ends when the connection does."""

    def __init__(
        self,
        journal: Journal,
        conn: FrameConnection,
        monitor: LinkMonitor,
        partitions: int,
        settings: ReplicationSettings,
    ) -> None:
        self._journal = journal
        self._conn = conn
        self._monitor = monitor
        self._origin = monitor.link.origin
        self._peer = monitor.link.receiver
        self._partitions = partitions
        self._settings = settings
        self._cursor: dict[int, int] = {}
        self._in_flight: dict[int, deque[tuple[int, int]]] = {}
        self._acked = Pulse()
        self._heads_dirty = False

    async def run(self, peer_heads: dict[int, int]) -> None:
        for partition in range(self._partitions):
            head = peer_heads.get(partition, 0)
            self._cursor[partition] = head + 1
            self._in_flight[partition] = deque()
            self._monitor.peer_heads[partition] = head
        self._monitor.connected()
        await run_together(self._send(), self._receive(), self._heartbeat(), self._save_heads())

    async def _send(self) -> None:
        journal = self._journal
        window = self._settings.window_bytes
        while True:
            sent = False
            for partition in range(self._partitions):
                if self._monitor.in_flight_bytes >= window:
                    break
                sent = await self._send_partition(partition) or sent
            await self._conn.drain()
            if sent:
                continue
            if self._monitor.in_flight_bytes >= window:
                await self._acked.wait()
            elif not self._has_more():
                await wait_any((journal.appended, self._acked))

    def _has_more(self) -> bool:
        return any(
            self._cursor[p] <= self._journal.head(StreamId(self._origin, p))
            for p in range(self._partitions)
        )

    async def _send_partition(self, partition: int) -> bool:
        stream = StreamId(self._origin, partition)
        cursor = self._cursor[partition]
        if cursor > self._journal.head(stream):
            return False
        batches = await self._journal.read(stream, cursor, self._settings.read_bytes)
        if not batches or self._cursor[partition] != cursor:
            return False  # trimmed (reported by the reconciler) or rewound meanwhile
        frame = encode_batches(batches)
        self._conn.send(frame)
        last = batches[-1].last_seq
        self._cursor[partition] = last + 1
        self._in_flight[partition].append((last, len(frame)))
        self._monitor.in_flight_bytes += len(frame)
        self._monitor.counted(len(batches), sum(b.count for b in batches), len(frame))
        return True

    async def _receive(self) -> None:
        timeout = self._settings.peer_timeout_s
        while True:
            try:
                frame = await asyncio.wait_for(self._conn.recv(), timeout)
            except TimeoutError:
                raise ProtocolError(f"no frame from {self._peer} for {timeout:.0f} s") from None
            self._monitor.touch()
            if frame.type == FrameType.ACK:
                ack = decode_ack(frame)
                self._on_ack(ack.heads, ack.gaps)
            elif frame.type == FrameType.ERROR:
                error = decode_error(frame)
                raise ProtocolError(f"{self._peer} closed the link: {error.code}: {error.message}")
            elif frame.type != FrameType.HEARTBEAT:
                raise ProtocolError(f"unexpected {frame.type.name} frame on a sending link")

    def _on_ack(self, heads: dict[int, int], gaps: tuple[int, ...]) -> None:
        for partition, head in heads.items():
            flight = self._in_flight.get(partition)
            if flight is None:
                raise ProtocolError(f"ACK for partition {partition}, which does not exist")
            while flight and flight[0][0] <= head:
                self._monitor.in_flight_bytes -= flight.popleft()[1]
            self._monitor.peer_heads[partition] = head
            self._heads_dirty = True
            if partition in gaps:
                self._monitor.in_flight_bytes -= sum(size for _, size in flight)
                flight.clear()
                self._cursor[partition] = head + 1
        self._acked.fire()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._settings.heartbeat_interval_s)
            self._conn.send(encode_heartbeat(wall_ms()))

    async def _save_heads(self) -> None:
        """Persist what the peer acknowledged, so trimming after a restart knows it (J4)."""
        try:
            while True:
                await asyncio.sleep(PEER_HEADS_SAVE_INTERVAL_S)
                await self._flush_heads()
        finally:
            await asyncio.shield(self._flush_heads())

    async def _flush_heads(self) -> None:
        if self._heads_dirty:
            self._heads_dirty = False
            heads = {StreamId(self._origin, p): h for p, h in self._monitor.peer_heads.items()}
            await self._journal.save_peer_heads(self._peer, heads)
