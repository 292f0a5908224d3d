"""State backends: last-writer-wins entries, tombstones, counters, capped sets, atomic commits
and dead letters.

Each test body is one coroutine run with `asyncio.run`; the `backend` fixture runs it against
`MemoryState`, `SqliteState` (a fresh file in `tmp_path` per state made; also `inline`, as the
applier runs it) and `RedisState` on a
redis-server (a fresh key prefix per state made, see `tests/conftest.py`). Tests of data that
outlives the state object (`durable`) run on SQLite and Redis.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from multiactive.errors import ConfigError, StaleStep, StateError, StoreError
from multiactive.model.message import StreamId
from multiactive.model.partition import partition_for
from multiactive.redisdb import Keys, RedisDb
from multiactive.state import (
    Commit,
    DeadLetter,
    Entry,
    MemoryState,
    Op,
    RedisState,
    SqliteState,
    StateBackend,
    Watermark,
)
from multiactive.state.base import Member, digest_entries
from multiactive.state.ops import zset_view

STREAM = StreamId("bj", 0)


def run(main: Coroutine[Any, Any, None]) -> None:
    asyncio.run(main)


class Backend:
    """Makes fresh states of one kind (each SQLite one in its own file, each Redis one under
    its own key prefix, unless named)."""

    def __init__(self, kind: str, folder: Path, url: str = "") -> None:
        self.kind = kind
        self.folder = folder
        self.url = url
        self.where = url or str(folder / "state.sqlite3")  # what errors name for `name=`
        self._files = itertools.count()

    def new(self, site: str = "bj", name: str | None = None, zset_cap: int = 1000) -> StateBackend:
        if self.kind == "memory":
            return MemoryState(zset_cap)
        if self.kind == "redis":
            prefix = (name or f"t{next(self._files)}").replace(".", "-")
            return RedisState(site, self.url, PARTITIONS, zset_cap, prefix=prefix)
        path = self.folder / (name or f"state-{next(self._files)}.sqlite3")
        applier = self.kind == "sqlite-applier"  # as the applier runs it
        return SqliteState(site, path, zset_cap, inline=applier, checkpoint_thread=applier)

    @asynccontextmanager
    async def opened(
        self, site: str = "bj", name: str | None = None, zset_cap: int = 1000
    ) -> AsyncIterator[StateBackend]:
        state = self.new(site, name, zset_cap)
        await state.open()
        try:
            yield state
        finally:
            await state.close()


PARTITIONS = 8


def make_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    return Backend(request.param, tmp_path, url)


@pytest.fixture(params=["memory", "sqlite", "sqlite-applier", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return make_backend(request, tmp_path)


@pytest.fixture(params=["sqlite", "redis"])
def durable(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Backends whose data outlives the state object: a new one on the same storage."""
    return make_backend(request, tmp_path)


@pytest.fixture
def sqlite(tmp_path: Path) -> Backend:
    return Backend("sqlite", tmp_path)


def message(
    key: str,
    version: int,
    origin: str = "bj",
    value: bytes | None = b"v",
    seq: int = 1,
) -> Op:
    kind = "kv.del" if value is None else "kv.set"
    return Op(kind, key, version, origin, value or b"")


def dead(seq: int, parked_ms: int = 1000, origin: str = "bj") -> DeadLetter:
    return DeadLetter(origin, 0, seq, f"id-{seq}", "user.thing", f"k{seq}", "boom", 5, parked_ms)


async def apply_each(state: StateBackend, messages: list[Op]) -> None:
    """Commit each message as its own step of one stream, in the order given."""
    for seq, m in enumerate(messages, start=1):
        await state.commit(Commit(STREAM, seq, 1, builtin=[m]))


# -- last-writer-wins --------------------------------------------------------------------------

origins = st.sampled_from(["bj", "gz", "sh"])
kv_messages = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.integers(1, 6),
        origins,
        st.one_of(st.none(), st.binary(min_size=0, max_size=3)),
    ),
    min_size=1,
    max_size=12,
    unique_by=lambda t: (t[0], t[1], t[2]),
)


def winners(messages: list[Op]) -> list[Entry]:
    """The entries LWW must leave: per key the greatest (version, origin), in key order."""
    best: dict[str, Op] = {}
    for m in messages:
        if m.key not in best or (m.version, m.origin) > (best[m.key].version, best[m.key].origin):
            best[m.key] = m
    return [
        Entry(
            k,
            best[k].payload if best[k].type == "kv.set" else None,
            best[k].version,
            best[k].origin,
        )
        for k in sorted(best)
    ]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(kv_messages, st.randoms(use_true_random=False), st.integers(0, 3))
