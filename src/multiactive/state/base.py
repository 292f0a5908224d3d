"""The state interface: a site's cache, built from every message in the same order everywhere.

A state backend keeps
- the effects of built-in operations (`state/ops.py`): key-value registers with tombstones,
  counters, and capped sets of member registers;
- watermarks: per stream (origin, partition), the highest seq applied and how many messages
  were applied in all (the count makes "applied exactly once" checkable, not assumed);
- dead letters: messages parked after bounded retries, with their error.

`commit()` is the only way watermarks move, and it applies built-in effects, parks dead
letters and moves the watermark of each step in one atomic step (P3). Because effect and
watermark move together, a state store may lose its newest commits in a crash without harm:
the processor applies the same messages again from the durable journal, exactly once. So
state backends need no fsync of their own; the journal is the durable record.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from multiactive.model.message import Message, StreamId
from multiactive.model.record import Record
from multiactive.state.ops import (
    BUILTIN_TYPES,
    COUNTER_ADD,
    DEFAULT_ZSET_CAP,
    KV_DEL,
    KV_SET,
    ZSET_ADD,
    ZSET_REM,
    Entry,
    Member,
    Snapshot,
    digest,
    sorted_snapshot,
    zset_view,
)

__all__ = [
    "BUILTIN_TYPES",
    "COUNTER_ADD",
    "DEFAULT_ZSET_CAP",
    "KV_DEL",
    "KV_SET",
    "ZSET_ADD",
    "ZSET_REM",
    "Commit",
    "DeadLetter",
    "Entry",
    "Member",
    "Op",
    "OpTuple",
    "Snapshot",
    "StateBackend",
    "Watermark",
]


# A built-in message as the state backend needs it: (type, key, version, origin, payload).
# The processor passes plain tuples (the hot path); `Op` names the fields for everyone else.
OpTuple = tuple[str, str, int, str, bytes]


class Op(NamedTuple):
    """A built-in message as the state backend needs it (no id, seq or headers)."""

    type: str
    key: str
    version: int
    origin: str
    payload: bytes

    @classmethod
    def of(cls, message: Message) -> Op:
        return cls(message.type, message.key, message.version, message.origin, message.payload)


@dataclass(frozen=True, slots=True)
class Watermark:
    applied: int = 0  # highest seq applied (or parked)
    count: int = 0  # messages applied or parked, in all


@dataclass(frozen=True, slots=True)
class DeadLetter(Record):
    origin: str
    partition: int
    seq: int
    id: str
    type: str
    key: str
    error: str
    attempts: int
    parked_ms: int


@dataclass(frozen=True, slots=True)
class Commit:
    """One atomic step of a stream: built-in effects, dead letters, new watermark."""

    stream: StreamId
    through_seq: int
    processed: int  # messages covered by this step (applied by any path, or parked)
    builtin: Sequence[OpTuple] = ()
    dead: Sequence[DeadLetter] = ()


def entry_for(op: OpTuple) -> Entry:
    """The entry a built-in operation would write."""
    type_, key, version, origin, payload = op
    return Entry(key, payload if type_ == KV_SET else None, version, origin)


def digest_entries(entries: Iterable[Entry]) -> str:
    """The digest of a state holding only these key-value entries."""
    return digest(sorted_snapshot(entries, (), ()))


class StateBackend(abc.ABC):
    """A site's state. Methods are called from one event loop."""

    backend = "abstract"
    zset_cap = DEFAULT_ZSET_CAP

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def watermarks(self) -> dict[StreamId, Watermark]:
        """Applied watermarks of every stream seen so far."""

    @abc.abstractmethod
    async def commit(self, *steps: Commit) -> None:
        """Apply built-in effects, park dead letters and move the watermarks of one or more
        steps, all atomically; refuse (and change nothing) if a watermark would not advance."""

    @abc.abstractmethod
    async def get(self, key: str) -> Entry | None:
        """The entry of a key (tombstones included), or None if never written."""

    @abc.abstractmethod
    async def put(self, entries: Sequence[Entry]) -> int:
        """Write entries under last-writer-wins (for user handlers); return how many won."""

    @abc.abstractmethod
    async def fill(self, key: str, value: bytes, version: int) -> bool:
        """Write a cache-aside fill atomically under `ops.fill_wins`; True if it was written."""

    @abc.abstractmethod
    async def entries(self) -> list[Entry]:
        """Every key-value entry, in key order (for reports and tests; not a hot path)."""

    @abc.abstractmethod
    async def counter(self, key: str) -> int:
        """A counter's value (0 if never added to)."""

    @abc.abstractmethod
    async def members(self, key: str) -> list[Member]:
        """Every member register of a set, present or not, in member order."""

    async def zset(self, key: str) -> list[Member]:
        """A set as readers see it: its `zset_cap` newest present members, newest first."""
        return zset_view(await self.members(key), self.zset_cap)

    @abc.abstractmethod
    async def snapshot(self) -> Snapshot:
        """Everything held, in canonical order (for digests and checkers; not a hot path)."""

    @abc.abstractmethod
    async def forget_dead_letters(self, positions: Sequence[tuple[str, int, int]]) -> int:
        """Drop dead letters at these (origin, partition, seq) once they were re-applied;
        return how many were held."""

    @abc.abstractmethod
    async def dead_letters(self, limit: int = 1000) -> list[DeadLetter]:
        """Parked messages, oldest first."""

    async def digest(self) -> str:
        return digest(await self.snapshot())
