"""The receiving half of a link as a state machine: no I/O, no clock, no event loop.

Frames from the origin go in and come out as checked batches to store; what the journal did
with them goes in and comes out as the ACK frame to send. `replication/collector.py` is the
thin asyncio shell around it.

Rules it keeps (ARCHITECTURE.md sections 4 and 5):
- L4: frame and batch checksums and headers are checked (`split_batches`); a bad one ends the
  session with a `ProtocolError` before anything of it is stored;
- L1: every batch must be of the origin this link carries; receivers never forward;
- J3 for remote writes: the ACK names heads only after the journal made them durable; a gap
  (a batch above head + 1) is reported so the sender rewinds;
- acknowledge as you go: queued batches are taken for one append in chunks of about
  `STORE_CHUNK_BYTES`, so a receiver that fell behind reopens the sender's window steadily;
- L3: messages owed (the origin's heartbeats say so) and nothing stored for `stall_after_s`
  is a stalled link; an origin silent for `peer_timeout_s` ends the session.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from multiactive.errors import DecodeError, ProtocolError
from multiactive.journal.base import RemoteResult
from multiactive.model.batch import RecordBatch, split_batches
from multiactive.replication.links import LinkMonitor
from multiactive.wire.frames import Frame, FrameType
from multiactive.wire.protocol import (
    Ack,
    Heartbeat,
    decode_error,
    decode_heartbeat,
    encode_ack,
    encode_heartbeat,
)

STORE_CHUNK_BYTES = 4 * 1024 * 1024


class ReceiverSession:
    """One receiving session's rules; the shell feeds it events and sends what it returns."""

    def __init__(self, monitor: LinkMonitor, peer_timeout_s: float) -> None:
        self.monitor = monitor
        self.origin = monitor.link.origin
        self._peer_timeout_s = peer_timeout_s
        self._queue: list[RecordBatch] = []

    def start(self, heads: Mapping[int, int], now: float) -> None:
        """The handshake is done; `heads` are this site's durable heads of the origin."""
        self.monitor.connected(now)
        self.monitor.receiver_heads.update(heads)

    def receive(self, frame: Frame, now: float) -> bool:
        """A frame from the origin; True when it queued batches to store."""
        self.monitor.touch(now)
        if frame.type == FrameType.BATCHES:
            self._queue.extend(self._check(frame.body))
            return True
        if frame.type == FrameType.HEARTBEAT:
            self._on_heartbeat(decode_heartbeat(frame), now)
            return False
        if frame.type == FrameType.ERROR:
            error = decode_error(frame)
            raise ProtocolError(f"{self.origin} closed the link: {error.code}: {error.message}")
        raise ProtocolError(f"unexpected {frame.type.name} frame on a receiving link")

    def _on_heartbeat(self, beat: Heartbeat, now: float) -> None:
        monitor = self.monitor
        if not monitor.backlog:
            monitor.progressed(now)  # owing starts now, not when the link went idle
        monitor.origin_heads.update(beat.heads)
        monitor.oldest_unreceived_ms = beat.oldest_ms

    def _check(self, body: bytes | memoryview) -> list[RecordBatch]:
        try:
            batches = split_batches(body)
        except DecodeError as exc:
            raise ProtocolError(f"bad batch from {self.origin}: {exc}") from exc
        for batch in batches:
            if batch.origin != self.origin:
                raise ProtocolError(
                    f"link {self.monitor.link.name} carried a batch of origin {batch.origin!r}; "
                    "a link carries only its origin's own messages"
                )
        return batches

    @property
    def queued(self) -> bool:
        return bool(self._queue)

    def take(self) -> list[RecordBatch]:
        """Queued batches for one append, about STORE_CHUNK_BYTES (all of them when less)."""
        queue = self._queue
        size = 0
        for count, batch in enumerate(queue, start=1):
            size += batch.size
            if size >= STORE_CHUNK_BYTES:
                taken, self._queue = queue[:count], queue[count:]
                return taken
        self._queue = []
        return queue

    def stored(self, batches: Sequence[RecordBatch], result: RemoteResult,
               heads: Mapping[int, int], now: float) -> bytes:  # fmt: skip
        """The journal made `batches` durable (or skipped or refused some: `result`), and
        holds `heads` of their partitions now: the ACK to send."""
        monitor = self.monitor
        messages = sum(b.count for b in batches)
        monitor.counted(result.stored, messages, sum(b.size for b in batches), now)
        if result.stored:
            monitor.progressed(now)
        monitor.receiver_heads.update(heads)
        gaps = tuple(stream.partition for stream in result.gaps)
        return encode_ack(Ack(dict(heads), gaps))

    def heartbeat(self, now_ms: int) -> bytes:
        return encode_heartbeat(Heartbeat(now_ms))

    def check_alive(self, now: float) -> None:
        """End the session (ProtocolError) when the origin has been silent too long."""
        if now - self.monitor.last_frame_s > self._peer_timeout_s:
            raise ProtocolError(f"no frame from {self.origin} for {self._peer_timeout_s:.0f} s")