def test_lww_converges_whatever_the_arrival_order(
    backend: Backend, values: list[tuple[str, int, str, bytes | None]], rnd: Any, repeats: int
) -> None:
    """P2: kv.set/kv.del in any order, some repeated, end in the digest of version order."""
    messages = [message(key, version, origin, value) for key, version, origin, value in values]
    shuffled = messages + rnd.sample(messages, min(repeats, len(messages)))
    rnd.shuffle(shuffled)
    in_order = sorted(messages, key=lambda m: (m.version, m.origin))

    async def main() -> None:
        async with backend.opened() as ordered, backend.opened() as arrived:
            await apply_each(ordered, in_order)
            await apply_each(arrived, shuffled)
            assert await arrived.entries() == winners(messages)
            assert await arrived.digest() == await ordered.digest()
            assert await arrived.digest() == digest_entries(winners(messages))

    run(main())


def test_lww_newer_version_wins_older_is_ignored(backend: Backend) -> None:
    """A set with a greater version replaces the value; a later-arriving older one does not."""

    async def main() -> None:
        async with backend.opened() as state:
            await apply_each(state, [message("k", 5, value=b"new"), message("k", 3, value=b"old")])
            assert await state.get("k") == Entry("k", b"new", 5, "bj")

    run(main())


def test_lww_equal_versions_are_broken_by_origin_name(backend: Backend) -> None:
    """With equal versions the greater origin name wins, in either arrival order."""

    async def main() -> None:
        for order in (["bj", "gz"], ["gz", "bj"]):
            async with backend.opened() as state:
                await apply_each(state, [message("k", 7, o, o.encode()) for o in order])
                assert await state.get("k") == Entry("k", b"gz", 7, "gz")

    run(main())


def test_tombstone_blocks_an_older_set(backend: Backend) -> None:
    """A kv.del is kept as a tombstone with its version, so a late older set cannot resurrect."""

    async def main() -> None:
        async with backend.opened() as state:
            await apply_each(
                state, [message("k", 2), message("k", 10, value=None), message("k", 5)]
            )
            entry = await state.get("k")
            assert entry == Entry("k", None, 10, "bj")
            assert entry is not None
            assert entry.deleted
            await apply_each_from(state, 4, [message("k", 11, value=b"back")])
            assert await state.get("k") == Entry("k", b"back", 11, "bj")

    run(main())


async def apply_each_from(state: StateBackend, seq: int, messages: list[Op]) -> None:
    for offset, m in enumerate(messages):
        await state.commit(Commit(STREAM, seq + offset, 1, builtin=[m]))


def test_get_of_a_key_never_written_is_none(backend: Backend) -> None:
    """get returns None for a key never written (a tombstone is an Entry, not None)."""

    async def main() -> None:
        async with backend.opened() as state:
            assert await state.get("nothing") is None

    run(main())


def test_lww_within_one_commit(backend: Backend) -> None:
    """Several built-in messages for one key in one commit still leave the greatest version."""

    async def main() -> None:
        async with backend.opened() as state:
            builtin = [message("k", 9, value=b"9"), message("k", 4, value=b"4"), message("j", 1)]
            await state.commit(Commit(STREAM, 3, 3, builtin=builtin))
            assert await state.entries() == [Entry("j", b"v", 1, "bj"), Entry("k", b"9", 9, "bj")]

    run(main())


# -- commit and watermarks -------------------------------------------------------------------


def test_commit_moves_watermark_and_count(backend: Backend) -> None:
    """commit sets the stream's applied seq and adds the processed messages to its count."""

    async def main() -> None:
        async with backend.opened() as state:
            other = StreamId("gz", 3)
            await state.commit(Commit(STREAM, 3, 3))
            await state.commit(Commit(STREAM, 5, 2, builtin=[message("k", 1)]))
            await state.commit(Commit(other, 10, 4))
            assert await state.watermarks() == {
                STREAM: Watermark(applied=5, count=5),
                other: Watermark(applied=10, count=4),
            }

    run(main())


@pytest.mark.parametrize("through_seq", [5, 4, 0])
def test_commit_refuses_a_watermark_that_does_not_advance(
    backend: Backend, through_seq: int
) -> None:
    """A commit not moving the watermark forward raises and changes nothing at all (P3)."""

    async def main() -> None:
        async with backend.opened() as state:
            await state.commit(Commit(STREAM, 5, 5, builtin=[message("k", 1, value=b"kept")]))
            before = (await state.entries(), await state.watermarks(), await state.dead_letters())
            refused = Commit(
                STREAM, through_seq, 1, builtin=[message("k", 9), message("z", 9)], dead=[dead(5)]
            )
            with pytest.raises(StaleStep, match="watermark of bj/0 would move from 5"):
                await state.commit(refused)
            after = (await state.entries(), await state.watermarks(), await state.dead_letters())
            assert after == before

    run(main())


