"""Ingress: checks, group commit, request-id dedup, HLC versions, batch splitting, drain and
journal failures.

Each test body is one coroutine run with `asyncio.run`; the ingress flusher (`run()`) runs as a
task over an in-memory journal (SQLite in `tmp_path` where durability adds value), and drafts
are `[id, type, key, headers, payload]` as PUBLISH carries them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from multiactive.errors import RejectedError
from multiactive.journal import Accepted, Journal, LocalGroup, MemoryJournal, SqliteJournal
from multiactive.model.clock import LOGICAL_BITS, HybridClock, wall_ms
from multiactive.model.ids import looks_generated
from multiactive.model.message import Message, StreamId
from multiactive.model.partition import partition_for
from multiactive.model.topology import Limits
from multiactive.replication.ingress import Ingress, Result

SITE = "bj"
PARTITIONS = 8
TIMEOUT_S = 5.0


def run(main: Coroutine[Any, Any, None]) -> None:
    asyncio.run(main)


def draft(id_: str, key: str = "k", payload: bytes = b"v", **headers: str) -> list[Any]:
    return [id_, "kv.set", key, headers, payload]


class CountingJournal(MemoryJournal):
    """A MemoryJournal that records each append_local call, and fails them when told to."""

    def __init__(self) -> None:
        super().__init__(SITE)
        self.calls: list[list[LocalGroup]] = []
        self.error: Exception | None = None

    async def append_local(self, groups: Sequence[LocalGroup]) -> list[Accepted]:
        self.calls.append(list(groups))
        if self.error is not None:
            raise self.error
        return await super().append_local(groups)


@asynccontextmanager
async def flushing(ingress: Ingress) -> AsyncIterator[asyncio.Task[None]]:
    """Run the ingress flusher as a task until the block ends."""
    task = asyncio.create_task(ingress.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def opened(journal: Journal | None = None) -> Journal:
    journal = journal or CountingJournal()
    await journal.open()
    return journal


def new_ingress(
    journal: Journal,
    limits: Limits | None = None,
    clock: HybridClock | None = None,
    partitions: int = PARTITIONS,
) -> Ingress:
    return Ingress(SITE, journal, clock or HybridClock(), partitions, limits or Limits())


async def stored(journal: Journal) -> dict[tuple[int, int], Message]:
    """Every journaled local message by (partition, seq)."""
    out: dict[tuple[int, int], Message] = {}
    for stream in journal.heads(SITE):
        for batch in await journal.read(stream, 1, 1 << 30):
            for message in batch.messages():
                out[(message.partition, message.seq)] = message
    return out


async def submitted(ingress: Ingress, *requests: list[Any]) -> list[list[Result]]:
    """Submit requests in one event-loop turn and wait for all their results."""
    futures = [ingress.submit(request) for request in requests]
    async with asyncio.timeout(TIMEOUT_S):
        return list(await asyncio.gather(*futures))


# -- group commit ----------------------------------------------------------------------------


def test_drafts_of_one_turn_are_journaled_in_one_append() -> None:
    """Group commit: requests submitted in one loop turn become one append_local call; each
    draft gets [0, partition_for(key, P), seq, False, version] in draft order, seqs dense per
    partition, versions strictly increasing in draft order."""

    async def main() -> None:
        journal = await opened()
        assert isinstance(journal, CountingJournal)
        ingress = new_ingress(journal)
        requests = [
            [draft(f"r{r}-{i}", key=f"key-{(r * 7 + i) % 11}") for i in range(6)] for r in range(4)
        ]
        async with flushing(ingress):
            results = await submitted(ingress, *requests)
        assert len(journal.calls) == 1
        assert ingress.statistics().flushes == 1
        assert journal.statistics().messages_appended == 24
        next_seq: dict[int, int] = {}
        messages = await stored(journal)
        for request, request_results in zip(requests, results, strict=True):
            for (id_, _, key, _, _), result in zip(request, request_results, strict=True):
                partition = partition_for(key, PARTITIONS)
                next_seq[partition] = next_seq.get(partition, 0) + 1
                assert result[:4] == [0, partition, next_seq[partition], False]
                assert messages[(partition, next_seq[partition])].id == id_
        assert len(set(next_seq)) > 1  # the drafts really spread over several partitions
        stats = ingress.statistics()
        assert (stats.accepted, stats.duplicates, stats.refused, stats.pending) == (24, 0, 0, 0)

    run(main())


def test_empty_id_gets_a_generated_one() -> None:
    """A draft with id "" is journaled under a fresh generated id, a different one each time."""

    async def main() -> None:
        journal = await opened()
        ingress = new_ingress(journal)
        async with flushing(ingress):
            (results,) = await submitted(ingress, [draft(""), draft(""), draft("given")])
        assert [r[3] for r in results] == [False, False, False]
        ids = [m.id for m in (await stored(journal)).values()]
        generated = [i for i in ids if i != "given"]
        assert len(generated) == 2
        assert len(set(generated)) == 2
        assert all(looks_generated(i) for i in generated)

    run(main())


def test_repeated_id_returns_the_first_position_as_a_duplicate() -> None:
    """A request id seen before, in the same call or a later one, is answered with its first
    position and duplicate True, and is journaled once."""

    async def main() -> None:
        journal = await opened()
        ingress = new_ingress(journal)
        async with flushing(ingress):
            (first,) = await submitted(
                ingress, [draft("a", key="ka"), draft("b", key="kb"), draft("a", key="other")]
            )
            (later,) = await submitted(ingress, [draft("a", key="ka"), draft("c", key="ka")])
        position_a = [partition_for("ka", PARTITIONS), 1]
        assert first[0][:4] == [0, *position_a, False]
        assert isinstance(first[0][4], int)
        assert first[2] == [0, *position_a, True, None]
        assert later[0] == [0, *position_a, True, None]
        assert later[1][:4] == [0, *position_a[:1], 2, False]
        assert sorted(m.id for m in (await stored(journal)).values()) == ["a", "b", "c"]
        assert journal.statistics().messages_appended == 3
        stats = ingress.statistics()
        assert (stats.accepted, stats.duplicates) == (3, 2)

    run(main())


def test_repeated_id_after_a_journal_reopen_is_a_duplicate(tmp_path: Path) -> None:
    """Request-id dedup survives a restart: a new ingress on the reopened SQLite journal
    answers a known id with its first position."""

    async def main() -> None:
        path = tmp_path / "journal.sqlite3"
        journal = await opened(SqliteJournal(SITE, path, fsync=False))
        ingress = new_ingress(journal)
        async with flushing(ingress):
            (first,) = await submitted(ingress, [draft("a", key="ka")])
        await journal.close()
        journal = await opened(SqliteJournal(SITE, path, fsync=False))
        try:
            ingress = new_ingress(journal)
            async with flushing(ingress):
                (again,) = await submitted(ingress, [draft("a", key="ka")])
            assert again == [[0, *first[0][1:3], True, None]]
            assert journal.statistics().messages_appended == 0
        finally:
            await journal.close()

    run(main())


# -- refusals --------------------------------------------------------------------------------

REFUSALS = [
    pytest.param(
        "not a draft", "malformed", "a draft is [id, type, key, headers, payload]", id="not-a-list"
    ),
    pytest.param(
        ["x", "kv.set", "k", {}],
        "malformed",
        "a draft is [id, type, key, headers, payload]",
        id="four-fields",
    ),
    pytest.param(
        ["has space", "kv.set", "k", {}, b""],
        "bad_id",
        "request id 'has space' is not 1..128 printable ASCII",
        id="id-space",
    ),
    pytest.param(
        ["i" * 129, "kv.set", "k", {}, b""],
        "bad_id",
        f"request id {'i' * 129!r} is not 1..128 printable ASCII",
        id="id-long",
    ),
    pytest.param(
        [7, "kv.set", "k", {}, b""],
        "bad_id",
        "request id 7 is not 1..128 printable ASCII",
        id="id-int",
    ),
    pytest.param(
        ["x", "", "k", {}, b""], "bad_type", "type must be 1..128 characters", id="type-empty"
    ),
    pytest.param(
        ["x", "t" * 129, "k", {}, b""], "bad_type", "type must be 1..128 characters", id="type-long"
    ),
    pytest.param(
        ["x", "kv.set", "k" * 1025, {}, b""],
        "bad_key",
        "key must be a non-empty string of at most 1024 bytes",
        id="key-long",
    ),
    pytest.param(
        ["x", "kv.set", "é" * 513, {}, b""],
        "bad_key",
        "key must be a non-empty string of at most 1024 bytes",
        id="key-long-in-bytes",
    ),
    pytest.param(
        ["x", "kv.set", "", {}, b""],
        "bad_key",
        "key must be a non-empty string of at most 1024 bytes",
        id="key-empty",
    ),
    pytest.param(
        ["x", "kv.set", None, {}, b""],
        "bad_key",
        "key must be a non-empty string of at most 1024 bytes",
        id="key-none",
    ),
    pytest.param(
        ["a\x01", "kv.set", "k", {}, b""],
        "bad_id",
        "request id 'a\\x01' is not 1..128 printable ASCII",
        id="id-not-printable",
    ),
    pytest.param(
        ["é", "kv.set", "k", {}, b""],
        "bad_id",
        "request id 'é' is not 1..128 printable ASCII",
        id="id-not-ascii",
    ),
    pytest.param(
        ["x", "ma.canary", "k", {}, b""],
        "bad_type",
        "types starting 'ma.' are reserved",
        id="type-reserved",
    ),
    pytest.param(
        ["x", "counter.add", "k", {}, b"abc"],
        "bad_payload",
        "counter.add payload must be an ASCII integer within +-2**62, got b'abc'",
        id="counter-not-integer",
    ),
    pytest.param(
        ["x", "zset.add", "k", {}, b""],
        "bad_payload",
        "zset.add payload is the member and must not be empty",
        id="zset-no-member",
    ),
    pytest.param(
        ["x", "kv.set", "k", {}, "text"], "bad_payload", "payload must be bytes", id="payload-str"
    ),
    pytest.param(
        ["x", "kv.set", "k", {}, b"p" * 11 * 1024],
        "payload_too_large",
        "payload is 11 KiB; the limit is 10 KiB (set max_payload_bytes in [limits])",
        id="payload-large",
    ),
    pytest.param(
        ["x", "kv.set", "k", ["a"], b""],
        "bad_headers",
        "headers must map str to str, at most 4096 bytes",
        id="headers-list",
    ),
    pytest.param(
        ["x", "kv.set", "k", {"a": 1}, b""],
        "bad_headers",
        "headers must map str to str, at most 4096 bytes",
        id="headers-int",
    ),
    pytest.param(
        ["x", "kv.set", "k", {"a": "v" * 4096}, b""],
        "bad_headers",
        "headers must map str to str, at most 4096 bytes",
        id="headers-large",
    ),
]


@pytest.mark.parametrize(("bad", "code", "text"), REFUSALS)
def test_a_refused_draft_gets_its_reason_and_the_others_are_journaled(
    bad: Any, code: str, text: str
) -> None:
    """A bad draft gets [1, code, text] in its own slot; the good drafts around it in the same
    request are journaled and acknowledged."""

    async def main() -> None:
        journal = await opened()
        ingress = new_ingress(journal)
        async with flushing(ingress):
            (results,) = await submitted(ingress, [draft("before"), bad, draft("after")])
        assert results[1] == [1, code, text]
        assert results[0][:1] == results[2][:1] == [0]
        assert sorted(m.id for m in (await stored(journal)).values()) == ["after", "before"]
        stats = ingress.statistics()
        assert (stats.accepted, stats.refused) == (2, 1)

    run(main())


def test_drafts_at_each_limit_are_accepted() -> None:
    """The limits are inclusive: a 128-char id and type, a 1024-byte key, a payload of exactly
    max_payload_bytes and 4096 bytes of headers are all accepted."""

    async def main() -> None:
        journal = await opened()
        ingress = new_ingress(journal)
        edge = ["i" * 128, "t" * 128, "é" * 512, {"h": "v" * 4095}, b"p" * 10 * 1024]
        async with flushing(ingress):
            (results,) = await submitted(ingress, [edge])
        assert results[0][:1] == [0]
        assert journal.statistics().messages_appended == 1

    run(main())


def test_request_of_refusals_only_is_answered_without_the_journal() -> None:
    """A request whose every draft is refused resolves at once and journals nothing."""

    async def main() -> None:
        journal = await opened()
        assert isinstance(journal, CountingJournal)
        ingress = new_ingress(journal)
        future = ingress.submit(["bad", ["x", "", "k", {}, b""]])
        assert future.done()
        assert [r[:2] for r in future.result()] == [[1, "malformed"], [1, "bad_type"]]
        assert ingress.pending == 0
        assert journal.calls == []

    run(main())


# -- versions and batches --------------------------------------------------------------------


def test_versions_increase_past_the_clock_and_created_time_is_set() -> None:
    """Each accepted draft gets a version above every one the clock issued or observed before,
    increasing in submission order across calls, and a created time from the wall clock."""

    async def main() -> None:
        journal = await opened()
        clock = HybridClock(now_ms=lambda: 5)  # a stuck wall clock: only the logical part moves
        clock.observe((5 << LOGICAL_BITS) + 100)
        before_version = clock.last
        ingress = new_ingress(journal, clock=clock)
        before_ms = wall_ms()
        async with flushing(ingress):
            (first,) = await submitted(ingress, [draft(f"a{i}", key=f"k{i}") for i in range(5)])
            (second,) = await submitted(ingress, [draft(f"b{i}", key=f"k{i}") for i in range(5)])
        after_ms = wall_ms()
        messages = await stored(journal)
        versions = [messages[(r[1], r[2])].version for r in first + second]
        assert len(set(versions)) == 10
        assert versions[0] > before_version
        assert all(v < w for v, w in itertools.pairwise(versions))
        assert clock.last >= versions[-1]
        assert all(before_ms <= m.created_ms <= after_ms for m in messages.values())

    run(main())


def test_a_causal_floor_puts_versions_above_it() -> None:
    """A draft submitted with a session's token (floor) gets a version above the token, even
    when the token is ahead of this site's clock."""

    async def main() -> None:
        journal = await opened()
        ingress = new_ingress(journal)
        floor = ((wall_ms() + 50) << LOGICAL_BITS) + 7  # another site's clock, 50 ms ahead
        async with flushing(ingress):
            (results,) = [await ingress.submit([draft("c1")], floor=floor)]
        assert results[0][0] == 0
        assert results[0][4] > floor

    run(main())


