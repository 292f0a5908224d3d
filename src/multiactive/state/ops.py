"""Built-in operations: what they mean, as pure functions every backend and the checker share.

Every built-in operation converges: whatever order a site receives messages in, and however
often, its state ends the same as every other site's (P2).

    kv.set     key, payload = value    last-writer-wins register by (version, origin)
    kv.del     key                     the same register, a tombstone: an older set arriving
                                       later cannot bring the key back
    counter.add key, payload = delta   an integer counter; deltas commute, and each message's
               (ASCII integer)         effect is applied once because it commits with the
                                       watermark (P3)
    zset.add   key, payload = member   a last-writer-wins register per member (present)
    zset.rem   key, payload = member   the same register, absent
                                       the set shows its `cap` newest present members

The cap of a set is applied when the set is read, not by dropping members when it grows: a
site that drops members at write time decides differently depending on the order in which
adds and removals reached it, and sites diverge (for example: add x, add y, add z with cap 2
drops x; if the removal of z arrives first somewhere else, x stays there). Reading the newest
`cap` present members is the same everywhere, and deleting a post from a timeline lets the
next older one show, as a timeline should. Members are ordered by the millisecond of their
version, newest first, then by member bytes, highest first (as Redis ZREVRANGE orders equal
scores), so every backend sorts identically.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from multiactive.model.clock import LOGICAL_BITS
from multiactive.model.topology import DEFAULT_ZSET_CAP

KV_SET = "kv.set"
KV_DEL = "kv.del"
COUNTER_ADD = "counter.add"
ZSET_ADD = "zset.add"
ZSET_REM = "zset.rem"
BUILTIN_TYPES = frozenset({KV_SET, KV_DEL, COUNTER_ADD, ZSET_ADD, ZSET_REM})
# A cache-aside fill (`multiactive.reads`): a register written from the site's database, not
# by a message. Its origin is empty, below every site name, so that at an equal version the
# message-driven write wins under last-writer-wins; fills are local, not replicated state, and
# snapshots (digests, reconcile, the chaos checker) leave them out. Not a message type.
KV_FILL = "kv.fill"
FILL_ORIGIN = ""
__all__ = ["DEFAULT_ZSET_CAP"]  # re-exported for the state backends
MAX_COUNTER_DELTA = 2**62
_INTEGER = re.compile(rb"^[+-]?[0-9]{1,19}$")


@dataclass(frozen=True, slots=True)
class Entry:
    """A key-value register; value None is a tombstone."""

    key: str
    value: bytes | None
    version: int
    origin: str

    @property
    def deleted(self) -> bool:
        return self.value is None


@dataclass(frozen=True, slots=True)
class Member:
    """A set member's register: present after an add, absent after a removal."""

    member: bytes
    version: int
    origin: str
    present: bool

    @property
    def score(self) -> int:
        """What the set is ordered by: the millisecond of the version."""
        return self.version >> LOGICAL_BITS


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a state holds, in canonical order: what digests and checkers compare."""

    entries: tuple[Entry, ...]
    counters: tuple[tuple[str, int], ...]
    zsets: tuple[tuple[str, tuple[Member, ...]], ...]  # every member register, by member


def check_payload(type_: str, payload: bytes) -> str | None:
    """Why a built-in message's payload is unusable, or None. Ingress refuses such drafts."""
    if type_ == COUNTER_ADD:
        if not _INTEGER.match(payload) or abs(int(payload)) > MAX_COUNTER_DELTA:
            return (
                f"counter.add payload must be an ASCII integer within +-2**62, got {payload[:40]!r}"
            )
    elif type_ in (ZSET_ADD, ZSET_REM) and not payload:
        return f"{type_} payload is the member and must not be empty"
    return None


def newer(version: int, origin: str, held_version: int, held_origin: str) -> bool:
    """Last-writer-wins: (version, origin) beats what a register holds."""
    return (version, origin) > (held_version, held_origin)


def fill_wins(version: int, held: Entry | None) -> bool:
    """Does a fill of `version` replace what a register holds? Yes over nothing, over an
    older entry, and over a fill of the same version (a reload); never over a
    message-driven entry of the same version or over anything newer."""
    if held is None or version > held.version:
        return True
    return version == held.version and held.origin == FILL_ORIGIN


def zset_view(members: Iterable[Member], cap: int) -> list[Member]:
    """The `cap` newest present members, newest first (ties: higher member bytes first)."""
    present = [m for m in members if m.present]
    present.sort(key=lambda m: (m.score, m.member), reverse=True)
    return present[:cap]


def digest(snapshot: Snapshot) -> str:
    """Equal in two sites exactly when their snapshots are equal."""
    h = hashlib.sha256()
    for e in snapshot.entries:
        _field(h, b"kv", e.key.encode(), _value(e.value), e.version, e.origin.encode())
    for key, value in snapshot.counters:
        _field(h, b"counter", key.encode(), str(value).encode())
    for key, members in snapshot.zsets:
        for m in members:
            _field(h, b"zset", key.encode(), m.member, m.version, m.origin.encode(), m.present)
    return h.hexdigest()


def _value(value: bytes | None) -> bytes:
    return b"\x00" if value is None else b"\x01" + value


def _field(h: hashlib._Hash, *parts: bytes | int | bool) -> None:
    for part in parts:
        raw = part if isinstance(part, bytes) else str(int(part)).encode()
        h.update(b"%d:" % len(raw) + raw)
    h.update(b";")


def sorted_snapshot(
    entries: Iterable[Entry],
    counters: Iterable[tuple[str, int]],
    zsets: Iterable[tuple[str, Sequence[Member]]],
) -> Snapshot:
    """Build a snapshot in canonical order from any order (fills left out: local data)."""
    return Snapshot(
        tuple(sorted((e for e in entries if e.origin != FILL_ORIGIN), key=lambda e: e.key)),
        tuple(sorted(counters)),
        tuple(
            (key, tuple(sorted(members, key=lambda m: m.member)))
            for key, members in sorted(zsets, key=lambda item: item[0])
        ),
    )
