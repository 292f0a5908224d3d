"""In-memory journal: the twin of the SQLite journal for unit tests and quick experiments.

It keeps every invariant except durability across process restarts.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from multiactive.journal.base import Journal, LocalAppend, LocalGroup, RemoteResult
from multiactive.model.batch import CODEC_NONE, RecordBatch
from multiactive.model.message import Position, StreamId


class MemoryJournal(Journal):
    backend = "memory"

    def __init__(self, site: str, codec: int = CODEC_NONE) -> None:
        super().__init__(site, codec)
        self._batches: dict[StreamId, list[RecordBatch]] = {}
        self._last_seqs: dict[StreamId, list[int]] = {}
        self._ids: dict[str, Position] = {}
        self._peers: dict[str, dict[StreamId, int]] = {}
        self._closed = False

    async def open(self) -> None:
        self._closed = False

    async def close(self) -> None:
        self._closed = True

    async def _append_local(
        self, groups: Sequence[LocalGroup]
    ) -> tuple[LocalAppend, list[RecordBatch]]:
        self._check_open()
        plan = self.plan_local(groups, lambda ids: {i: self._ids[i] for i in ids if i in self._ids})
        self._store(plan.batches)
        for id_, partition, seq in plan.index:
            self._ids[id_] = Position(self.site, partition, seq)
        self.commit_plan(plan.batches, deduplicated=len(plan.result.duplicates))
        return plan.result, plan.batches

    async def _append_remote(self, batches: Sequence[RecordBatch]) -> RemoteResult:
        self._check_open()
        plan = self.plan_remote(batches)
        self._store(plan.batches)
        self.commit_plan(plan.batches)
        return self.remote_result(plan)

    def _store(self, batches: Sequence[RecordBatch]) -> None:
        for batch in batches:
            self._batches.setdefault(batch.stream, []).append(batch)
            self._last_seqs.setdefault(batch.stream, []).append(batch.last_seq)

    async def _read(self, stream: StreamId, from_seq: int, max_bytes: int) -> list[RecordBatch]:
        self._check_open()
        stored = self._batches.get(stream, [])
        start = bisect.bisect_left(self._last_seqs.get(stream, []), from_seq)
        out: list[RecordBatch] = []
        size = 0
        for batch in stored[start:]:
            if out and size + batch.size > max_bytes:
                break
            out.append(batch)
            size += batch.size
        return out

    async def _store_repair(self, batch: RecordBatch) -> None:
        last_seqs = self._last_seqs.setdefault(batch.stream, [])
        index = bisect.bisect_left(last_seqs, batch.last_seq)
        last_seqs.insert(index, batch.last_seq)
        self._batches.setdefault(batch.stream, []).insert(index, batch)

    async def created_at(self, stream: StreamId, seq: int) -> int | None:
        stored = self._batches.get(stream, [])
        index = bisect.bisect_left(self._last_seqs.get(stream, []), seq)
        if index < len(stored) and stored[index].first_seq <= seq:
            return stored[index].created_ms
        return None

    async def lookup(self, ids: Sequence[str]) -> dict[str, Position]:
        return {i: self._ids[i] for i in ids if i in self._ids}

    async def low_water(self, stream: StreamId) -> int:
        stored = self._batches.get(stream)
        return stored[0].first_seq if stored else self.head(stream) + 1

    async def _trim(self, floors: dict[StreamId, int], older_than_ms: int) -> int:
        dropped = 0
        for stream, floor in floors.items():
            stored = self._batches.get(stream, [])
            keep = 0
            while (
                keep < len(stored)
                and stored[keep].last_seq <= floor
                and stored[keep].created_ms < older_than_ms
            ):
                keep += 1
            if keep:
                gone = stored[:keep]
                del stored[:keep]
                del self._last_seqs[stream][:keep]
                dropped += keep
                self._forget_ids(gone)
        return dropped

    def _forget_ids(self, batches: list[RecordBatch]) -> None:
        if batches[0].origin != self.site:
            return
        for batch in batches:
            for row in batch.rows():
                self._ids.pop(row[0], None)

    async def save_peer_heads(self, peer: str, heads: dict[StreamId, int]) -> None:
        self._peers.setdefault(peer, {}).update(heads)

    async def peer_heads(self) -> dict[str, dict[StreamId, int]]:
        return {peer: dict(heads) for peer, heads in self._peers.items()}

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the journal is closed")