def test_a_floor_far_ahead_of_the_clock_is_refused() -> None:
    """A token minutes ahead of the wall clock is refused (bad_floor) and moves no clock."""

    async def main() -> None:
        journal = await opened()
        clock = HybridClock()
        ingress = new_ingress(journal, clock=clock)
        floor = (wall_ms() + 3_600_000) << LOGICAL_BITS
        async with flushing(ingress):
            (result,) = await ingress.submit([draft("c2")], floor=floor)
        assert result[:2] == [1, "bad_floor"]
        assert "ahead" in result[2]
        assert clock.last < floor

    run(main())


def test_partition_over_max_batch_bytes_is_split_into_consecutive_batches() -> None:
    """Rows of one partition larger than max_batch_bytes go into several batches, each under
    the limit, in one append, with consecutive seqs in draft order."""

    async def main() -> None:
        journal = await opened()
        assert isinstance(journal, CountingJournal)
        limits = Limits(max_payload_bytes=1000, max_batch_bytes=4096)
        ingress = new_ingress(journal, limits)
        drafts = [draft(f"d{i}", key="one-key", payload=bytes([i]) * 1000) for i in range(20)]
        async with flushing(ingress):
            (results,) = await submitted(ingress, drafts)
        partition = partition_for("one-key", PARTITIONS)
        assert [r[:4] for r in results] == [[0, partition, seq, False] for seq in range(1, 21)]
        assert len(journal.calls) == 1
        batches = await journal.read(StreamId(SITE, partition), 1, 1 << 30)
        assert len(batches) > 1
        assert batches[0].first_seq == 1
        assert batches[-1].last_seq == 20
        for earlier, later in itertools.pairwise(batches):
            assert later.first_seq == earlier.last_seq + 1
        assert all(b.size <= limits.max_batch_bytes for b in batches)
        ids = [m.id for b in batches for m in b.messages()]
        assert ids == [f"d{i}" for i in range(20)]

    run(main())