def test_a_stale_step_is_a_state_error_naming_stream_applied_and_attempted_seq(
    backend: Backend,
) -> None:
    """The P3 refusal is `StaleStep` (a StateError of the one tree) carrying the stream, the
    applied seq and the seq the step tried to move to."""

    async def main() -> None:
        async with backend.opened() as state:
            await state.commit(Commit(STREAM, 7, 7))
            with pytest.raises(StaleStep) as caught:
                await state.commit(Commit(StreamId("gz", 1), 1, 1), Commit(STREAM, 6, 1))
            assert isinstance(caught.value, StateError)
            assert (caught.value.stream, caught.value.applied, caught.value.attempted) == (
                STREAM,
                7,
                6,
            )
            assert "watermark of bj/0 would move from 7 to 6" in str(caught.value)

    run(main())


def test_a_commit_of_an_operation_that_is_not_built_in_is_a_caller_error(
    backend: Backend,
) -> None:
    """Only built-in operations reach a state (the processor hands every other type to its
    handler): any other is a ValueError naming it, in every backend, and nothing moves."""

    async def main() -> None:
        async with backend.opened() as state:
            wrong = Op("user.signup", "k", 1, "bj", b"v")
            with pytest.raises(ValueError, match=r"'user\.signup' is not a built-in operation"):
                await state.commit(Commit(STREAM, 1, 1, builtin=[message("a", 1), wrong]))
            assert await state.watermarks() == {}
            assert await state.entries() == []

    run(main())


def test_redis_refuses_a_step_another_process_already_applied(redis_url: str) -> None:
    """When Redis holds a watermark past this process's (another process committed), the
    script refuses a step not above it as StaleStep naming what Redis holds."""

    async def main() -> None:
        async with Backend("redis", Path(), redis_url).opened(name="s") as state:
            await state.commit(Commit(STREAM, 2, 2))
            async with raw_redis(redis_url) as db:
                await db.call("HSET", f"{Keys('bj', 's').tag(0)}wm", "applied:bj", 9)
            with pytest.raises(StaleStep) as caught:
                await state.commit(Commit(STREAM, 5, 3, builtin=[message("j", 1)]))
            assert (caught.value.applied, caught.value.attempted) == (9, 5)
            assert await state.get("j") is None

    run(main())


def test_commit_of_several_steps_moves_every_watermark(backend: Backend) -> None:
    """One commit of several steps applies all their effects and moves all their watermarks."""

    async def main() -> None:
        async with backend.opened() as state:
            other = StreamId("gz", 1)
            await state.commit(
                Commit(STREAM, 2, 2, builtin=[message("a", 1)]),
                Commit(other, 1, 1, builtin=[message("b", 1, "gz")], dead=[dead(1, origin="gz")]),
                Commit(STREAM, 4, 2, builtin=[message("a", 2, value=None)]),
            )
            assert await state.watermarks() == {STREAM: Watermark(4, 4), other: Watermark(1, 1)}
            assert await state.entries() == [Entry("a", None, 2, "bj"), Entry("b", b"v", 1, "gz")]
            assert await state.dead_letters() == [dead(1, origin="gz")]

    run(main())


def test_commit_of_several_steps_is_all_or_nothing(backend: Backend) -> None:
    """If any step of a commit would not advance its watermark, no step takes effect (P3)."""

    async def main() -> None:
        async with backend.opened() as state:
            await state.commit(Commit(STREAM, 3, 3))
            other = StreamId("gz", 1)
            with pytest.raises(StaleStep, match="watermark of bj/0 would move from 5 to 5"):
                await state.commit(
                    Commit(other, 1, 1, builtin=[message("b", 1, "gz")], dead=[dead(1)]),
                    Commit(STREAM, 5, 2, builtin=[message("a", 1)]),
                    Commit(STREAM, 5, 1, builtin=[message("c", 1)]),
                )
            assert await state.watermarks() == {STREAM: Watermark(3, 3)}
            assert await state.entries() == []
            assert await state.dead_letters() == []

    run(main())


def test_refused_commit_is_rolled_back_on_disk(durable: Backend) -> None:
    """A refused commit leaves the stored state unchanged and the state usable afterwards."""

    async def main() -> None:
        async with durable.opened(name="state.sqlite3") as state:
            await state.commit(Commit(STREAM, 2, 2, builtin=[message("k", 1, value=b"kept")]))
            with pytest.raises(StaleStep, match="would move"):
                await state.commit(Commit(STREAM, 2, 1, builtin=[message("k", 9)]))
            await state.commit(Commit(STREAM, 3, 1, builtin=[message("j", 2)]))
        async with durable.opened(name="state.sqlite3") as state:
            assert await state.watermarks() == {STREAM: Watermark(3, 3)}
            assert await state.entries() == [
                Entry("j", b"v", 2, "bj"),
                Entry("k", b"kept", 1, "bj"),
            ]

    run(main())


