"""The newest batches of every stream, kept in memory after they are durable.

Links and the processor read what was just appended, almost always; serving those reads from
memory spares a thread hand-off and an SQLite query per read, which is most of the latency a
message sees between two fsyncs. The cache is bounded in bytes (oldest out first, across all
streams) and only ever holds batches in seq order without holes, so what it serves is exactly
what the journal holds.
"""

from __future__ import annotations

from collections import deque

from multiactive.model.batch import RecordBatch
from multiactive.model.message import StreamId

DEFAULT_TAIL_CACHE_BYTES = 64 * 1024 * 1024


class TailCache:
    __slots__ = ("_bytes", "_cap", "_order", "_streams")

    def __init__(self, cap_bytes: int = DEFAULT_TAIL_CACHE_BYTES) -> None:
        self._cap = cap_bytes
        self._streams: dict[StreamId, deque[RecordBatch]] = {}
        self._order: deque[RecordBatch] = deque()
        self._bytes = 0

    @property
    def size(self) -> int:
        return self._bytes

    def add(self, batches: list[RecordBatch]) -> None:
        for batch in batches:
            cached = self._streams.setdefault(batch.stream, deque())
            if cached and cached[-1].last_seq + 1 != batch.first_seq:
                self._drop(cached)  # not contiguous: start over from this batch
            cached.append(batch)
            self._order.append(batch)
            self._bytes += batch.size
        while self._bytes > self._cap and self._order:
            oldest = self._order.popleft()
            cached = self._streams[oldest.stream]
            if cached and cached[0] is oldest:
                cached.popleft()
                self._bytes -= oldest.size

    def forget(self, streams: list[StreamId]) -> None:
        """Stop serving these streams from memory (after a trim, say) until new appends."""
        for stream in streams:
            cached = self._streams.get(stream)
            if cached:
                self._drop(cached)

    def _drop(self, cached: deque[RecordBatch]) -> None:
        self._bytes -= sum(batch.size for batch in cached)
        cached.clear()

    def read(self, stream: StreamId, from_seq: int, max_bytes: int) -> list[RecordBatch] | None:
        """The batches `Journal.read` would return, or None when the cache does not hold
        `from_seq`."""
        cached = self._streams.get(stream)
        if not cached or cached[0].first_seq > from_seq or cached[-1].last_seq < from_seq:
            # Not covered; past the end it may be a batch the writer thread has made durable
            # and counted in the heads but that is not cached yet: storage has it.
            return None
        out: list[RecordBatch] = []
        size = 0
        for batch in cached:
            if batch.last_seq < from_seq:
                continue
            if out and size + batch.size > max_bytes:
                break
            out.append(batch)
            size += batch.size
        return out
