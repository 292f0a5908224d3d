"""The journal interface and the decisions every backend shares (ARCHITECTURE.md section 4).

A journal stores record batches per stream (origin, partition) and keeps, per stream, the
head: the highest seq stored. Invariants, pinned by `tests/unit/journal/`:

- J1: a stream holds exactly seqs 1..head (from its trim point on), no gap, no duplicate.
- J2: a remote batch whose seqs are all <= head is a no-op; one starting above head + 1 is
  refused with the head to resume from; one straddling head keeps only its new part.
- J3: `append_local` returns only after its batches are durable (callers acknowledge then).
- J4: `trim` drops only batches at or below the floor it is given (what every peer has, and
  older than retention); computing that floor is the replication layer's job.

Backends implement the `_`-prefixed storage primitives; the decisions (`plan_local`,
`plan_remote`) are made here, once, so every backend answers the same way.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import overload

from multiactive.aio import Pulse
from multiactive.errors import JournalError
from multiactive.journal.tail import TailCache
from multiactive.logs import get_logger
from multiactive.model.batch import CODEC_NONE, RecordBatch, build_batch, slice_batch
from multiactive.model.message import Message, Position, Row, StreamId

log = get_logger("journal")


@dataclass(frozen=True, slots=True)
class LocalGroup:
    """Messages accepted at this site for one partition, in order, to become one batch."""

    partition: int
    rows: Sequence[Row]
    created_ms: int


@dataclass(frozen=True, slots=True)
class Accepted:
    """Where a local message landed; `duplicate` if its id had been journaled before."""

    id: str
    position: Position
    duplicate: bool


class LocalAppend(Sequence[Accepted]):
    """Where each message of one `append_local` call landed, in call order.

    Kept as plain lists (no object per message on the ingress hot path); indexing or
    iterating gives `Accepted` records, built on demand.
    """

    __slots__ = ("duplicates", "ids", "partitions", "seqs", "site")

    def __init__(
        self,
        site: str,
        ids: list[str],
        partitions: list[int],
        seqs: list[int],
        duplicates: set[int],
    ) -> None:
        self.site = site
        self.ids = ids
        self.partitions = partitions
        self.seqs = seqs
        self.duplicates = duplicates  # indexes of messages whose id was journaled before

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> Accepted: ...

    @overload
    def __getitem__(self, index: slice) -> list[Accepted]: ...

    def __getitem__(self, index: int | slice) -> Accepted | list[Accepted]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        position = Position(self.site, self.partitions[index], self.seqs[index])
        return Accepted(self.ids[index], position, index in self.duplicates)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


@dataclass(slots=True)
class LocalPlan:
    batches: list[RecordBatch]
    result: LocalAppend
    index: list[tuple[str, int, int]]  # (id, partition, seq) of new messages


@dataclass(slots=True)
class RemotePlan:
    batches: list[RecordBatch] = field(default_factory=list)
    duplicates: int = 0
    gaps: dict[StreamId, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RemoteResult:
    """What `append_remote` did: heads after it, batches stored, skipped, and refused gaps."""

    heads: dict[StreamId, int]
    stored: int
    duplicates: int
    gaps: dict[StreamId, int]
    batches: tuple[RecordBatch, ...] = ()


@dataclass(frozen=True, slots=True)
class JournalStatistics:
    backend: str
    streams: int
    batches_appended: int
    messages_appended: int
    bytes_appended: int
    duplicate_batches: int
    refused_gaps: int
    deduplicated_ids: int


class Journal(abc.ABC):
    """One site's durable store of batches. Methods are called from one event loop."""

    backend = "abstract"

    def __init__(self, site: str, codec: int = CODEC_NONE) -> None:
        self.site = site
        self.codec = codec
        self.appended = Pulse()
        # Called with (local, batches) once batches are durable: the audit trail listens.
        self.observers: list[Callable[[bool, Sequence[RecordBatch]], None]] = []
        self._tail = TailCache()
        # Keep received batches in the tail cache: only a processor in this process reads
        # them (links ship only their origin's own streams); the node turns this off when its
        # processor runs in the applier process, so received frames' buffers are freed (and
        # used again) as soon as they are stored.
        self.cache_remote = True
        self.max_version = 0  # greatest message version stored: a restarted clock starts beyond
        self._heads: dict[StreamId, int] = {}
        self._counters = dict.fromkeys(
            ("batches", "messages", "bytes", "duplicates", "gaps", "dedup"), 0
        )

    # -- the interface -------------------------------------------------------------------

    @abc.abstractmethod
    async def open(self) -> None:
        """Create or recover storage and load the heads."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release storage; appends after this fail."""

    async def open_for_reading(self) -> None:
        """Open storage only to read it, in a process that follows a journal another process
        writes (the site's applier); heads then come from `follow()`."""
        raise JournalError(
            f"a {self.backend} journal lives in its site's process; another process cannot "
            "read it (run the processor inline: separate_processor = false)"
        )

    def follow(self, heads: dict[StreamId, int], batches: Sequence[RecordBatch] = ()) -> None:
        """Heads that the writing process made durable: reads may now go up to them. The
        writer may pass (small) batches it just stored, to be read from memory."""
        if batches:
            self._tail.add(list(batches))
        for stream, head in heads.items():
            if head > self._heads.get(stream, 0):
                self._heads[stream] = head
        self.appended.fire()

    def head(self, stream: StreamId) -> int:
        return self._heads.get(stream, 0)

    def heads(self, origin: str | None = None) -> dict[StreamId, int]:
        return {s: h for s, h in self._heads.items() if origin is None or s.origin == origin}

    async def append_local(self, groups: Sequence[LocalGroup]) -> LocalAppend:
        """Journal messages accepted here (J3): ids seen before map to their first position."""
        results, batches = await self._append_local(groups)
        self._tail.add(batches)
        self.appended.fire()
        self._tell(True, batches)
        return results

    async def append_remote(self, batches: Sequence[RecordBatch]) -> RemoteResult:
        """Store batches received from their origin, applying J2 to each."""
        result = await self._append_remote(batches)
        if result.stored:
            if self.cache_remote:
                self._tail.add(list(result.batches))
            self.appended.fire()
            self._tell(False, result.batches)
        return result

    async def check(self) -> None:
        """Raise `StoreError` if the journal's storage does not answer now. After an append
        whose outcome was unknown, first bring the cached heads in line with storage
        (`adopt`), so that the next append continues the stored streams. Embedded journals
        (memory, SQLite) always answer."""
        return None

    def adopt(self, batches: Sequence[RecordBatch]) -> None:
        """Batches found stored after an append whose answer was lost: heads, the tail cache
        and observers learn of them as if that append had answered."""
        if not batches:
            return
        self.commit_plan(batches)
        self._tail.add(list(batches))
        self.appended.fire()
        for local in (True, False):
            found = [b for b in batches if (b.origin == self.site) == local]
            if found:
                self._tell(local, found)

    def _tell(self, local: bool, batches: Sequence[RecordBatch]) -> None:
        """Tell observers about durable batches; their failures never fail the append."""
        for observer in list(self.observers):
            try:
                observer(local, batches)
            except Exception as exc:
                log.warning("journal_observer_failed", site=self.site, reason=exc)

    async def read(self, stream: StreamId, from_seq: int, max_bytes: int) -> list[RecordBatch]:
        """Stored batches of a stream whose seqs reach `from_seq` or beyond, in order, at least
        one (when there is one) and about `max_bytes` in all. Recent batches come from memory."""
        cached = self._tail.read(stream, from_seq, max_bytes)
        if cached is not None:
            return cached
        return await self._read(stream, from_seq, max_bytes)

    async def find_message(self, position: Position) -> Message | None:
        """The journaled message at a position, if this journal holds it."""
        stream = StreamId(position.origin, position.partition)
        for batch in await self.read(stream, position.seq, 1):
            if batch.first_seq <= position.seq <= batch.last_seq:
                for message in batch.messages():
                    if message.seq == position.seq:
                        return message
        return None

    async def holes(self, stream: StreamId) -> list[tuple[int, int]]:
        """Seq ranges missing between the lowest stored seq and the head (J1 says none; a
        damaged or hand-edited journal may have some). The reconciler re-fetches them."""
        missing: list[tuple[int, int]] = []
        expected = await self.low_water(stream)
        head = self.head(stream)
        while expected <= head:
            batches = await self._read(stream, expected, 64 << 20)
            if not batches:
                missing.append((expected, head))
                break
            for batch in batches:
                if batch.first_seq > expected:
                    missing.append((expected, batch.first_seq - 1))
                expected = batch.last_seq + 1
        return missing

    async def repair(self, batches: Sequence[RecordBatch]) -> int:
        """Store batches that fill holes below the head exactly; return how many were
        stored. A batch that overlaps what is stored, or lies above the head, is refused
        (J1 and J2 still hold: repairs never change stored messages)."""
        stored = 0
        for batch in batches:
            if batch.stream.origin == self.site and batch.last_seq > self.head(batch.stream):
                raise JournalError(
                    f"repair batch {batch.stream}@{batch.first_seq} is above the head"
                )
            holes = await self.holes(batch.stream)
            if not any(a <= batch.first_seq and batch.last_seq <= b for a, b in holes):
                raise JournalError(
                    f"repair batch {batch.stream}@{batch.first_seq}..{batch.last_seq} does not "
                    f"fill a hole (holes: {holes or 'none'})"
                )
            await self._store_repair(batch)
            stored += 1
        return stored

    @abc.abstractmethod
    async def _store_repair(self, batch: RecordBatch) -> None:
        """Store one batch below the head, inside a hole (checked by `repair`)."""

    @abc.abstractmethod
    async def created_at(self, stream: StreamId, seq: int) -> int | None:
        """Origin wall-clock time (ms) of the batch holding `seq`, if it is stored here."""

    @abc.abstractmethod
    async def lookup(self, ids: Sequence[str]) -> dict[str, Position]:
        """Positions of locally accepted messages by request id (ids not found are absent)."""

    @abc.abstractmethod
    async def low_water(self, stream: StreamId) -> int:
        """The lowest seq still stored (head + 1 when the stream is empty or fully trimmed)."""

    async def trim(self, floors: dict[StreamId, int], older_than_ms: int) -> int:
        """Drop batches entirely at or below `floors[stream]` and created before
        `older_than_ms`; return how many batches were dropped (J4)."""
        dropped = await self._trim(floors, older_than_ms)
        if dropped:
            self._tail.forget(list(floors))
        return dropped

    @abc.abstractmethod
    async def _trim(self, floors: dict[StreamId, int], older_than_ms: int) -> int:
        """`trim` in storage."""

    @abc.abstractmethod
    async def save_peer_heads(self, peer: str, heads: dict[StreamId, int]) -> None:
        """Remember what a peer has acknowledged (for trimming after a restart)."""

    @abc.abstractmethod
    async def peer_heads(self) -> dict[str, dict[StreamId, int]]:
        """What each peer acknowledged, as last saved."""

    def statistics(self) -> JournalStatistics:
        c = self._counters
        return JournalStatistics(
            self.backend,
            len(self._heads),
            c["batches"],
            c["messages"],
            c["bytes"],
            c["duplicates"],
            c["gaps"],
            c["dedup"],
        )

    # -- storage primitives --------------------------------------------------------------

    @abc.abstractmethod
    async def _append_local(
        self, groups: Sequence[LocalGroup]
    ) -> tuple[LocalAppend, list[RecordBatch]]: ...

    @abc.abstractmethod
    async def _append_remote(self, batches: Sequence[RecordBatch]) -> RemoteResult: ...

    @abc.abstractmethod
    async def _read(self, stream: StreamId, from_seq: int, max_bytes: int) -> list[RecordBatch]:
        """`read` from storage (the tail cache did not reach back far enough)."""

    # -- shared decisions (run wherever the backend runs its writes) ----------------------

    def plan_local(
        self,
        groups: Sequence[LocalGroup],
        known: Callable[[list[str]], dict[str, Position]],
    ) -> LocalPlan:
        """Assign seqs to new messages, map repeated ids to where they already are."""
        ids = [row[0] for group in groups for row in group.rows]
        seen = known(ids)
        if not seen and len(set(ids)) == len(ids):
            return self._plan_fresh(groups, ids)
        return self._plan_with_repeats(groups, ids, seen)

    def _plan_fresh(self, groups: Sequence[LocalGroup], ids: list[str]) -> LocalPlan:
        """Every id is new (the usual case): consecutive seqs per partition, list-at-a-time."""
        plan = LocalPlan([], LocalAppend(self.site, ids, [], [], set()), [])
        heads: dict[int, int] = {}
        offset = 0
        for group in groups:
            partition, count = group.partition, len(group.rows)
            first = heads.get(partition, self._heads.get(StreamId(self.site, partition), 0)) + 1
            seqs = range(first, first + count)
            plan.result.partitions.extend(repeat(partition, count))
            plan.result.seqs.extend(seqs)
            plan.index.extend(zip(ids[offset : offset + count], repeat(partition), seqs))
            plan.batches.append(
                build_batch(self.site, partition, first, group.rows, group.created_ms, self.codec)
            )
            heads[partition] = first + count - 1
            offset += count
        return plan

    def _plan_with_repeats(
        self, groups: Sequence[LocalGroup], ids: list[str], seen: dict[str, Position]
    ) -> LocalPlan:
        plan = LocalPlan([], LocalAppend(self.site, ids, [], [], set()), [])
        result = plan.result
        heads: dict[int, int] = {}
        for group in groups:
            stream = StreamId(self.site, group.partition)
            fresh: list[Row] = []
            next_seq = heads.get(group.partition, self._heads.get(stream, 0)) + 1
            for row in group.rows:
                where = seen.get(row[0])
                if where is not None:
                    result.duplicates.add(len(result.seqs))
                    result.partitions.append(where.partition)
                    result.seqs.append(where.seq)
                    continue
                where = Position(self.site, group.partition, next_seq + len(fresh))
                seen[row[0]] = where
                fresh.append(row)
                plan.index.append((row[0], group.partition, where.seq))
                result.partitions.append(group.partition)
                result.seqs.append(where.seq)
            if fresh:
                heads[group.partition] = next_seq + len(fresh) - 1
                plan.batches.append(
                    build_batch(
                        self.site, group.partition, next_seq, fresh, group.created_ms, self.codec
                    )
                )
        return plan

    def plan_remote(self, batches: Iterable[RecordBatch]) -> RemotePlan:
        """Apply J2 to each batch against the heads (as they will be after earlier ones)."""
        plan = RemotePlan()
        heads: dict[StreamId, int] = {}
        for batch in batches:
            stream = batch.stream
            if stream.origin == self.site:
                raise JournalError(
                    f"refusing a batch of this site's own stream {stream} from elsewhere"
                )
            head = heads.get(stream, self._heads.get(stream, 0))
            if stream in plan.gaps or batch.last_seq <= head:
                plan.duplicates += stream not in plan.gaps
                continue
            if batch.first_seq > head + 1:
                plan.gaps[stream] = head
                continue
            if batch.first_seq <= head:
                batch = slice_batch(batch, head + 1)
            plan.batches.append(batch)
            heads[stream] = batch.last_seq
        return plan

    def commit_plan(self, batches: Sequence[RecordBatch], deduplicated: int = 0) -> None:
        """Advance cached heads and counters after the backend made `batches` durable."""
        for batch in batches:
            self._heads[batch.stream] = batch.last_seq
            self.max_version = max(self.max_version, batch.max_version)
            self._counters["batches"] += 1
            self._counters["messages"] += batch.count
            self._counters["bytes"] += batch.size
        self._counters["dedup"] += deduplicated

    def remote_result(self, plan: RemotePlan) -> RemoteResult:
        self._counters["duplicates"] += plan.duplicates
        self._counters["gaps"] += len(plan.gaps)
        touched = {b.stream for b in plan.batches} | set(plan.gaps)
        return RemoteResult(
            {s: self.head(s) for s in touched},
            len(plan.batches),
            plan.duplicates,
            plan.gaps,
            tuple(plan.batches),
        )
