"""The message: one write request, as accepted by its origin site (ARCHITECTURE.md section 3)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

Headers = dict[str, str]


class StreamId(NamedTuple):
    """One (origin, partition): the unit of order, of journaling and of watermarks."""

    origin: str
    partition: int

    def __str__(self) -> str:
        return f"{self.origin}/{self.partition}"


class Position(NamedTuple):
    """Where a message sits: its stream and its dense sequence number in it."""

    origin: str
    partition: int
    seq: int


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    origin: str
    partition: int
    seq: int
    type: str
    key: str
    version: int
    created_ms: int
    payload: bytes = b""
    headers: Headers = field(default_factory=dict)

    @property
    def stream(self) -> StreamId:
        return StreamId(self.origin, self.partition)

    @property
    def position(self) -> Position:
        return Position(self.origin, self.partition, self.seq)


# A message inside a batch body is the msgpack array
#   [id, type, key, version, created_ms, headers, payload]
# origin, partition and seq are not repeated: the batch header carries them.
Row = tuple[str, str, str, int, int, Headers, bytes]


def message_from_row(row: Sequence[Any], origin: str, partition: int, seq: int) -> Message:
    """Build a message from its body row; the batch header supplies origin, partition, seq."""
    id_, type_, key, version, created_ms, headers, payload = row
    return Message(id_, origin, partition, seq, type_, key, version, created_ms, payload, headers)
