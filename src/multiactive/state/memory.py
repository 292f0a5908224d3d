"""In-memory state: the twin of the SQLite state for unit tests and the quick demo."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from multiactive.model.message import StreamId
from multiactive.state.base import (
    Commit,
    DeadLetter,
    Entry,
    StateBackend,
    Watermark,
    entry_for,
    newer,
)


class MemoryState(StateBackend):
    backend = "memory"

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._watermarks: dict[StreamId, Watermark] = {}
        self._dead: list[DeadLetter] = []

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
                raise ValueError(
                    f"watermark of {step.stream} would move from {current.applied} "
                    f"to {step.through_seq}"
                )
            marks[step.stream] = Watermark(step.through_seq, current.count + step.processed)
        for step in steps:
            self._put(entry_for(m) for m in step.builtin)
            self._dead.extend(step.dead)
        self._watermarks = marks

    async def get(self, key: str) -> Entry | None:
        return self._entries.get(key)

    async def put(self, entries: Sequence[Entry]) -> int:
        return self._put(entries)

    def _put(self, entries: Iterable[Entry]) -> int:
        won = 0
        for entry in entries:
            if newer(entry.version, entry.origin, self._entries.get(entry.key)):
                self._entries[entry.key] = entry
                won += 1
        return won

    async def entries(self) -> list[Entry]:
        return [self._entries[key] for key in sorted(self._entries)]

    async def dead_letters(self, limit: int = 1000) -> list[DeadLetter]:
        return self._dead[:limit]