def test_state_survives_a_reopen(durable: Backend) -> None:
    """Entries, watermarks and dead letters committed are there after a reopen."""

    async def main() -> None:
        async with durable.opened(name="state.sqlite3") as state:
            await state.commit(Commit(STREAM, 2, 2, builtin=[message("k", 1)], dead=[dead(2)]))
        async with durable.opened(name="state.sqlite3") as state:
            assert await state.entries() == [Entry("k", b"v", 1, "bj")]
            assert await state.watermarks() == {STREAM: Watermark(2, 2)}
            assert await state.dead_letters() == [dead(2)]

    run(main())


def test_state_of_another_site_is_refused(durable: Backend) -> None:
    """Opening one site's state storage as another site raises ConfigError naming it."""

    async def main() -> None:
        async with durable.opened(site="bj", name="state.sqlite3"):
            pass
        other = durable.new(site="gz", name="state.sqlite3")
        try:
            with pytest.raises(ConfigError) as caught:
                await other.open()
        finally:
            await other.close()
        assert durable.where in str(caught.value)
        assert "site 'bj', not 'gz'" in str(caught.value)

    run(main())


# -- dead letters ----------------------------------------------------------------------------


def test_dead_letters_are_stored_and_listed(backend: Backend) -> None:
    """Dead letters parked by commits are listed oldest first, up to the limit."""

    async def main() -> None:
        async with backend.opened() as state:
            await state.commit(Commit(STREAM, 3, 3, dead=[dead(2, parked_ms=100)]))
            await state.commit(Commit(STREAM, 6, 3, dead=[dead(4, 200), dead(6, 300)]))
            assert await state.dead_letters() == [dead(2, 100), dead(4, 200), dead(6, 300)]
            assert await state.dead_letters(limit=2) == [dead(2, 100), dead(4, 200)]
            assert await state.watermarks() == {STREAM: Watermark(6, 6)}

    run(main())


# -- put and digest --------------------------------------------------------------------------


def test_put_applies_lww_and_counts_winners(backend: Backend) -> None:
    """put writes only entries newer than what is stored and returns how many won."""

    async def main() -> None:
        async with backend.opened() as state:
            assert await state.put([Entry("a", b"1", 5, "bj"), Entry("b", None, 5, "bj")]) == 2
            won = await state.put(
                [
                    Entry("a", b"old", 4, "zz"),  # older version: loses
                    Entry("a", b"tie", 5, "gz"),  # same version, greater origin: wins
                    Entry("b", b"late", 3, "bj"),  # older than the tombstone: loses
                    Entry("c", b"new", 1, "bj"),  # new key: wins
                ]
            )
            assert won == 2
            assert await state.entries() == [
                Entry("a", b"tie", 5, "gz"),
                Entry("b", None, 5, "bj"),
                Entry("c", b"new", 1, "bj"),
            ]
            assert await state.put([Entry("a", b"tie", 5, "gz")]) == 0

    run(main())


def test_sqlite_failed_put_leaves_the_state_usable(sqlite: Backend) -> None:
    """A put SQLite cannot store raises, writes nothing, and later writes still work."""

    async def main() -> None:
        async with sqlite.opened() as state:
            with pytest.raises(OverflowError):
                await state.put([Entry("a", b"1", 1, "bj"), Entry("b", b"2", 2**64, "bj")])
            assert await state.entries() == []
            assert await state.put([Entry("c", b"3", 3, "bj")]) == 1
            await state.commit(Commit(STREAM, 1, 1, builtin=[message("d", 4)]))
            assert [e.key for e in await state.entries()] == ["c", "d"]

    run(main())


def test_entries_come_in_key_order(backend: Backend) -> None:
    """entries() lists every entry, tombstones included, sorted by key."""

    async def main() -> None:
        async with backend.opened() as state:
            await state.put([Entry(k, None if k == "m" else b"x", 1, "bj") for k in "zma"])
            assert [e.key for e in await state.entries()] == ["a", "m", "z"]

    run(main())


entries_strategy = st.dictionaries(
    st.text(max_size=4),
    st.tuples(st.one_of(st.none(), st.binary(max_size=4)), st.integers(0, 2**62), origins),
    max_size=4,
).map(lambda d: [Entry(k, *d[k]) for k in sorted(d)])


@given(entries_strategy, entries_strategy)
def test_digest_is_equal_exactly_when_entries_are_equal(
    left: list[Entry], right: list[Entry]
) -> None:
    """Two key-ordered entry lists have the same digest if and only if they are equal."""
    assert (digest_entries(left) == digest_entries(right)) == (left == right)


