"""State backends: last-writer-wins entries, tombstones, atomic commits and dead letters.

Each test body is one coroutine run with `asyncio.run`; the `backend` fixture runs it against
`MemoryState` and `SqliteState` (a fresh file in `tmp_path` per state made).
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

from multiactive.errors import ConfigError
from multiactive.model.message import StreamId
from multiactive.state import (
    Commit,
    DeadLetter,
    Entry,
    MemoryState,
    Op,
    SqliteState,
    StateBackend,
    Watermark,
)
from multiactive.state.base import digest_entries

STREAM = StreamId("bj", 0)


def run(main: Coroutine[Any, Any, None]) -> None:
    asyncio.run(main)


class Backend:
    """Makes fresh states of one kind (each SQLite one in its own file unless named)."""

    def __init__(self, kind: str, folder: Path) -> None:
        self.kind = kind
        self.folder = folder
        self._files = itertools.count()

    def new(self, site: str = "bj", name: str | None = None) -> StateBackend:
        if self.kind == "memory":
            return MemoryState()
        path = self.folder / (name or f"state-{next(self._files)}.sqlite3")
        return SqliteState(site, path)

    @asynccontextmanager
    async def opened(
        self, site: str = "bj", name: str | None = None
    ) -> AsyncIterator[StateBackend]:
        state = self.new(site, name)
        await state.open()
        try:
            yield state
        finally:
            await state.close()


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return Backend(request.param, tmp_path)


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
            with pytest.raises(ValueError, match="watermark of bj/0 would move from 5"):
                await state.commit(refused)
            after = (await state.entries(), await state.watermarks(), await state.dead_letters())
            assert after == before

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
            with pytest.raises(ValueError, match="watermark of bj/0 would move from 5 to 5"):
                await state.commit(
                    Commit(other, 1, 1, builtin=[message("b", 1, "gz")], dead=[dead(1)]),
                    Commit(STREAM, 5, 2, builtin=[message("a", 1)]),
                    Commit(STREAM, 5, 1, builtin=[message("c", 1)]),
                )
            assert await state.watermarks() == {STREAM: Watermark(3, 3)}
            assert await state.entries() == []
            assert await state.dead_letters() == []

    run(main())


def test_sqlite_refused_commit_is_rolled_back_on_disk(sqlite: Backend) -> None:
    """A refused SQLite commit leaves the file unchanged and the state usable afterwards."""

    async def main() -> None:
        async with sqlite.opened(name="state.sqlite3") as state:
            await state.commit(Commit(STREAM, 2, 2, builtin=[message("k", 1, value=b"kept")]))
            with pytest.raises(ValueError, match="would move"):
                await state.commit(Commit(STREAM, 2, 1, builtin=[message("k", 9)]))
            await state.commit(Commit(STREAM, 3, 1, builtin=[message("j", 2)]))
        async with sqlite.opened(name="state.sqlite3") as state:
            assert await state.watermarks() == {STREAM: Watermark(3, 3)}
            assert await state.entries() == [
                Entry("j", b"v", 2, "bj"),
                Entry("k", b"kept", 1, "bj"),
            ]

    run(main())


def test_sqlite_state_survives_a_reopen(sqlite: Backend) -> None:
    """Entries, watermarks and dead letters committed to SQLite are there after a reopen."""

    async def main() -> None:
        async with sqlite.opened(name="state.sqlite3") as state:
            await state.commit(Commit(STREAM, 2, 2, builtin=[message("k", 1)], dead=[dead(2)]))
        async with sqlite.opened(name="state.sqlite3") as state:
            assert await state.entries() == [Entry("k", b"v", 1, "bj")]
            assert await state.watermarks() == {STREAM: Watermark(2, 2)}
            assert await state.dead_letters() == [dead(2)]

    run(main())


def test_sqlite_state_of_another_site_is_refused(sqlite: Backend) -> None:
    """Opening one site's state file as another site raises ConfigError naming the file."""

    async def main() -> None:
        async with sqlite.opened(site="bj", name="state.sqlite3"):
            pass
        other = sqlite.new(site="gz", name="state.sqlite3")
        try:
            with pytest.raises(ConfigError) as caught:
                await other.open()
        finally:
            await other.close()
        assert str(sqlite.folder / "state.sqlite3") in str(caught.value)
        assert "state of site 'bj', not 'gz'" in str(caught.value)

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


def test_backend_digest_matches_across_backends(tmp_path: Path) -> None:
    """Memory and SQLite states given the same commits report the same digest."""

    async def main() -> None:
        builtin = [message("a", 3), message("b", 2, value=None), message("a", 1, "gz")]
        memory = Backend("memory", tmp_path)
        sqlite = Backend("sqlite", tmp_path)
        async with memory.opened() as one, sqlite.opened() as two:
            for state in (one, two):
                await state.commit(Commit(STREAM, 3, 3, builtin=builtin))
            assert await one.digest() == await two.digest()
            assert await one.digest() == digest_entries(await one.entries())
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
