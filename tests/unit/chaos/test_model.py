"""The sequential model of the built-in operations and the comparisons the chaos checker makes.

The model must predict exactly what a state backend holds after applying the same messages in
any order, so the property test runs it against `MemoryState`, fed in a shuffled order.
"""

from __future__ import annotations

import asyncio
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from multiactive.admin.render import snapshot_json
from multiactive.chaos.model import (
    MAX_DIFFERENCES,
    capped_views,
    diff_snapshots,
    diff_views,
    replay,
    snapshot_from_json,
)
from multiactive.model.clock import LOGICAL_BITS
from multiactive.model.message import Message, StreamId
from multiactive.records import MessageRecord
from multiactive.state import Commit, MemoryState, Op
from multiactive.state.ops import Entry, Member, Snapshot, sorted_snapshot

SOURCE = "the model predicts"


def ms(millisecond: int, logical: int = 0) -> int:
    """A version at a given millisecond."""
    return millisecond << LOGICAL_BITS | logical


def test_kv_register_keeps_the_highest_version_whatever_the_input_order() -> None:
    """LWW: the set with the highest (version, origin) wins, in whatever order ops come."""
    ops = [
        Op("kv.set", "k", ms(2), "gz", b"late"),
        Op("kv.set", "k", ms(1), "bj", b"early"),
        Op("kv.set", "k", ms(2), "bj", b"tie, lower origin"),
    ]
    for order in (ops, ops[::-1]):
        assert replay(order).entries == (Entry("k", b"late", ms(2), "gz"),)


def test_a_delete_leaves_a_tombstone_an_older_set_cannot_undo() -> None:
    """kv.del is a register value too: an older set replayed after it does not revive the key."""
    ops = [Op("kv.del", "k", ms(5), "bj", b""), Op("kv.set", "k", ms(3), "gz", b"old")]
    assert replay(ops).entries == (Entry("k", None, ms(5), "bj"),)


def test_counters_sum_every_delta_and_exist_once_added_to() -> None:
    """counter.add sums deltas (negative too); a counter that nets to zero is still there."""
    ops = [
        Op("counter.add", "c", ms(1), "bj", b"5"),
        Op("counter.add", "c", ms(1), "gz", b"-2"),
        Op("counter.add", "zero", ms(2), "bj", b"3"),
        Op("counter.add", "zero", ms(3), "bj", b"-3"),
    ]
    assert replay(ops).counters == (("c", 3), ("zero", 0))


def test_set_members_are_registers_and_readers_see_the_cap_newest_present() -> None:
    """zset.add/zset.rem are LWW per member; the capped view drops removed and oldest members."""
    ops = [
        Op("zset.add", "s", ms(1), "bj", b"a"),
        Op("zset.add", "s", ms(2), "bj", b"b"),
        Op("zset.add", "s", ms(3), "bj", b"c"),
        Op("zset.rem", "s", ms(4), "gz", b"c"),
        Op("zset.add", "s", ms(1), "gz", b"c"),  # older than the removal: stays removed
    ]
    snapshot = replay(ops)
    members = dict(snapshot.zsets)["s"]
    assert [(m.member, m.present) for m in members] == [(b"a", True), (b"b", True), (b"c", False)]
    view = capped_views(snapshot, cap=1)["s"]
    assert [m.member for m in view] == [b"b"]
    assert [m.member for m in capped_views(snapshot, cap=5)["s"]] == [b"b", b"a"]


def test_non_builtin_messages_do_not_change_the_model() -> None:
    """User-typed messages (canaries, handlers' types) have no built-in effect."""
    assert replay([Op("ma.canary", "c", ms(1), "bj", b"")]) == Snapshot((), (), ())