@pytest.mark.parametrize(
    "changed",
    [
        Entry("k", b"w", 1, "bj"),
        Entry("k", None, 1, "bj"),
        Entry("k", b"", 1, "bj"),
        Entry("k", b"v", 2, "bj"),
        Entry("k", b"v", 1, "gz"),
        Entry("j", b"v", 1, "bj"),
    ],
)
def test_digest_sees_every_field(changed: Entry) -> None:
    """Changing value, tombstone, version, origin or key of one entry changes the digest."""
    assert digest_entries([Entry("k", b"v", 1, "bj")]) != digest_entries([changed])


@pytest.mark.parametrize("other", ["sqlite", "redis"])
def test_backend_digest_matches_across_backends(
    request: pytest.FixtureRequest, tmp_path: Path, other: str
) -> None:
    """Memory, SQLite and Redis states given the same commits report the same digest."""
    url = request.getfixturevalue("redis_url") if other == "redis" else ""

    async def main() -> None:
        builtin = [
            message("a", 3), message("b", 2, value=None), message("a", 1, "gz"),
            Op("counter.add", "c", 4, "gz", b"7"), Op("zset.add", "z", 1 << 20, "gz", b"m"),
            Op("zset.rem", "z", 1 << 21, "bj", b"n"),
        ]  # fmt: skip
        memory = Backend("memory", tmp_path)
        second = Backend(other, tmp_path, url)
        async with memory.opened() as one, second.opened() as two:
            for state in (one, two):
                await state.commit(Commit(STREAM, 6, 6, builtin=builtin))
            assert await one.snapshot() == await two.snapshot()
            assert await one.digest() == await two.digest()
            await two.put([Entry("c", b"x", 1, "bj")])
            assert await one.digest() != await two.digest()

    run(main())


def test_sqlite_file_is_a_plain_sqlite_database(sqlite: Backend) -> None:
    """The state file stores kv rows with NULL for tombstones, readable by any SQLite client."""

    async def main() -> None:
        async with sqlite.opened(name="state.sqlite3") as state:
            await state.put([Entry("a", None, 4, "gz")])

    run(main())
    with sqlite3.connect(sqlite.folder / "state.sqlite3") as conn:
        rows = conn.execute("SELECT key, value, version, origin FROM kv").fetchall()
    conn.close()
    assert rows == [("a", None, 4, "gz")]


def test_sqlite_state_file_is_made_with_large_pages_and_an_older_one_keeps_its_own(
    sqlite: Backend,
) -> None:
    """A new state file has PAGE_BYTES pages (bulk upserts of 1 KiB values cost ~40 % less
    CPU); a file made with 4 KiB pages opens and works as it is."""
    from multiactive.state.sqlite import PAGE_BYTES

    old = sqlite.folder / "old.sqlite3"
    with sqlite3.connect(old) as conn:
        conn.execute("PRAGMA page_size=4096")
        conn.execute("PRAGMA journal_mode=WAL")
    conn.close()

    async def main() -> None:
        async with sqlite.opened(name="state.sqlite3") as state:
            await state.put([Entry("a", b"1", 1, "bj")])
        async with sqlite.opened(name="old.sqlite3") as state:
            await state.put([Entry("b", b"2", 2, "bj")])
            assert [e.key for e in await state.entries()] == ["b"]

    run(main())
    for name, pages in (("state.sqlite3", PAGE_BYTES), ("old.sqlite3", 4096)):
        with sqlite3.connect(sqlite.folder / name) as conn:
            assert conn.execute("PRAGMA page_size").fetchone() == (pages,)
        conn.close()


# -- exact versions and origins ----------------------------------------------------------------

BASE_MS = 1_700_000_000_000  # versions are ms << 16 | logical: far beyond 2**53 as doubles


def test_lww_compares_full_int64_versions(backend: Backend) -> None:
    """Versions that differ only below the precision of a double still order exactly."""
    newer_version = (BASE_MS << 16) | 0x1235
    older_version = newer_version - 1

    writes = [message("k", newer_version, value=b"new"), message("k", older_version, value=b"old")]

    async def main() -> None:
        for order in (writes, writes[::-1]):
            async with backend.opened() as state:
                await apply_each(state, order)
                assert await state.get("k") == Entry("k", b"new", newer_version, "bj")

    run(main())


def test_lww_ties_compare_origin_names_byte_by_byte(backend: Backend) -> None:
    """Equal versions go to the origin name greatest byte by byte ('-' < '_' < letters),
    whatever the arrival order."""
    names = ["bj-x", "bjx", "bj_x", "bj"]

    async def main() -> None:
        for order in (names, names[::-1], names[1:] + names[:1]):
            async with backend.opened() as state:
                await apply_each(state, [message("k", 7, o, o.encode()) for o in order])
                assert await state.get("k") == Entry("k", b"bjx", 7, "bjx")

    run(main())


# -- counters ------------------------------------------------------------------------------------

counter_messages = st.lists(
    st.tuples(
        st.sampled_from(["hits", "likes"]),
        st.integers(-(2**40), 2**40),
        st.sampled_from(["{}", "+{}", "00{}"]),
    ),
    min_size=1,
    max_size=15,
)


