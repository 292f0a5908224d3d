"""Reship: the sending end of a link. Streams this site's own batches to one receiver.

After the handshake the sender knows the receiver's durable heads and sends, for every
partition, the stored batches from head + 1 on, as stored (never re-encoded). Frames stay in
flight up to a window that adapts to bandwidth x round-trip time (L2, `replication/window.py`);
an ACK names the receiver's new durable heads and frees the window; an ACK that reports a gap
rewinds that partition to the head it names. Heartbeats tell the receiver what the origin
holds, so both ends can report backlog, lag and a stalled link (L3).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from typing import NamedTuple

from multiactive.aio import Pulse, run_together, wait_any
from multiactive.errors import ConnectionLost, ProtocolError
from multiactive.journal.base import Journal
from multiactive.model.batch import RecordBatch
from multiactive.model.clock import wall_ms
from multiactive.model.message import StreamId
from multiactive.model.topology import DEFAULT_WINDOW_FLOOR_BYTES, ReplicationSettings
from multiactive.replication.links import LinkMonitor
from multiactive.replication.window import WindowController
from multiactive.wire.connection import FrameConnection
from multiactive.wire.frames import FrameType
from multiactive.wire.protocol import (
    Heartbeat,
    decode_ack,
    decode_error,
    encode_batches,
    encode_heartbeat,
)

PEER_HEADS_SAVE_INTERVAL_S = 1.0


class _InFlight(NamedTuple):
    last_seq: int
    size: int
    sent_s: float
    created_ms: int  # of the frame's first batch


def _runs(batches: Sequence[RecordBatch]) -> list[tuple[int, list[RecordBatch]]]:
    """Batches grouped by partition, in order (one append holds at most a few per partition)."""
    runs: dict[int, list[RecordBatch]] = {}
    for batch in batches:
        runs.setdefault(batch.partition, []).append(batch)
    return list(runs.items())


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
        self._in_flight: dict[int, deque[_InFlight]] = {}
        self._window = WindowController(
            min(DEFAULT_WINDOW_FLOOR_BYTES, settings.window_bytes), settings.window_bytes
        )
        self._acked = Pulse()
        self._heads_dirty = False

    async def run(self, peer_heads: dict[int, int]) -> None:
        for partition in range(self._partitions):
            head = peer_heads.get(partition, 0)
            self._cursor[partition] = head + 1
            self._in_flight[partition] = deque()
            self._monitor.receiver_heads[partition] = head
        self._monitor.connected()
        self._refresh_origin_heads()
        self._journal.observers.append(self._on_stored)
        try:
            await run_together(self._send(), self._receive(), self._heartbeat(), self._save_heads())
        finally:
            self._journal.observers.remove(self._on_stored)

    def _on_stored(self, local: bool, batches: Sequence[RecordBatch]) -> None:
        """Ship batches the moment they are durable, on the same loop turn (the `_send`
        loop would get there a scheduling round later; it skips what was sent here)."""
        if not local:
            return
        for partition, run in _runs(batches):
            if (
                run[0].first_seq != self._cursor.get(partition)
                or self._monitor.in_flight_bytes >= self._window.window
            ):
                continue  # behind or window full: the `_send` loop ships it in order
            try:
                self._ship(partition, run)
            except ConnectionLost:
                return  # the session is ending; `_receive` reports why

    def _refresh_origin_heads(self) -> None:
        heads = self._monitor.origin_heads
        for stream, head in self._journal.heads(self._origin).items():
            heads[stream.partition] = head

    async def _send(self) -> None:
        journal = self._journal
        while True:
            self._refresh_origin_heads()
            sent = False
            for partition in range(self._partitions):
                if self._monitor.in_flight_bytes >= self._window.window:
                    break
                sent = await self._send_partition(partition) or sent
            await self._conn.drain()
            if sent:
                continue
            if self._monitor.in_flight_bytes >= self._window.window:
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
        self._ship(partition, batches)
        return True

    def _ship(self, partition: int, batches: Sequence[RecordBatch]) -> None:
        """Send consecutive batches of one partition, starting at its cursor."""
        frame = encode_batches(batches)
        now = time.monotonic()
        if not self._monitor.in_flight_bytes:
            self._monitor.progressed()  # owing starts now, not when the link went idle
            self._window.idle(now)
        self._conn.send(frame)
        last = batches[-1].last_seq
        self._cursor[partition] = last + 1
        self._in_flight[partition].append(_InFlight(last, len(frame), now, batches[0].created_ms))
        self._monitor.in_flight_bytes += len(frame)
        self._monitor.counted(len(batches), sum(b.count for b in batches), len(frame))

    async def _receive(self) -> None:
        timeout = self._settings.peer_timeout_s
        while True:
            try:
                frame = await self._conn.recv(timeout)
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
        now = time.monotonic()
        acked_bytes = 0
        rewound_bytes = 0
        oldest_sent: float | None = None
        for partition, head in heads.items():
            flight = self._in_flight.get(partition)
            if flight is None:
                raise ProtocolError(f"ACK for partition {partition}, which does not exist")
            while flight and flight[0].last_seq <= head:
                done = flight.popleft()
                acked_bytes += done.size
                oldest_sent = done.sent_s if oldest_sent is None else min(oldest_sent, done.sent_s)
            if head > self._monitor.receiver_heads.get(partition, 0):
                self._monitor.progressed()
            self._monitor.receiver_heads[partition] = head
            self._heads_dirty = True
            if partition in gaps:
                rewound_bytes += sum(entry.size for entry in flight)
                flight.clear()
                self._cursor[partition] = head + 1
        self._monitor.in_flight_bytes -= acked_bytes + rewound_bytes
        rtt = None if oldest_sent is None else now - oldest_sent
        self._window.on_ack(now, acked_bytes, rtt)
        stats = self._window.statistics(now)
        self._monitor.window_bytes = stats.window_bytes
        self._monitor.rtt_ms = stats.rtt_ms
        self._acked.fire()

    async def _heartbeat(self) -> None:
        while True:
            self._refresh_origin_heads()
            oldest = await self._oldest_unacknowledged_ms()
            self._monitor.oldest_unreceived_ms = oldest
            heads = dict(self._monitor.origin_heads)
            self._conn.send(encode_heartbeat(Heartbeat(wall_ms(), heads, oldest)))
            await asyncio.sleep(self._settings.heartbeat_interval_s)

    async def _oldest_unacknowledged_ms(self) -> int | None:
        oldest: int | None = None
        for partition, head in self._monitor.origin_heads.items():
            acked = self._monitor.receiver_heads.get(partition, 0)
            if acked >= head:
                continue
            flight = self._in_flight[partition]
            created = flight[0].created_ms if flight else None
            if created is None:
                created = await self._journal.created_at(
                    StreamId(self._origin, partition), acked + 1
                )
            if created is not None and (oldest is None or created < oldest):
                oldest = created
        return oldest

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
            heads = {StreamId(self._origin, p): h for p, h in self._monitor.receiver_heads.items()}
            await self._journal.save_peer_heads(self._peer, heads)
