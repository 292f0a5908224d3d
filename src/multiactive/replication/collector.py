"""Collector: the receiving end of a link. Stores an origin's batches and acknowledges them.

Frames are checked (framing, batch headers, checksums, and L1: every batch must be of the
origin this link carries) and queued; one store task appends everything queued in one durable
journal write and only then sends the ACK with the new heads (J3 for remote writes). A batch
that starts above head + 1 is refused and reported as a gap in the ACK, so the sender rewinds.
"""

from __future__ import annotations

import asyncio

from multiactive.aio import Pulse, run_together
from multiactive.errors import DecodeError, ProtocolError
from multiactive.journal.base import Journal
from multiactive.model.batch import RecordBatch, split_batches
from multiactive.model.clock import HybridClock, wall_ms
from multiactive.model.topology import ReplicationSettings
from multiactive.replication.links import LinkMonitor
from multiactive.wire.connection import FrameConnection
from multiactive.wire.frames import FrameType
from multiactive.wire.protocol import (
    Ack,
    Heartbeat,
    decode_error,
    decode_heartbeat,
    encode_ack,
    encode_heartbeat,
)

STORE_CHUNK_BYTES = 4 * 1024 * 1024


class Collector:
    """One receiving session on one connection; ends when the connection does."""

    def __init__(
        self,
        journal: Journal,
        conn: FrameConnection,
        monitor: LinkMonitor,
        clock: HybridClock,
        settings: ReplicationSettings,
    ) -> None:
        self._journal = journal
        self._conn = conn
        self._monitor = monitor
        self._origin = monitor.link.origin
        self._clock = clock
        self._settings = settings
        self._queue: list[RecordBatch] = []
        self._queued = Pulse()

    async def run(self) -> None:
        self._monitor.connected()
        for stream, head in self._journal.heads(self._origin).items():
            self._monitor.receiver_heads[stream.partition] = head
        await run_together(self._receive(), self._store(), self._heartbeat())

    async def _receive(self) -> None:
        timeout = self._settings.peer_timeout_s
        while True:
            try:
                frame = await self._conn.recv(timeout)
            except TimeoutError:
                raise ProtocolError(f"no frame from {self._origin} for {timeout:.0f} s") from None
            self._monitor.touch()
            if frame.type == FrameType.BATCHES:
                self._queue.extend(self._check(frame.body))
                self._queued.fire()
            elif frame.type == FrameType.HEARTBEAT:
                self._on_heartbeat(decode_heartbeat(frame))
            elif frame.type == FrameType.ERROR:
                error = decode_error(frame)
                raise ProtocolError(
                    f"{self._origin} closed the link: {error.code}: {error.message}"
                )
            else:
                raise ProtocolError(f"unexpected {frame.type.name} frame on a receiving link")

    def _on_heartbeat(self, beat: Heartbeat) -> None:
        monitor = self._monitor
        if not monitor.backlog:
            monitor.progressed()  # owing starts now, not when the link went idle
        monitor.origin_heads.update(beat.heads)
        monitor.oldest_unreceived_ms = beat.oldest_ms

    def _check(self, body: bytes | memoryview) -> list[RecordBatch]:
        try:
            batches = split_batches(body)
        except DecodeError as exc:
            raise ProtocolError(f"bad batch from {self._origin}: {exc}") from exc
        for batch in batches:
            if batch.origin != self._origin:
                raise ProtocolError(
                    f"link {self._monitor.link.name} carried a batch of origin {batch.origin!r}; "
                    "a link carries only its origin's own messages"
                )
        return batches

    async def _store(self) -> None:
        while True:
            while not self._queue:
                await self._queued.wait()
            batches = self._take()
            result = await self._journal.append_remote(batches)
            self._clock.observe(max(b.max_version for b in batches))
            self._monitor.counted(
                result.stored, sum(b.count for b in batches), sum(b.size for b in batches)
            )
            if result.stored:
                self._monitor.progressed()
            heads = {b.partition: self._journal.head(b.stream) for b in batches}
            self._monitor.receiver_heads.update(heads)
            gaps = tuple(s.partition for s in result.gaps)
            self._conn.send(encode_ack(Ack(heads, gaps)))

    def _take(self) -> list[RecordBatch]:
        """Queued batches for one append, about STORE_CHUNK_BYTES: a receiver that fell behind
        acknowledges as it goes, so the sender's window reopens steadily instead of all at once
        after one long append (over a 40 ms link that gap would leave the path empty)."""
        queue = self._queue
        size = 0
        for count, batch in enumerate(queue, start=1):
            size += batch.size
            if size >= STORE_CHUNK_BYTES:
                taken, self._queue = queue[:count], queue[count:]
                return taken
        self._queue = []
        return queue

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._settings.heartbeat_interval_s)
            self._conn.send(encode_heartbeat(Heartbeat(wall_ms())))