def counter_payload(delta: int, form: str) -> bytes:
    """A delta as ingress accepts it: plain, with a plus sign, or with leading zeros."""
    return (str(delta) if delta < 0 else form.format(delta)).encode()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(counter_messages, st.randoms(use_true_random=False), st.integers(1, 4))
def test_counter_totals_are_the_sum_of_distinct_messages_in_any_order(
    backend: Backend, deltas: list[tuple[str, int, str]], rnd: Any, per_step: int
) -> None:
    """P2/P3: counter.add messages (equal deltas too) in any order and grouping sum to the same
    totals; a step delivered again is refused and adds nothing."""
    messages = [
        Op("counter.add", key, n + 1, "gz", counter_payload(delta, form))
        for n, (key, delta, form) in enumerate(deltas)
    ]
    expected: dict[str, int] = {}
    for key, delta, _ in deltas:
        expected[key] = expected.get(key, 0) + delta
    shuffled = rnd.sample(messages, len(messages))
    chunks = [shuffled[start : start + per_step] for start in range(0, len(shuffled), per_step)]
    ends = itertools.accumulate(len(ops) for ops in chunks)
    steps = [
        Commit(STREAM, end, len(ops), builtin=ops) for end, ops in zip(ends, chunks, strict=True)
    ]

    async def main() -> None:
        async with backend.opened() as state:
            for step in steps:
                await state.commit(step)
            with pytest.raises(StaleStep, match="would move"):
                await state.commit(steps[-1])
            assert {key: await state.counter(key) for key in expected} == expected
            assert (await state.snapshot()).counters == tuple(sorted(expected.items()))
            assert await state.counter("never") == 0

    run(main())


# -- capped sets ---------------------------------------------------------------------------------


def zset_op(member: bytes, ms: int, logical: int = 0, origin: str = "bj", add: bool = True) -> Op:
    version = ((BASE_MS + ms) << 16) | logical
    return Op("zset.add" if add else "zset.rem", "timeline", version, origin, member)


zset_messages = st.lists(
    st.tuples(
        st.sampled_from([b"a", b"b", b"c", b"d", b"e"]),
        st.integers(0, 4),
        st.sampled_from([0, 1, 0xFFFF]),
        origins,
        st.booleans(),
    ),
    min_size=1,
    max_size=14,
    unique_by=lambda t: (t[0], t[1], t[2], t[3]),
)


def registers(ops: list[Op]) -> list[Member]:
    """What LWW must leave per member: the greatest (version, origin), in member order."""
    best: dict[bytes, Op] = {}
    for op in ops:
        held = best.get(op.payload)
        if held is None or (op.version, op.origin) > (held.version, held.origin):
            best[op.payload] = op
    return [
        Member(m, best[m].version, best[m].origin, best[m].type == "zset.add") for m in sorted(best)
    ]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(zset_messages, st.randoms(use_true_random=False), st.integers(0, 3))
def test_zset_adds_and_removals_in_any_order_converge_to_one_view(
    backend: Backend, values: list[tuple[bytes, int, int, str, bool]], rnd: Any, repeats: int
) -> None:
    """P2: zset.add/zset.rem in any order, some repeated, leave the same member registers and
    the view `ops.zset_view` gives (newest 3 present; ties by member bytes, highest first)."""
    ops = [zset_op(m, ms, logical, origin, add) for m, ms, logical, origin, add in values]
    shuffled = ops + rnd.sample(ops, min(repeats, len(ops)))
    rnd.shuffle(shuffled)
    expected = registers(ops)

    async def main() -> None:
        async with backend.opened(zset_cap=3) as state:
            await apply_each(state, shuffled)
            assert await state.members("timeline") == expected
            assert await state.zset("timeline") == zset_view(expected, 3)
            assert (await state.snapshot()).zsets == (("timeline", tuple(expected)),)

    run(main())


def test_zset_shows_the_newest_cap_and_a_removal_lets_the_next_older_show(
    backend: Backend,
) -> None:
    """A set shows its cap newest present members; removing one shows the next older one,
    and the removed member stays as an absent register."""

    async def main() -> None:
        async with backend.opened(zset_cap=2) as state:
            await apply_each(state, [zset_op(b"x", 1), zset_op(b"y", 2), zset_op(b"z", 3)])
            assert [m.member for m in await state.zset("timeline")] == [b"z", b"y"]
            await apply_each_from(state, 4, [zset_op(b"z", 4, add=False)])
            assert [m.member for m in await state.zset("timeline")] == [b"y", b"x"]
            assert [(m.member, m.present) for m in await state.members("timeline")] == [
                (b"x", True),
                (b"y", True),
                (b"z", False),
            ]
            assert await state.zset("empty") == []

    run(main())


