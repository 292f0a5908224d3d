"""A sequential model of the built-in operations, and the comparisons the chaos checker makes.

The model knows nothing about sites, links or journals: it takes the built-in messages that were
journaled anywhere, applies them one by one in version order `(version, origin)`, and predicts
the one state every site must end in. Each operation follows `state/ops.py` exactly:

    kv.set / kv.del          a last-writer-wins register per key; kv.del leaves a tombstone
    counter.add              the sum of every delta (a counter exists once anything was added)
    zset.add / zset.rem      a last-writer-wins register per (key, member), present or absent;
                             readers see the `cap` newest present members (`zset_view`)

Everything here is a pure function over `state.ops` records, so it is unit-tested without
processes (`tests/unit/testing/test_model.py`), and the differences it reports are sentences
that name the site, the key, what was expected and what was found.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from multiactive.state.base import Op
from multiactive.state.ops import (
    BUILTIN_TYPES,
    COUNTER_ADD,
    KV_DEL,
    KV_SET,
    ZSET_ADD,
    ZSET_REM,
    Entry,
    Member,
    Snapshot,
    newer,
    sorted_snapshot,
    zset_view,
)

MAX_DIFFERENCES = 20  # per comparison; the rest are counted, not listed
MAX_SHOWN_BYTES = 24


# -- the model ------------------------------------------------------------------------------


def in_version_order(ops: Iterable[Op]) -> list[Op]:
    """Built-in ops only, in the order the model applies them: (version, origin)."""
    return sorted(
        (op for op in ops if op.type in BUILTIN_TYPES), key=lambda o: (o.version, o.origin)
    )


def apply_register(held: Entry | None, op: Op) -> Entry | None:
    """A kv.set or kv.del on a key's register: the newer (version, origin) wins."""
    if held is not None and not newer(op.version, op.origin, held.version, held.origin):
        return held
    return Entry(op.key, op.payload if op.type == KV_SET else None, op.version, op.origin)


def apply_delta(value: int, op: Op) -> int:
    """A counter.add: deltas add up, in any order."""
    return value + int(op.payload)


def apply_member(held: Member | None, op: Op) -> Member | None:
    """A zset.add or zset.rem on one member's register: the newer (version, origin) wins."""
    if held is not None and not newer(op.version, op.origin, held.version, held.origin):
        return held
    return Member(op.payload, op.version, op.origin, op.type == ZSET_ADD)


def replay(ops: Iterable[Op]) -> Snapshot:
    """The state that applying every op once, in version order, leaves behind."""
    entries: dict[str, Entry | None] = {}
    counters: dict[str, int] = {}
    zsets: dict[str, dict[bytes, Member | None]] = {}
    for op in in_version_order(ops):
        if op.type in (KV_SET, KV_DEL):
            entries[op.key] = apply_register(entries.get(op.key), op)
        elif op.type == COUNTER_ADD:
            counters[op.key] = apply_delta(counters.get(op.key, 0), op)
        elif op.type in (ZSET_ADD, ZSET_REM):
            members = zsets.setdefault(op.key, {})
            members[op.payload] = apply_member(members.get(op.payload), op)
    return sorted_snapshot(
        (e for e in entries.values() if e is not None),
        counters.items(),
        ((key, [m for m in held.values() if m is not None]) for key, held in zsets.items()),
    )


def capped_views(snapshot: Snapshot, cap: int) -> dict[str, list[Member]]:
    """Every set as readers see it: its `cap` newest present members, newest first."""
    return {key: zset_view(members, cap) for key, members in snapshot.zsets}


# -- reading what the admin API returns -----------------------------------------------------


def snapshot_from_json(data: Mapping[str, Any]) -> Snapshot:
    """The inverse of `admin.render.snapshot_json`."""
    entries = [
        Entry(
            e["key"], None if e["value"] is None else _unb64(e["value"]), e["version"], e["origin"]
        )
        for e in data["entries"]
    ]
    counters = [(key, int(value)) for key, value in data["counters"].items()]
    zsets = [(key, members_from_json(members)) for key, members in data["zsets"].items()]
    return sorted_snapshot(entries, counters, zsets)


