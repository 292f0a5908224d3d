"""The newest batches of every stream, kept in memory after they are durable.

Links and the processor read what was just appended, almost always; serving those reads from
memory spares a thread hand-off and an SQLite query per read, which is most of the latency a
message sees between two fsyncs. The cache is bounded in bytes (oldest out first, across all
streams) and only ever holds batches in seq order without holes, so what it serves is exactly
what the journal holds.

A read finds its first batch by binary search: at low rates every batch holds one message,
so a stream can have tens of thousands of batches cached, and a scan from the oldest would
cost more than the read it spares.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque

from multiactive.model.batch import RecordBatch
from multiactive.model.message import StreamId

DEFAULT_TAIL_CACHE_BYTES = 64 * 1024 * 1024
_COMPACT_AFTER = 1024  # evicted entries a stream's lists keep before they are cut off
_EVICTED = RecordBatch("", 0, 1, 1, 0, 0, 0, b"")  # what an evicted entry's slot holds


class _Run:
    """One stream's cached batches, contiguous and in seq order, from index `start` on;
    `lasts` holds each batch's last seq, for the binary search."""

    __slots__ = ("batches", "lasts", "start")

    def __init__(self) -> None:
        self.batches: list[RecordBatch] = []
        self.lasts: list[int] = []
        self.start = 0

    def __len__(self) -> int:
        return len(self.batches) - self.start

    def clear(self) -> None:
        self.batches.clear()
        self.lasts.clear()
        self.start = 0

    def evict_first(self) -> None:
        """Let go of the oldest batch now (its slot is cut off later, with others): a run
        that kept evicted batches until then held up to _COMPACT_AFTER batches past the
        cap, and with them the receive buffers their bytes lie in."""
        self.batches[self.start] = _EVICTED
        self.start += 1
        if self.start >= _COMPACT_AFTER and self.start * 2 >= len(self.batches):
            del self.batches[: self.start]
            del self.lasts[: self.start]
            self.start = 0


class TailCache:
    __slots__ = ("_bytes", "_cap", "_order", "_streams")

    def __init__(self, cap_bytes: int = DEFAULT_TAIL_CACHE_BYTES) -> None:
        self._cap = cap_bytes
        self._streams: dict[StreamId, _Run] = {}
        # Every batch the cache references, oldest first, including those of runs dropped
        # since: `_bytes` counts them all, so memory stays under the cap either way.
        self._order: deque[RecordBatch] = deque()
        self._bytes = 0

    @property
    def size(self) -> int:
        return self._bytes

    def add(self, batches: list[RecordBatch]) -> None:
        for batch in batches:
            run = self._streams.get(batch.stream)
            if run is None:
                run = self._streams[batch.stream] = _Run()
            elif run and run.lasts[-1] + 1 != batch.first_seq:
                run.clear()  # not contiguous: start over from this batch
            run.batches.append(batch)
            run.lasts.append(batch.last_seq)
            self._order.append(batch)
            self._bytes += batch.size
        while self._bytes > self._cap and self._order:
            oldest = self._order.popleft()
            self._bytes -= oldest.size
            run = self._streams[oldest.stream]
            if run and run.batches[run.start] is oldest:
                run.evict_first()

    def forget(self, streams: list[StreamId]) -> None:
        """Stop serving these streams from memory (after a trim, say) until new appends."""
        for stream in streams:
            run = self._streams.get(stream)
            if run:
                run.clear()

    def read(self, stream: StreamId, from_seq: int, max_bytes: int) -> list[RecordBatch] | None:
        """The batches `Journal.read` would return, or None when the cache does not hold
        `from_seq`."""
        run = self._streams.get(stream)
        if not run or run.batches[run.start].first_seq > from_seq or run.lasts[-1] < from_seq:
            # Not covered; past the end it may be a batch the writer thread has made durable
            # and counted in the heads but that is not cached yet: storage has it.
            return None
        batches = run.batches
        out: list[RecordBatch] = []
        size = 0
        for index in range(bisect_left(run.lasts, from_seq, run.start), len(batches)):
            batch = batches[index]
            if out and size + batch.size > max_bytes:
                break
            out.append(batch)
            size += batch.size
        return out