def test_zset_orders_by_millisecond_then_member_bytes(backend: Backend) -> None:
    """Members of one millisecond order by member bytes, highest first, whatever their
    logical counter; the next millisecond comes first even with logical 0 against 0xFFFF."""

    async def main() -> None:
        async with backend.opened() as state:
            await apply_each(
                state,
                [
                    zset_op(b"a", 5, logical=9),
                    zset_op(b"b", 5, logical=1),
                    zset_op(b"B", 5, logical=0xFFFF),
                    zset_op(b"A", 6, logical=0),
                ],
            )
            shown = await state.zset("timeline")
            assert [m.member for m in shown] == [b"A", b"b", b"a", b"B"]
            assert [m.score for m in shown] == [BASE_MS + 6] + [BASE_MS + 5] * 3

    run(main())


# -- Redis: the cache as left in Redis, lost commits, overflow, cluster ----------------------


@asynccontextmanager
async def raw_redis(url: str) -> AsyncIterator[RedisDb]:
    db = await RedisDb.connect(url, "test")
    try:
        yield db
    finally:
        await db.close()


def tagged(key: str, family: str, site: str = "bj") -> str:
    """The Redis key of a state key (see multiactive.redisdb)."""
    return f"{Keys(site).tag(partition_for(key, PARTITIONS))}{family}:{key}"


def test_redis_state_is_a_cache_other_clients_can_read(redis_url: str) -> None:
    """The Redis state leaves plain Redis values under the documented keys: a register hash,
    a counter string, a sorted set of present members, the watermark hash."""

    async def main() -> None:
        state = RedisState("bj", redis_url, PARTITIONS)
        await state.open()
        ops = [
            Op("kv.set", "user:1", 5, "gz", b"alice"),
            Op("counter.add", "hits", 6, "gz", b"41"),
            Op("counter.add", "hits", 7, "gz", b"+1"),
            zset_op(b"post-1", 1, origin="gz"),
            zset_op(b"post-2", 2, origin="gz"),
        ]
        await state.commit(Commit(StreamId("gz", 3), 5, 5, builtin=ops))
        await state.close()
        async with raw_redis(redis_url) as db:
            assert await db.call("HGET", tagged("user:1", "kv"), "value") == b"alice"
            assert await db.call("GET", tagged("hits", "c")) == b"42"
            assert await db.call("ZREVRANGE", tagged("timeline", "z"), 0, -1) == [
                b"post-2",
                b"post-1",
            ]
            assert await db.call("HGET", f"{Keys('bj').tag(3)}wm", "applied:gz") == b"5"

    run(main())


def test_redis_watermark_behind_what_was_committed_stops_commits(redis_url: str) -> None:
    """A watermark that went back in Redis (the server lost commits) makes the next commit
    raise StoreError and change nothing; a reopened state goes on from what Redis holds."""

    async def main() -> None:
        async with Backend("redis", Path(), redis_url).opened(name="s") as state:
            await state.commit(Commit(STREAM, 2, 2, builtin=[message("k", 1)]))
            async with raw_redis(redis_url) as db:
                await db.call("HSET", f"{Keys('bj', 's').tag(0)}wm", "applied:bj", 1)
            with pytest.raises(StoreError, match="watermark of bj/0 is 1, not what this process"):
                await state.commit(Commit(STREAM, 3, 1, builtin=[message("j", 1)]))
            assert await state.get("j") is None
        async with Backend("redis", Path(), redis_url).opened(name="s") as state:
            assert (await state.watermarks())[STREAM].applied == 1
            await state.commit(Commit(STREAM, 2, 1, builtin=[message("k", 2)]))

    run(main())


def test_redis_counter_overflow_refuses_the_whole_step(redis_url: str) -> None:
    """A counter.add that would overflow int64 in Redis fails its step: the step's other
    increments are undone and the watermark does not move."""

    async def main() -> None:
        async with Backend("redis", Path(), redis_url).opened() as state:
            big = str(2**62).encode()
            await state.commit(Commit(STREAM, 1, 1, builtin=[Op("counter.add", "b", 1, "bj", big)]))
            step = [Op("counter.add", "a", 2, "bj", b"5"), Op("counter.add", "b", 3, "bj", big)]
            with pytest.raises(StoreError, match="overflow"):
                await state.commit(Commit(STREAM, 3, 2, builtin=step))
            assert (await state.counter("a"), await state.counter("b")) == (0, 2**62)
            assert await state.watermarks() == {STREAM: Watermark(1, 1)}

    run(main())


