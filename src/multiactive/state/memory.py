"""In-memory state: the twin of the SQLite and Redis states for unit tests and the quick demo."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from multiactive.errors import StaleStep
from multiactive.model.message import StreamId
from multiactive.state.base import (
    BUILTIN_TYPES,
    COUNTER_ADD,
    DEFAULT_ZSET_CAP,
    KV_DEL,
    KV_SET,
    ZSET_ADD,
    ZSET_REM,
    Commit,
    DeadLetter,
    Entry,
    Member,
    OpTuple,
    Snapshot,
    StateBackend,
    Watermark,
)
from multiactive.state.ops import FILL_ORIGIN, fill_wins, newer, sorted_snapshot


class MemoryState(StateBackend):
    backend = "memory"

    def __init__(self, zset_cap: int = DEFAULT_ZSET_CAP) -> None:
        self.zset_cap = zset_cap
        self._entries: dict[str, Entry] = {}
        self._counters: dict[str, int] = {}
        self._zsets: dict[str, dict[bytes, Member]] = {}
        self._watermarks: dict[StreamId, Watermark] = {}
        self._dead: dict[tuple[str, int, int], DeadLetter] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def watermarks(self) -> dict[StreamId, Watermark]:
        return dict(self._watermarks)

    async def commit(self, *steps: Commit) -> None:
        marks = dict(self._watermarks)
        for step in steps:
            current = marks.get(step.stream, Watermark())
            if step.through_seq <= current.applied:
                raise StaleStep(step.stream, current.applied, step.through_seq)
            marks[step.stream] = Watermark(step.through_seq, current.count + step.processed)
            for op in step.builtin:  # refuse before any effect, as one transaction would
                if op[0] not in BUILTIN_TYPES:
                    raise ValueError(f"{op[0]!r} is not a built-in operation")
        for step in steps:
            for op in step.builtin:
                self._apply(op)
            for letter in step.dead:
                self._dead[(letter.origin, letter.partition, letter.seq)] = letter
        self._watermarks = marks

    def _apply(self, op: OpTuple) -> None:
        type_, key, version, origin, payload = op
        if type_ in (KV_SET, KV_DEL):
            self._put([Entry(key, payload if type_ == KV_SET else None, version, origin)])
        elif type_ == COUNTER_ADD:
            self._counters[key] = self._counters.get(key, 0) + int(payload)
        elif type_ in (ZSET_ADD, ZSET_REM):
            members = self._zsets.setdefault(key, {})
            held = members.get(payload)
            if held is None or newer(version, origin, held.version, held.origin):
                members[payload] = Member(payload, version, origin, type_ == ZSET_ADD)
        else:
            raise ValueError(f"{type_!r} is not a built-in operation")

    async def get(self, key: str) -> Entry | None:
        return self._entries.get(key)

    async def put(self, entries: Sequence[Entry]) -> int:
        return self._put(entries)

    def _put(self, entries: Iterable[Entry]) -> int:
        won = 0
        for entry in entries:
            held = self._entries.get(entry.key)
            if held is None or newer(entry.version, entry.origin, held.version, held.origin):
                self._entries[entry.key] = entry
                won += 1
        return won

    async def fill(self, key: str, value: bytes, version: int) -> bool:
        if not fill_wins(version, self._entries.get(key)):
            return False
        self._entries[key] = Entry(key, value, version, FILL_ORIGIN)
        return True

    async def entries(self) -> list[Entry]:
        return [self._entries[key] for key in sorted(self._entries)]

    async def counter(self, key: str) -> int:
        return self._counters.get(key, 0)

    async def members(self, key: str) -> list[Member]:
        members = self._zsets.get(key, {})
        return [members[m] for m in sorted(members)]

    async def snapshot(self) -> Snapshot:
        return sorted_snapshot(
            self._entries.values(),
            self._counters.items(),
            ((key, list(members.values())) for key, members in self._zsets.items()),
        )

    async def forget_dead_letters(self, positions: Sequence[tuple[str, int, int]]) -> int:
        return sum(self._dead.pop(tuple(p), None) is not None for p in positions)  # type: ignore[arg-type]

    async def dead_letters(self, limit: int = 1000) -> list[DeadLetter]:
        ordered = sorted(
            self._dead.values(), key=lambda d: (d.parked_ms, d.origin, d.partition, d.seq)
        )
        return ordered[:limit]