_ops = st.lists(
    st.builds(
        Op,
        st.sampled_from(["kv.set", "kv.del", "counter.add", "zset.add", "zset.rem"]),
        st.sampled_from(["k1", "k2"]),
        st.integers(1, 6).map(ms),
        st.sampled_from(["bj", "gz"]),
        st.sampled_from([b"1", b"-2", b"7"]),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(ops=_ops, seed=st.integers(0, 1000))
def test_the_model_predicts_what_a_state_backend_holds_after_any_order(
    ops: list[Op], seed: int
) -> None:
    """replay() equals MemoryState's snapshot after the same ops applied in a shuffled order."""
    unique = list({(o.version, o.origin): o for o in ops}.values())  # as an origin's clock issues
    shuffled = [tuple(op) for op in unique]
    random.Random(seed).shuffle(shuffled)
    state = MemoryState()
    step = Commit(StreamId("x", 0), len(shuffled) + 1, len(shuffled), shuffled)
    asyncio.run(state.commit(step))
    assert asyncio.run(state.snapshot()) == replay(unique)


def test_a_counter_applied_twice_is_named_with_both_values() -> None:
    """A site whose counter got a delta twice differs from the model, naming site, key, values."""
    ops = [Op("counter.add", "n:1", ms(1), "bj", b"4"), Op("counter.add", "n:1", ms(2), "gz", b"3")]
    expected = replay(ops)
    doubled = replay([*ops, ops[0]])
    assert diff_snapshots(expected, doubled, "gz", SOURCE) == [
        "site gz: counter n:1 is 11, the model predicts 7"
    ]


def test_identical_snapshots_have_no_differences() -> None:
    """A site that holds exactly what the model predicts has no problems."""
    snapshot = replay(
        [Op("kv.set", "k", ms(1), "bj", b"v"), Op("zset.add", "s", ms(1), "bj", b"m")]
    )
    assert diff_snapshots(snapshot, snapshot, "bj", SOURCE) == []
    views = capped_views(snapshot, 3)
    assert diff_views(views, views, "bj", SOURCE) == []


def test_differences_name_the_key_the_expected_and_the_actual_value() -> None:
    """kv and set-member differences say what each side holds, including never-written keys."""
    expected = sorted_snapshot(
        [Entry("k", b"new", ms(2), "gz")], [], [("s", [Member(b"m", ms(1), "bj", True)])]
    )
    actual = sorted_snapshot([Entry("k", None, ms(1), "bj")], [("n", 1)], [])
    assert diff_snapshots(expected, actual, "bj", SOURCE) == [
        f"site bj: kv k is deleted (version {ms(1)} from bj), "
        f"the model predicts b'new' (version {ms(2)} from gz)",
        "site bj: counter n is 1, the model predicts missing",
        "site bj: set s member b'm' is never written, "
        f"the model predicts present (version {ms(1)} from bj)",
    ]


def test_a_wrong_capped_read_is_reported() -> None:
    """A site serving other members than the model's capped view is named with both lists."""
    a, b = Member(b"a", ms(1), "bj", True), Member(b"b", ms(2), "bj", True)
    assert diff_views({"s": [b]}, {"s": [b, a]}, "gz", SOURCE) == [
        "site gz: set s reads [b'b', b'a'], the model predicts [b'b']"
    ]


def test_many_differences_are_listed_up_to_a_bound_then_counted() -> None:
    """A badly diverged site yields a bounded list ending with how many more there were."""
    expected = replay([Op("counter.add", f"n{i}", ms(1), "bj", b"1") for i in range(30)])
    found = diff_snapshots(expected, Snapshot((), (), ()), "gz", SOURCE)
    assert len(found) == MAX_DIFFERENCES + 1
    assert found[-1] == f"... and {30 - MAX_DIFFERENCES} more differences like these"


def test_snapshots_and_messages_read_back_from_their_admin_json() -> None:
    """snapshot_from_json and MessageRecord invert the admin API's rendering."""
    snapshot = replay(
        [
            Op("kv.set", "k", ms(1), "bj", b"\x00\xff"),
            Op("kv.del", "d", ms(1), "bj", b""),
            Op("counter.add", "n", ms(1), "bj", b"-4"),
            Op("zset.rem", "s", ms(1), "gz", b"m"),
        ]
    )
    assert snapshot_from_json(snapshot_json(snapshot)) == snapshot
    message = Message("id1", "gz", 3, 9, "kv.set", "k", ms(7), 123, b"\x01", {"h": "v"})
    assert MessageRecord.from_json(MessageRecord.of(message).to_json()).to_message() == message
