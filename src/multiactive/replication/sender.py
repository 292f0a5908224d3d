"""The sending half of a link as a state machine: no I/O, no clock, no event loop.

Events go in — the receiver's heads from its HELLO, the origin's heads, batches read from the
journal, frames from the receiver, the time — and actions come out: frame bytes to send, which
partitions to read next and from where, heads to persist. `replication/reship.py` is the thin
asyncio shell that moves bytes between this machine, the journal and a `Connection`.

Rules it keeps (ARCHITECTURE.md section 5):
- the receiver's durable head is the only cursor: each partition is sent from head + 1;
- L2: frames stay in flight up to a window that adapts to bandwidth x round-trip time
  (`replication/window.py`); an ACK frees what it covers;
- J2 on the wire: an ACK that reports a gap for a partition rewinds it to the head it names,
  dropping what was in flight there;
- L3: a session with messages owed and no acknowledged progress for `stall_after_s` is
  stalled (`LinkMonitor.state_at`); a receiver silent for `peer_timeout_s` ends the session.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple

from multiactive.errors import ProtocolError
from multiactive.model.batch import RecordBatch
from multiactive.replication.links import LinkMonitor
from multiactive.replication.window import WindowController
from multiactive.wire.frames import Frame, FrameType
from multiactive.wire.protocol import (
    Heartbeat,
    decode_ack,
    decode_error,
    encode_batches,
    encode_heartbeat,
)


class InFlight(NamedTuple):
    last_seq: int
    size: int
    sent_s: float
    created_ms: int  # of the frame's first batch


def partition_runs(batches: Sequence[RecordBatch]) -> list[tuple[int, list[RecordBatch]]]:
    """Batches grouped by partition, in order (one append holds at most a few per partition)."""
    runs: dict[int, list[RecordBatch]] = {}
    for batch in batches:
        runs.setdefault(batch.partition, []).append(batch)
    return list(runs.items())


class SenderSession:
    """One sending session's rules; the shell feeds it events and sends what it returns."""

    def __init__(
        self,
        monitor: LinkMonitor,
        partitions: int,
        window: WindowController,
        peer_timeout_s: float,
    ) -> None:
        self.monitor = monitor
        self.peer = monitor.link.receiver
        self._partitions = range(partitions)
        self._window = window
        self._peer_timeout_s = peer_timeout_s
        self.cursor: dict[int, int] = {}
        self.in_flight: dict[int, deque[InFlight]] = {}
        self._heads_dirty = False

    # -- events --------------------------------------------------------------------------

    def start(self, receiver_heads: Mapping[int, int], origin_heads: Mapping[int, int],
              now: float) -> None:  # fmt: skip
        """The handshake is done: send every partition from the receiver's head + 1."""
        for partition in self._partitions:
            head = receiver_heads.get(partition, 0)
            self.cursor[partition] = head + 1
            self.in_flight[partition] = deque()
            self.monitor.receiver_heads[partition] = head
        self.monitor.connected(now)
        self.origin_heads(origin_heads)

    def origin_heads(self, heads: Mapping[int, int]) -> None:
        """What the origin's journal holds now, per partition."""
        self.monitor.origin_heads.update(heads)

    def ship(self, partition: int, cursor: int, batches: Sequence[RecordBatch],
             now: float) -> bytes | None:  # fmt: skip
        """The BATCHES frame for consecutive batches of one partition read from `cursor`, or
        None when they no longer start at the cursor (rewound, or trimmed meanwhile)."""
        if not batches or self.cursor.get(partition) != cursor or batches[0].first_seq != cursor:
            return None
        frame = encode_batches(batches)
        monitor = self.monitor
        if not monitor.in_flight_bytes:
            monitor.progressed(now)  # owing starts now, not when the link went idle
            self._window.idle(now)
        last = batches[-1].last_seq
        self.cursor[partition] = last + 1
        self.in_flight[partition].append(InFlight(last, len(frame), now, batches[0].created_ms))
        monitor.in_flight_bytes += len(frame)
        monitor.counted(len(batches), sum(b.count for b in batches), len(frame), now)
        return frame

    def ship_appended(self, batches: Sequence[RecordBatch], now: float) -> list[bytes]:
        """Frames for batches the origin just made durable, where they continue a partition's
        cursor and the window is open; the rest waits for the read loop, in order."""
        frames = []
        for partition, run in partition_runs(batches):
            if self.window_open and run[0].first_seq == self.cursor.get(partition):
                frame = self.ship(partition, run[0].first_seq, run, now)
                if frame is not None:
                    frames.append(frame)
        return frames

    def receive(self, frame: Frame, now: float) -> bool:
        """A frame from the receiver; True when it was an ACK (the window may have opened)."""
        self.monitor.touch(now)
        if frame.type == FrameType.ACK:
            ack = decode_ack(frame)
            self._on_ack(ack.heads, ack.gaps, now)
            return True
        if frame.type == FrameType.ERROR:
            error = decode_error(frame)
            raise ProtocolError(f"{self.peer} closed the link: {error.code}: {error.message}")
        if frame.type != FrameType.HEARTBEAT:
            raise ProtocolError(f"unexpected {frame.type.name} frame on a sending link")
        return False

    def _on_ack(self, heads: Mapping[int, int], gaps: tuple[int, ...], now: float) -> None:
        monitor = self.monitor
        acked = rewound = 0
        oldest_sent: float | None = None
        for partition, head in heads.items():
            flight = self.in_flight.get(partition)
            if flight is None:
                raise ProtocolError(f"ACK for partition {partition}, which does not exist")
            while flight and flight[0].last_seq <= head:
                done = flight.popleft()
                acked += done.size
                oldest_sent = done.sent_s if oldest_sent is None else min(oldest_sent, done.sent_s)
            if head > monitor.receiver_heads.get(partition, 0):
                monitor.progressed(now)
            monitor.receiver_heads[partition] = head
            self._heads_dirty = True
            if partition in gaps:
                rewound += self._rewind(partition, head)
        monitor.in_flight_bytes -= acked + rewound
        self._window.on_ack(now, acked, None if oldest_sent is None else now - oldest_sent)
        stats = self._window.statistics(now)
        monitor.window_bytes = stats.window_bytes
        monitor.rtt_ms = stats.rtt_ms

    def _rewind(self, partition: int, head: int) -> int:
        """The receiver holds `head` and refused what came after it (a gap): send again from
        head + 1. Returns the bytes that were in flight there, now dropped."""
        flight = self.in_flight[partition]
        dropped = sum(entry.size for entry in flight)
        flight.clear()
        self.cursor[partition] = head + 1
        return dropped

    # -- questions the shell asks --------------------------------------------------------

    @property
    def window_open(self) -> bool:
        return self.monitor.in_flight_bytes < self._window.window

    def reads(self) -> Iterator[tuple[int, int]]:
        """(partition, from seq) to read and ship next, while the window stays open."""
        heads = self.monitor.origin_heads
        for partition in self._partitions:
            if not self.window_open:
                return
            cursor = self.cursor[partition]
            if cursor <= heads.get(partition, 0):
                yield partition, cursor

    def owes(self) -> bool:
        """Whether the origin holds anything not yet sent."""
        heads = self.monitor.origin_heads
        return any(self.cursor[p] <= heads.get(p, 0) for p in self._partitions)

    def oldest_owed(self) -> tuple[int | None, list[tuple[int, int]]]:
        """The creation time of the oldest unacknowledged frame in flight, and (partition,
        seq) of the first unacknowledged message of partitions with nothing in flight, whose
        creation time only the journal knows."""
        oldest: int | None = None
        lookups = []
        for partition, head in self.monitor.origin_heads.items():
            acked = self.monitor.receiver_heads.get(partition, 0)
            if acked >= head:
                continue
            flight = self.in_flight.get(partition)
            if flight:
                created = flight[0].created_ms
                oldest = created if oldest is None else min(oldest, created)
            else:
                lookups.append((partition, acked + 1))
        return oldest, lookups

    def heartbeat(self, now_ms: int, oldest_ms: int | None) -> bytes:
        """The HEARTBEAT frame: what the origin holds and its oldest unreceived message."""
        self.monitor.oldest_unreceived_ms = oldest_ms
        return encode_heartbeat(Heartbeat(now_ms, dict(self.monitor.origin_heads), oldest_ms))

    def check_alive(self, now: float) -> None:
        """End the session (ProtocolError) when the receiver has been silent too long."""
        silent = now - self.monitor.last_frame_s
        if silent > self._peer_timeout_s:
            raise ProtocolError(f"no frame from {self.peer} for {self._peer_timeout_s:.0f} s")

    def heads_to_save(self) -> dict[int, int] | None:
        """The receiver's acknowledged heads when they changed since the last call (J4)."""
        if not self._heads_dirty:
            return None
        self._heads_dirty = False
        return dict(self.monitor.receiver_heads)