def test_redis_state_on_a_cluster_commits_steps_of_many_partitions(redis_cluster_url: str) -> None:
    """On a Redis Cluster each step commits in its partition's slot; a key that belongs to
    another partition than its stream is refused with ConfigError before anything is sent."""
    keys = {
        p: [k for k in (f"k{i}" for i in range(80)) if partition_for(k, PARTITIONS) == p]
        for p in range(PARTITIONS)
    }

    async def main() -> None:
        async with Backend("redis", Path(), redis_cluster_url).opened() as state:
            steps = [
                Commit(
                    StreamId("gz", p),
                    1,
                    2,
                    builtin=[message(keys[p][0], 1, "gz"), message(keys[p][1], 1, "gz")],
                )
                for p in range(PARTITIONS)
            ]
            await state.commit(*steps)
            assert len(await state.entries()) == 2 * PARTITIONS
            assert await state.get(keys[5][1]) == Entry(keys[5][1], b"v", 1, "gz")
            with pytest.raises(ConfigError, match="belongs to partition 1 of 8"):
                await state.commit(
                    Commit(StreamId("gz", 2), 2, 1, builtin=[message(keys[1][2], 1)])
                )
            assert (await state.watermarks())[StreamId("gz", 2)] == Watermark(1, 2)

    run(main())


# -- cache-aside fills (multiactive.reads) -----------------------------------------------------


def test_a_fill_writes_a_missing_key_and_never_replaces_newer_or_equal_messages(
    backend: Backend,
) -> None:
    async def main() -> None:
        async with backend.opened() as state:
            assert await state.fill("a", b"row", 5)
            assert await state.get("a") == Entry("a", b"row", 5, "")
            await apply_each(state, [message("b", 5, value=b"msg")])
            assert not await state.fill("b", b"row", 5)  # the message's own version: it wins
            assert not await state.fill("b", b"row", 4)  # older than the message
            assert await state.fill("b", b"newer-row", 6)  # the row is newer than the cache
            assert (await state.get("b")) == Entry("b", b"newer-row", 6, "")

    run(main())


def test_a_reload_replaces_a_fill_of_the_same_or_an_older_version_but_not_a_newer(
    backend: Backend,
) -> None:
    async def main() -> None:
        async with backend.opened() as state:
            assert await state.fill("a", b"stale", 0)  # a row without version fills at 0
            assert await state.fill("a", b"fresh", 0)
            assert await state.fill("a", b"v3", 3)
            assert not await state.fill("a", b"v2", 2)
            assert (await state.get("a")) == Entry("a", b"v3", 3, "")

    run(main())


def test_a_message_driven_write_beats_a_fill_of_its_version_and_fills_stay_out_of_digests(
    backend: Backend,
) -> None:
    async def main() -> None:
        async with backend.opened() as state:
            await state.fill("a", b"row", 7)
            await state.fill("b", b"row", 1)
            await apply_each(state, [message("a", 7, value=b"msg")])
            assert (await state.get("a")) == Entry("a", b"msg", 7, "bj")
            snapshot = await state.snapshot()
            assert [e.key for e in snapshot.entries] == ["a"]  # the fill of b is local data
            assert await state.digest() == digest_entries([Entry("a", b"msg", 7, "bj")])

    run(main())


FILL_OR_MESSAGE = [("fill", 5), ("fill", 9), ("message", 5), ("message", 9), ("fill", 0)]


@pytest.mark.parametrize("order", list(itertools.permutations(range(len(FILL_OR_MESSAGE)))))
def test_fills_and_message_writes_in_every_order_end_at_the_newest_message(
    order: tuple[int, ...], tmp_path: Path
) -> None:
    """The race of issue 12 on the memory twin of the rule every backend runs: whatever order
    fills (stale or current rows) and message-driven writes of one key arrive in, the newest
    message-driven version ends in the cache."""

    async def main() -> None:
        state = MemoryState()
        seq = 0
        for index in order:
            kind, version = FILL_OR_MESSAGE[index]
            if kind == "fill":
                await state.fill("k", b"row%d" % version, version)
            else:
                seq += 1
                await state.commit(Commit(STREAM, seq, 1, builtin=[message("k", version)]))
        assert (await state.get("k")) == Entry("k", b"v", 9, "bj")

    run(main())


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_fills_and_message_writes_interleaved_end_at_the_newest_message_on_real_stores(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The same race on SQLite and a real redis-server, on a sample of the orders."""
    url = request.getfixturevalue("redis_url") if kind == "redis" else ""
    made = Backend(kind, tmp_path, url)
    orders = list(itertools.permutations(range(len(FILL_OR_MESSAGE))))[::7]

    async def main() -> None:
        for number, order in enumerate(orders):
            async with made.opened(name=f"race{number}") as state:
                seq = 0
                for index in order:
                    kind_, version = FILL_OR_MESSAGE[index]
                    if kind_ == "fill":
                        await state.fill("k", b"row%d" % version, version)
                    else:
                        seq += 1
                        await state.commit(Commit(STREAM, seq, 1, builtin=[message("k", version)]))
                assert (await state.get("k")) == Entry("k", b"v", 9, "bj"), order

    run(main())