def test_batches_stay_under_max_batch_bytes_when_headers_ids_and_types_dominate() -> None:
    """The batch split counts the whole row: drafts with small payloads but long ids, types
    and headers still make batches no larger than max_batch_bytes."""

    async def main() -> None:
        journal = await opened()
        limits = Limits(max_batch_bytes=64 * 1024)
        ingress = new_ingress(journal, limits)
        drafts = [
            [f"{i:04d}" + "i" * 120, "t" * 128, "one-key", {"trace": "x" * 2000}, b"p"]
            for i in range(200)
        ]
        async with flushing(ingress):
            (results,) = await submitted(ingress, drafts)
        assert [r[2] for r in results] == list(range(1, 201))
        batches = await journal.read(
            StreamId(SITE, partition_for("one-key", PARTITIONS)), 1, 1 << 30
        )
        assert sum(b.count for b in batches) == 200
        assert max(b.size for b in batches) <= limits.max_batch_bytes

    run(main())


# -- drain and failures ----------------------------------------------------------------------


def test_drain_refuses_new_drafts_and_returns_once_queued_ones_are_journaled() -> None:
    """drain() makes submit raise RejectedError ("shutting down") and returns only after every
    draft queued before it is journaled and answered."""

    async def main() -> None:
        journal = await opened()
        ingress = new_ingress(journal, Limits(linger_ms=20.0))
        async with flushing(ingress):
            queued = [
                ingress.submit([draft(f"q{r}-{i}", key=f"k{i}") for i in range(3)])
                for r in range(3)
            ]
            assert not any(f.done() for f in queued)
            async with asyncio.timeout(TIMEOUT_S):
                await ingress.drain()
            assert all(f.done() for f in queued)
            assert all(r[0] == 0 for f in queued for r in f.result())
            assert journal.statistics().messages_appended == 9
            assert ingress.pending == 0
            with pytest.raises(RejectedError, match="shutting down"):
                ingress.submit([draft("late")])
        assert journal.statistics().messages_appended == 9

    run(main())


def test_failed_append_refuses_every_draft_of_the_flush_and_stops_the_flusher() -> None:
    """When the journal append raises, every draft of that flush gets [1, "unavailable", ...]
    naming the error (refusals keep their own reason) and run() raises it."""

    async def main() -> None:
        journal = await opened()
        assert isinstance(journal, CountingJournal)
        journal.error = OSError("disk full")
        ingress = new_ingress(journal)
        task = asyncio.create_task(ingress.run())
        futures = [
            ingress.submit([draft("a", key="k1"), draft("b", key="k2")]),
            ingress.submit([draft("c", key="k3"), "bad"]),
        ]
        with pytest.raises(OSError, match="disk full"):
            async with asyncio.timeout(TIMEOUT_S):
                await task
        unavailable = [1, "unavailable", "journal append failed: disk full"]
        assert futures[0].result() == [unavailable, unavailable]
        assert futures[1].result()[0] == unavailable
        assert futures[1].result()[1][:2] == [1, "malformed"]
        assert len(journal.calls) == 1
        assert journal.heads() == {}
        stats = ingress.statistics()
        assert (stats.journal_errors, stats.accepted, stats.refused) == (1, 0, 4)

    run(main())