def members_from_json(members: Sequence[Mapping[str, Any]]) -> list[Member]:
    """The inverse of `admin.render.member_json`, for a list of members."""
    return [
        Member(_unb64(m["member"]), m["version"], m["origin"], bool(m["present"])) for m in members
    ]


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


# -- comparisons ----------------------------------------------------------------------------


def diff_snapshots(expected: Snapshot, actual: Snapshot, site: str, source: str) -> list[str]:
    """Every difference between a site's state and what it should be, as sentences ending with
    `source` and the expected value (`source` reads like "the model predicts" or "site bj
    holds"); at most MAX_DIFFERENCES of them, then a count of the rest."""
    found = [
        *_diff_entries(expected.entries, actual.entries, site, source),
        *_diff_counters(expected.counters, actual.counters, site, source),
        *_diff_zsets(expected.zsets, actual.zsets, site, source),
    ]
    return bounded(found)


def diff_views(
    expected: Mapping[str, Sequence[Member]],
    actual: Mapping[str, Sequence[Member]],
    site: str,
    source: str,
) -> list[str]:
    """Differences between the capped sets a site serves and those expected (see
    `diff_snapshots` for `source`)."""
    found = []
    for key in sorted(set(expected) | set(actual)):
        want, got = expected.get(key, ()), actual.get(key, ())
        if [_view_item(m) for m in want] != [_view_item(m) for m in got]:
            found.append(
                f"site {site}: set {key} reads {_members_text(got)}, {source} {_members_text(want)}"
            )
    return bounded(found)


def bounded(found: list[str]) -> list[str]:
    """At most MAX_DIFFERENCES problems, then one line counting the rest."""
    if len(found) <= MAX_DIFFERENCES:
        return found
    more = len(found) - MAX_DIFFERENCES
    return [*found[:MAX_DIFFERENCES], f"... and {more} more differences like these"]


def _diff_entries(
    expected: Sequence[Entry], actual: Sequence[Entry], site: str, source: str
) -> list[str]:
    want, got = {e.key: e for e in expected}, {e.key: e for e in actual}
    return [
        f"site {site}: kv {key} is {_entry_text(got.get(key))}, "
        f"{source} {_entry_text(want.get(key))}"
        for key in sorted(set(want) | set(got))
        if want.get(key) != got.get(key)
    ]


def _diff_counters(
    expected: Sequence[tuple[str, int]], actual: Sequence[tuple[str, int]], site: str, source: str
) -> list[str]:
    want, got = dict(expected), dict(actual)
    return [
        f"site {site}: counter {key} is {_counter_text(got.get(key))}, "
        f"{source} {_counter_text(want.get(key))}"
        for key in sorted(set(want) | set(got))
        if want.get(key) != got.get(key)
    ]


def _diff_zsets(
    expected: Sequence[tuple[str, Sequence[Member]]],
    actual: Sequence[tuple[str, Sequence[Member]]],
    site: str,
    source: str,
) -> list[str]:
    want = {(key, m.member): m for key, members in expected for m in members}
    got = {(key, m.member): m for key, members in actual for m in members}
    found = []
    for key, member in sorted(set(want) | set(got)):
        held, predicted = got.get((key, member)), want.get((key, member))
        if held != predicted:
            found.append(
                f"site {site}: set {key} member {_bytes_text(member)} is {_member_text(held)}, "
                f"{source} {_member_text(predicted)}"
            )
    return found


def _entry_text(entry: Entry | None) -> str:
    if entry is None:
        return "never written"
    value = "deleted" if entry.value is None else _bytes_text(entry.value)
    return f"{value} (version {entry.version} from {entry.origin})"


def _counter_text(value: int | None) -> str:
    return "missing" if value is None else str(value)


def _member_text(member: Member | None) -> str:
    if member is None:
        return "never written"
    state = "present" if member.present else "removed"
    return f"{state} (version {member.version} from {member.origin})"


def _members_text(members: Sequence[Member]) -> str:
    return "[" + ", ".join(_bytes_text(m.member) for m in members) + "]"


def _view_item(member: Member) -> tuple[bytes, int, str]:
    return (member.member, member.version, member.origin)


def _bytes_text(value: bytes) -> str:
    shown = value[:MAX_SHOWN_BYTES]
    return repr(shown) + ("..." if len(value) > MAX_SHOWN_BYTES else "")
