"""Journal invariants J1-J4, reads, trimming and peer heads, on every backend.

Each test body is one coroutine run with `asyncio.run`; the `backend` fixture runs it against
`MemoryJournal`, `SqliteJournal` (a file in `tmp_path`) and `RedisJournal` on a redis-server
and on a Redis Cluster of three masters (both emptied for each test, see `tests/conftest.py`).
Tests of durability across a reopen (`durable`) run on SQLite and Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from multiactive.errors import (
    ConfigError,
    JournalError,
    StoreError,
    StoreOutcomeUnknown,
    StoreUnavailable,
)
from multiactive.journal import Journal, LocalGroup, MemoryJournal, RedisJournal, SqliteJournal
from multiactive.local.redis import RedisClusterServers, RedisServer
from multiactive.model.batch import CODEC_ZSTD, RecordBatch, build_batch
from multiactive.model.message import Position, Row, StreamId
from multiactive.procs import free_port
from multiactive.redisdb import Keys, RedisDb

SITE = "bj"
PEER = "gz"


def run(main: Coroutine[Any, Any, None]) -> None:
    asyncio.run(main)


class Backend:
    """Makes journals of one kind; SQLite ones share one file and Redis ones one database,
    so a reopen finds the data."""

    def __init__(self, param: str, folder: Path, url: str = "") -> None:
        self.kind = "redis" if param.startswith("redis") else param
        self.path = folder / "journal.sqlite3"
        self.url = url
        self.where = url or str(self.path)  # what error messages name

    def new(self, site: str = SITE, codec: int = 0) -> Journal:
        if self.kind == "memory":
            return MemoryJournal(site, codec)
        if self.kind == "redis":
            return RedisJournal(site, self.url, codec=codec)
        return SqliteJournal(site, self.path, codec=codec)

    @asynccontextmanager
    async def opened(self, site: str = SITE, codec: int = 0) -> AsyncIterator[Journal]:
        journal = self.new(site, codec)
        await journal.open()
        try:
            yield journal
        finally:
            await journal.close()


def make_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    url = ""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
    elif request.param == "redis-cluster":
        url = request.getfixturevalue("redis_cluster_url")
    return Backend(request.param, tmp_path, url)


@pytest.fixture(params=["memory", "sqlite", "redis", "redis-cluster"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return make_backend(request, tmp_path)


@pytest.fixture(params=["sqlite", "redis", "redis-cluster"])
def durable(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Backends whose data outlives the journal object: a new one on the same storage."""
    return make_backend(request, tmp_path)


@pytest.fixture(params=["redis", "redis-cluster"])
def redis_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return make_backend(request, tmp_path)


@pytest.fixture
def sqlite(tmp_path: Path) -> Backend:
    return Backend("sqlite", tmp_path)


def row(request_id: str, version: int = 1, payload: bytes = b"v") -> Row:
    return (request_id, "kv.set", f"key-{request_id}", version, 1000, {}, payload)


def group(partition: int, *ids: str, created_ms: int = 1000) -> LocalGroup:
    return LocalGroup(partition, [row(i) for i in ids], created_ms)


def remote(first_seq: int, count: int, partition: int = 0, origin: str = PEER) -> RecordBatch:
    rows = [row(f"{origin}-{partition}-{first_seq + i}") for i in range(count)]
    return build_batch(origin, partition, first_seq, rows, created_ms=1000)


async def all_seqs(journal: Journal, stream: StreamId) -> list[int]:
    """Every seq stored for a stream, read batch by batch from seq 1."""
    seqs: list[int] = []
    for batch in await journal.read(stream, 1, 1 << 30):
        seqs.extend(m.seq for m in batch.messages())
    return seqs


async def all_ids(journal: Journal, stream: StreamId) -> list[str]:
    ids: list[str] = []
    for batch in await journal.read(stream, 1, 1 << 30):
        ids.extend(m.id for m in batch.messages())
    return ids


def seqs_of(batches: Sequence[RecordBatch]) -> list[tuple[int, int]]:
    return [(b.first_seq, b.last_seq) for b in batches]


# -- J1: dense seqs ------------------------------------------------------------------------


def test_j1_local_seqs_are_dense_from_one_across_appends(backend: Backend) -> None:
    """J1: successive local appends give one partition exactly the seqs 1..head, in order."""

    async def main() -> None:
        async with backend.opened() as journal:
            first = await journal.append_local([group(0, "a", "b", "c")])
            second = await journal.append_local([group(0, "d")])
            third = await journal.append_local([group(0, "e", "f")])
            positions = [r.position for r in [*first, *second, *third]]
            assert positions == [Position(SITE, 0, seq) for seq in range(1, 7)]
            assert not any(r.duplicate for r in [*first, *second, *third])
            stream = StreamId(SITE, 0)
            assert journal.head(stream) == 6
            assert await all_seqs(journal, stream) == [1, 2, 3, 4, 5, 6]
            assert await all_ids(journal, stream) == ["a", "b", "c", "d", "e", "f"]

    run(main())


def test_j1_groups_of_one_partition_in_one_call_continue_each_other(backend: Backend) -> None:
    """J1: two groups of the same partition in one call get consecutive seqs, no overlap."""

    async def main() -> None:
        async with backend.opened() as journal:
            await journal.append_local([group(2, "x")])
            results = await journal.append_local(
                [group(2, "a", "b"), group(5, "p"), group(2, "c"), group(5, "q", "r")]
            )
            assert [(r.id, r.position.partition, r.position.seq) for r in results] == [
                ("a", 2, 2),
                ("b", 2, 3),
                ("p", 5, 1),
                ("c", 2, 4),
                ("q", 5, 2),
                ("r", 5, 3),
            ]
            assert journal.heads() == {StreamId(SITE, 2): 4, StreamId(SITE, 5): 3}
            assert await all_seqs(journal, StreamId(SITE, 2)) == [1, 2, 3, 4]
            assert await all_ids(journal, StreamId(SITE, 2)) == ["x", "a", "b", "c"]
            assert await all_seqs(journal, StreamId(SITE, 5)) == [1, 2, 3]

    run(main())


def test_j1_stored_batches_chain_without_gap_or_overlap(backend: Backend) -> None:
    """J1: each stored batch starts right after the previous one ends."""

    async def main() -> None:
        async with backend.opened() as journal:
            for n in range(5):
                await journal.append_local([group(1, *[f"{n}-{i}" for i in range(n + 1)])])
            batches = await journal.read(StreamId(SITE, 1), 1, 1 << 30)
            assert seqs_of(batches) == [(1, 1), (2, 3), (4, 6), (7, 10), (11, 15)]

    run(main())


def test_j1_local_batches_use_the_journal_codec(backend: Backend) -> None:
    """A journal configured for zstd stores compressed batches that still read back the same."""

    async def main() -> None:
        async with backend.opened(codec=CODEC_ZSTD) as journal:
            await journal.append_local([group(0, "a", "b")])
            (batch,) = await journal.read(StreamId(SITE, 0), 1, 1 << 20)
            assert batch.codec == CODEC_ZSTD
            assert [m.id for m in batch.messages()] == ["a", "b"]

    run(main())


# -- J2: remote batches ----------------------------------------------------------------------


def test_j2_remote_batches_in_order_are_stored(backend: Backend) -> None:
    """J2: remote batches continuing the head are stored and move the head, in one call."""

    async def main() -> None:
        async with backend.opened() as journal:
            result = await journal.append_remote([remote(1, 3), remote(4, 2), remote(1, 1, 3)])
            assert result.stored == 3
            assert result.duplicates == 0
            assert result.gaps == {}
            assert result.heads == {StreamId(PEER, 0): 5, StreamId(PEER, 3): 1}
            assert journal.head(StreamId(PEER, 0)) == 5
            assert await all_seqs(journal, StreamId(PEER, 0)) == [1, 2, 3, 4, 5]
            stored = await journal.read(StreamId(PEER, 0), 1, 1 << 20)
            assert [b.data for b in stored] == [remote(1, 3).data, remote(4, 2).data]

    run(main())


def test_j2_batch_at_or_below_head_is_a_counted_noop(backend: Backend) -> None:
    """J2: a remote batch whose seqs are all <= head changes nothing and counts as duplicate."""

    async def main() -> None:
        async with backend.opened() as journal:
            await journal.append_remote([remote(1, 3), remote(4, 2)])
            before = await journal.read(StreamId(PEER, 0), 1, 1 << 20)
            result = await journal.append_remote([remote(1, 3), remote(4, 2), remote(2, 1)])
            assert result.stored == 0
            assert result.duplicates == 3
            assert result.gaps == {}
            assert journal.head(StreamId(PEER, 0)) == 5
            assert await journal.read(StreamId(PEER, 0), 1, 1 << 20) == before
            assert journal.statistics().duplicate_batches == 3
            assert journal.statistics().batches_appended == 2

    run(main())


def test_j2_batch_above_head_plus_one_is_refused_with_the_head(backend: Backend) -> None:
    """J2: a batch starting above head + 1 is not stored; gaps reports the head to resume from."""

    async def main() -> None:
        async with backend.opened() as journal:
            await journal.append_remote([remote(1, 2)])
            result = await journal.append_remote([remote(4, 2), remote(6, 1)])
            stream = StreamId(PEER, 0)
            assert result.stored == 0
            assert result.gaps == {stream: 2}
            assert result.heads == {stream: 2}
            assert result.duplicates == 0
            assert journal.head(stream) == 2
            assert await all_seqs(journal, stream) == [1, 2]
            assert journal.statistics().refused_gaps == 1
            fresh = await journal.append_remote([remote(2, 1, partition=9)])
            assert fresh.gaps == {StreamId(PEER, 9): 0}

    run(main())


def test_j2_gap_in_one_stream_does_not_block_another(backend: Backend) -> None:
    """J2: a refused stream stops only its own later batches; other streams are stored."""

    async def main() -> None:
        async with backend.opened() as journal:
            result = await journal.append_remote(
                [remote(1, 1, 0), remote(3, 1, 1), remote(2, 1, 0), remote(1, 1, 1)]
            )
            assert result.gaps == {StreamId(PEER, 1): 0}
            assert result.stored == 2
            assert journal.head(StreamId(PEER, 0)) == 2
            assert journal.head(StreamId(PEER, 1)) == 0

    run(main())


def test_j2_batch_straddling_head_keeps_only_the_new_part(backend: Backend) -> None:
    """J2: a batch overlapping the head is stored from head + 1 on, with the right messages."""

    async def main() -> None:
        async with backend.opened() as journal:
            await journal.append_remote([remote(1, 3)])
            overlapping = remote(2, 4)  # seqs 2..5, head is 3
            result = await journal.append_remote([overlapping])
            stream = StreamId(PEER, 0)
            assert result.stored == 1
            assert result.duplicates == 0
            assert result.heads == {stream: 5}
            assert await all_seqs(journal, stream) == [1, 2, 3, 4, 5]
            tail = (await journal.read(stream, 4, 1 << 20))[-1]
            assert (tail.first_seq, tail.last_seq) == (4, 5)
            assert list(tail.messages()) == list(overlapping.messages())[2:]

    run(main())


def test_j2_remote_batch_of_this_site_is_refused(backend: Backend) -> None:
    """A remote batch carrying this site's own origin raises JournalError (L1: never echoed)."""

    async def main() -> None:
        async with backend.opened() as journal:
            with pytest.raises(JournalError, match="this site's own stream bj/0"):
                await journal.append_remote([remote(1, 1, origin=SITE)])
            assert journal.heads() == {}

    run(main())


# -- J3: durability and request-id dedup -----------------------------------------------------


def test_j3_local_append_is_visible_to_a_fresh_journal_on_the_file(durable: Backend) -> None:
    """J3: once append_local returns, another journal on the same storage sees it all."""

    async def main() -> None:
        async with durable.opened() as writer:
            await writer.append_local([group(0, "a", "b"), group(3, "c")])
            await writer.append_remote([remote(1, 2)])
            async with durable.opened() as other:
                assert other.heads() == {
                    StreamId(SITE, 0): 2,
                    StreamId(SITE, 3): 1,
                    StreamId(PEER, 0): 2,
                }
                assert await all_ids(other, StreamId(SITE, 0)) == ["a", "b"]
                assert await all_seqs(other, StreamId(PEER, 0)) == [1, 2]
                assert await other.lookup(["c"]) == {"c": Position(SITE, 3, 1)}

    run(main())


def test_j3_reopened_journal_continues_seqs_and_dedup(durable: Backend) -> None:
    """J3: after close and reopen, seqs continue from the stored head and old ids still dedup."""

    async def main() -> None:
        async with durable.opened() as journal:
            await journal.append_local([group(0, "a", "b")])
        async with durable.opened() as journal:
            results = await journal.append_local([group(0, "a", "c")])
            assert [(r.position.seq, r.duplicate) for r in results] == [(1, True), (3, False)]
            assert await all_ids(journal, StreamId(SITE, 0)) == ["a", "b", "c"]

    run(main())


def test_j3_reopened_journal_remembers_the_greatest_version(durable: Backend) -> None:
    """A reopened journal knows the greatest version stored, so a restarted clock starts past."""

    async def main() -> None:
        async with durable.opened() as journal:
            await journal.append_local([LocalGroup(0, [row("a", version=77)], 1)])
            await journal.append_remote(
                [build_batch(PEER, 1, 1, [row("r", version=99)], created_ms=1)]
            )
            assert journal.max_version == 99
        async with durable.opened() as journal:
            assert journal.max_version == 99

    run(main())


def test_j3_same_id_twice_returns_the_first_position(backend: Backend) -> None:
    """J3: an id appended again maps to its first position, duplicate=True, journaled once."""

    async def main() -> None:
        async with backend.opened() as journal:
            (first,) = await journal.append_local([group(1, "dup")])
            results = await journal.append_local([group(1, "new"), group(1, "dup")])
            assert first.duplicate is False
            assert [(r.id, r.position, r.duplicate) for r in results] == [
                ("new", Position(SITE, 1, 2), False),
                ("dup", Position(SITE, 1, 1), True),
            ]
            assert journal.heads() == {StreamId(SITE, 1): 2}
            assert await all_ids(journal, StreamId(SITE, 1)) == ["dup", "new"]
            assert journal.statistics().deduplicated_ids == 1
            assert journal.statistics().messages_appended == 2

    run(main())


def test_j3_id_dedup_across_partitions_is_per_site_except_on_redis(backend: Backend) -> None:
    """An id seen before in another partition is a duplicate in SQLite and memory (ids are
    per site) and journaled again in Redis (ids are per partition, as documented)."""

    async def main() -> None:
        async with backend.opened() as journal:
            await journal.append_local([group(1, "dup")])
            (again,) = await journal.append_local([group(4, "dup")])
            if backend.kind == "redis":
                assert (again.position, again.duplicate) == (Position(SITE, 4, 1), False)
                assert journal.heads() == {StreamId(SITE, 1): 1, StreamId(SITE, 4): 1}
            else:
                assert (again.position, again.duplicate) == (Position(SITE, 1, 1), True)
                assert journal.heads() == {StreamId(SITE, 1): 1}

    run(main())


def test_j3_same_id_twice_in_one_call_is_journaled_once(backend: Backend) -> None:
    """J3: an id repeated within one call is journaled at its first occurrence only."""

    async def main() -> None:
        async with backend.opened() as journal:
            results = await journal.append_local(
                [group(0, "a", "b", "a"), group(6, "b"), group(0, "c")]
            )
            assert [(r.id, r.position.partition, r.position.seq, r.duplicate) for r in results] == [
                ("a", 0, 1, False),
                ("b", 0, 2, False),
                ("a", 0, 1, True),
                ("b", 0, 2, True),
                ("c", 0, 3, False),
            ]
            assert journal.heads() == {StreamId(SITE, 0): 3}
            assert await all_ids(journal, StreamId(SITE, 0)) == ["a", "b", "c"]

    run(main())


def test_j3_a_call_of_only_duplicates_stores_nothing(backend: Backend) -> None:
    """J3: a call whose every id is already journaled adds no batch and keeps the head."""

    async def main() -> None:
        async with backend.opened() as journal:
            await journal.append_local([group(0, "a")])
            results = await journal.append_local([group(0, "a")])
            assert results[0].duplicate
            assert len(await journal.read(StreamId(SITE, 0), 1, 1 << 20)) == 1
            assert journal.statistics().batches_appended == 1

    run(main())


def test_lookup_finds_local_ids_only(backend: Backend) -> None:
    """lookup maps request ids of local messages to their positions; unknown ids are absent."""

    async def main() -> None:
        async with backend.opened() as journal:
            await journal.append_local([group(0, "a"), group(2, "b")])
            await journal.append_remote([remote(1, 1)])
            found = await journal.lookup(["a", "b", "missing", f"{PEER}-0-1"])
            assert found == {"a": Position(SITE, 0, 1), "b": Position(SITE, 2, 1)}

    run(main())


# -- reading ---------------------------------------------------------------------------------


def test_read_returns_batches_from_a_seq(backend: Backend) -> None:
    """read starts with the batch holding from_seq and returns the later ones in order."""

    async def main() -> None:
        async with backend.opened() as journal:
            await journal.append_remote([remote(1, 3), remote(4, 3), remote(7, 3)])
            stream = StreamId(PEER, 0)
            assert seqs_of(await journal.read(stream, 1, 1 << 20)) == [(1, 3), (4, 6), (7, 9)]
            assert seqs_of(await journal.read(stream, 5, 1 << 20)) == [(4, 6), (7, 9)]
            assert seqs_of(await journal.read(stream, 7, 1 << 20)) == [(7, 9)]
            assert await journal.read(stream, 10, 1 << 20) == []
            assert await journal.read(StreamId(PEER, 5), 1, 1 << 20) == []

    run(main())


def test_read_respects_max_bytes_but_returns_at_least_one(backend: Backend) -> None:
    """read stops before going over max_bytes, yet returns one batch even when it is bigger."""

    async def main() -> None:
        async with backend.opened() as journal:
            batches = [remote(1, 1), remote(2, 1), remote(3, 1)]
            await journal.append_remote(batches)
            stream = StreamId(PEER, 0)
            size = batches[0].size
            assert all(b.size == size for b in batches)
            assert seqs_of(await journal.read(stream, 1, 1)) == [(1, 1)]
            assert seqs_of(await journal.read(stream, 1, 2 * size)) == [(1, 1), (2, 2)]
            assert seqs_of(await journal.read(stream, 1, 2 * size + 1)) == [(1, 1), (2, 2)]
            assert len(await journal.read(stream, 1, 3 * size)) == 3

    run(main())


# -- J4: trimming ----------------------------------------------------------------------------


async def four_batches(journal: Journal) -> StreamId:
    """Local batches 1-2 (t=100), 3-4 (t=200), 5-6 (t=100), 7 (t=100) in partition 0."""
    await journal.append_local([group(0, "a", "b", created_ms=100)])
    await journal.append_local([group(0, "c", "d", created_ms=200)])
    await journal.append_local([group(0, "e", "f", created_ms=100)])
    await journal.append_local([group(0, "g", created_ms=100)])
    return StreamId(SITE, 0)


def test_j4_trim_drops_whole_batches_at_or_below_the_floor(backend: Backend) -> None:
    """J4: trim drops batches entirely at or below the floor; one crossing the floor stays."""

    async def main() -> None:
        async with backend.opened() as journal:
            stream = await four_batches(journal)
            assert await journal.trim({stream: 3}, older_than_ms=1000) == 1
            assert seqs_of(await journal.read(stream, 1, 1 << 20)) == [(3, 4), (5, 6), (7, 7)]
            assert await journal.low_water(stream) == 3
            assert journal.head(stream) == 7

    run(main())


def test_j4_trim_keeps_batches_newer_than_the_cutoff_and_all_after(backend: Backend) -> None:
    """J4: a batch too new to drop stops the trim there, so the rest stays a dense suffix."""

    async def main() -> None:
        async with backend.opened() as journal:
            stream = await four_batches(journal)
            assert await journal.trim({stream: 6}, older_than_ms=150) == 1
            assert seqs_of(await journal.read(stream, 1, 1 << 20)) == [(3, 4), (5, 6), (7, 7)]
            assert await journal.low_water(stream) == 3
            assert await journal.trim({stream: 6}, older_than_ms=100) == 0
            assert await journal.trim({stream: 7}, older_than_ms=201) == 3
            assert await journal.read(stream, 1, 1 << 20) == []
            assert await journal.low_water(stream) == 8
            assert journal.head(stream) == 7

    run(main())


def test_j4_trim_keeps_j1_for_later_appends(backend: Backend) -> None:
    """J4 with J1: after a trim, new appends continue from the head and reads stay dense."""

    async def main() -> None:
        async with backend.opened() as journal:
            stream = await four_batches(journal)
            await journal.trim({stream: 4}, older_than_ms=1000)
            (result,) = await journal.append_local([group(0, "h")])
            assert result.position.seq == 8
            seqs = await all_seqs(journal, stream)
            assert seqs == list(range(await journal.low_water(stream), journal.head(stream) + 1))
            assert seqs == [5, 6, 7, 8]

    run(main())


def test_j4_trim_touches_only_the_streams_given(backend: Backend) -> None:
    """J4: trim leaves streams without a floor alone and handles remote streams the same way."""

    async def main() -> None:
        async with backend.opened() as journal:
            local = await four_batches(journal)
            await journal.append_remote([remote(1, 2), remote(3, 2)])
            peer = StreamId(PEER, 0)
            dropped = await journal.trim({peer: 2, StreamId(PEER, 9): 5}, older_than_ms=1 << 62)
            assert dropped == 1
            assert await journal.low_water(peer) == 3
            assert await journal.low_water(local) == 1

    run(main())


def test_j4_trim_forgets_ids_of_dropped_local_batches(backend: Backend) -> None:
    """J4: request ids of trimmed local messages leave the dedup index; kept ones remain."""

    async def main() -> None:
        async with backend.opened() as journal:
            stream = await four_batches(journal)
            await journal.trim({stream: 2}, older_than_ms=1000)
            assert await journal.lookup(["a", "b", "c"]) == {"c": Position(SITE, 0, 3)}

    run(main())


def test_low_water_of_an_empty_stream_is_one(backend: Backend) -> None:
    """low_water is head + 1 for a stream never written: 1."""

    async def main() -> None:
        async with backend.opened() as journal:
            assert await journal.low_water(StreamId(PEER, 3)) == 1

    run(main())


def test_j4_trim_survives_a_reopen(durable: Backend) -> None:
    """J4: a trimmed journal reopens with the same head and low water."""

    async def main() -> None:
        async with durable.opened() as journal:
            stream = await four_batches(journal)
            await journal.trim({stream: 6}, older_than_ms=1000)
        async with durable.opened() as journal:
            assert journal.head(stream) == 7
            assert await journal.low_water(stream) == 7
            (result,) = await journal.append_local([group(0, "h")])
            assert result.position.seq == 8

    run(main())


# -- peer heads ------------------------------------------------------------------------------


def test_peer_heads_round_trip(backend: Backend) -> None:
    """save_peer_heads then peer_heads returns what each peer acknowledged, latest per stream."""

    async def main() -> None:
        async with backend.opened() as journal:
            await journal.append_local([group(0, "a"), group(1, "b")])
            await journal.save_peer_heads("gz", {StreamId(SITE, 0): 1, StreamId(SITE, 1): 0})
            await journal.save_peer_heads("sh", {StreamId(SITE, 0): 1})
            await journal.save_peer_heads("gz", {StreamId(SITE, 1): 1})
            assert await journal.peer_heads() == {
                "gz": {StreamId(SITE, 0): 1, StreamId(SITE, 1): 1},
                "sh": {StreamId(SITE, 0): 1},
            }

    run(main())


def test_peer_heads_survive_a_reopen(durable: Backend) -> None:
    """Saved peer heads are read back by a reopened journal (trimming after restart)."""

    async def main() -> None:
        async with durable.opened() as journal:
            await journal.append_local([group(0, "a")])
            await journal.save_peer_heads("gz", {StreamId(SITE, 0): 1, StreamId(SITE, 4): 0})
        async with durable.opened() as journal:
            assert await journal.peer_heads() == {
                "gz": {StreamId(SITE, 0): 1, StreamId(SITE, 4): 0}
            }

    run(main())


# -- opening ---------------------------------------------------------------------------------


def test_reopen_with_another_site_name_names_the_file(durable: Backend) -> None:
    """Opening a site's journal storage as another site raises ConfigError naming it and both
    sites."""

    async def main() -> None:
        async with durable.opened(site="bj") as journal:
            await journal.append_local([group(0, "a")])
        other = durable.new(site="gz")
        try:
            with pytest.raises(ConfigError) as caught:
                await other.open()
        finally:
            await other.close()
        message = str(caught.value)
        assert durable.where in message
        assert "site 'bj', not 'gz'" in message

    run(main())


def test_corrupted_head_is_refused_at_open(sqlite: Backend) -> None:
    """A stored head that disagrees with the stored batches raises JournalError at open."""

    async def main() -> None:
        async with sqlite.opened() as journal:
            await journal.append_local([group(0, "a", "b")])
        with sqlite3.connect(sqlite.path) as conn:
            conn.execute("UPDATE streams SET head = 5")
        conn.close()
        broken = sqlite.new()
        try:
            with pytest.raises(JournalError) as caught:
                await broken.open()
        finally:
            await broken.close()
        message = str(caught.value)
        assert str(sqlite.path) in message
        assert "stream bj/0 records head 5 but stores seq 2" in message

    run(main())


def test_statistics_count_appends(backend: Backend) -> None:
    """statistics() reports the backend, streams, batches, messages and bytes appended."""

    async def main() -> None:
        async with backend.opened() as journal:
            await journal.append_local([group(0, "a", "b"), group(1, "c")])
            batch = remote(1, 2)
            await journal.append_remote([batch])
            stats = journal.statistics()
            assert stats.backend == backend.kind
            assert stats.streams == 3
            assert stats.batches_appended == 3
            assert stats.messages_appended == 5
            stored = await journal.read(StreamId(SITE, 0), 1, 1 << 20)
            stored += await journal.read(StreamId(SITE, 1), 1, 1 << 20)
            assert stats.bytes_appended == sum(b.size for b in stored) + batch.size

    run(main())


def test_append_fires_the_appended_pulse(backend: Backend) -> None:
    """Readers waiting on `appended` wake when a local or remote append stores something."""

    async def main() -> None:
        async with backend.opened() as journal:
            waiter = journal.appended.future()
            await journal.append_local([group(0, "a")])
            assert waiter.done()
            waiter = journal.appended.future()
            await journal.append_remote([remote(1, 1)])
            assert waiter.done()
            waiter = journal.appended.future()
            await journal.append_remote([remote(1, 1)])
            assert not waiter.done()
            waiter.cancel()

    run(main())


def test_failed_append_leaves_the_sqlite_journal_consistent(sqlite: Backend) -> None:
    """A remote append that fails inside its transaction does not corrupt later appends."""

    async def main() -> None:
        rows = [row("huge")]
        unstorable = build_batch(PEER, 0, 1, rows, created_ms=2**64 - 1)  # over SQLite's int64
        async with sqlite.opened() as journal:
            with pytest.raises(OverflowError):
                await journal.append_remote([unstorable])
            assert journal.head(StreamId(PEER, 0)) == 0
            await journal.append_remote([remote(1, 1, partition=0)])
            await journal.append_remote([remote(1, 2, partition=1)])
        async with sqlite.opened() as journal:
            assert journal.heads() == {StreamId(PEER, 0): 1, StreamId(PEER, 1): 2}
            assert await all_seqs(journal, StreamId(PEER, 0)) == [1]
            assert await all_seqs(journal, StreamId(PEER, 1)) == [1, 2]

    run(main())


# -- Redis: layout, guards, crashes ------------------------------------------------------------


@asynccontextmanager
async def raw_redis(url: str) -> AsyncIterator[RedisDb]:
    """A plain connection to look at (or damage) what a Redis journal stored."""
    db = await RedisDb.connect(url, "test")
    try:
        yield db
    finally:
        await db.close()


def test_redis_batches_are_stream_entries_keyed_by_last_seq(redis_backend: Backend) -> None:
    """A Redis journal stores each batch as one stream entry "<last_seq>-0" holding the bytes
    as shipped; an XADD of an id already there is refused by Redis itself."""

    async def main() -> None:
        async with backend_and_raw(redis_backend) as (journal, db):
            await journal.append_remote([remote(1, 2), remote(3, 1)])
            stream_key, _, _ = Keys(SITE).journal(PEER, 0)
            entries = await db.call("XRANGE", stream_key, "-", "+")
            assert [entry_id for entry_id, _ in entries] == [b"2-0", b"3-0"]
            assert [fields[b"d"] for _, fields in entries] == [remote(1, 2).data, remote(3, 1).data]
            with pytest.raises(StoreError, match="equal or smaller"):
                await db.call("XADD", stream_key, "3-0", "d", b"again")

    run(main())


@asynccontextmanager
async def backend_and_raw(backend: Backend) -> AsyncIterator[tuple[Journal, RedisDb]]:
    async with backend.opened() as journal, raw_redis(backend.url) as db:
        yield journal, db


def test_redis_keys_of_one_partition_share_a_cluster_slot(redis_cluster_url: str) -> None:
    """Every key of one (site, partition), journal and state alike, hashes to one slot, so a
    script may touch them all on a cluster; another partition is another slot."""

    async def main() -> None:
        keys = Keys(SITE)
        async with raw_redis(redis_cluster_url) as db:

            async def slot(key: str) -> int:
                return int(await db.call("CLUSTER KEYSLOT", key))

            names = [*keys.journal(PEER, 3), *keys.journal(SITE, 3), keys.ids(3)]
            names += [f"{keys.tag(3)}kv:user", f"{keys.tag(3)}wm", f"{keys.tag(3)}zm:x"]
            slots = {await slot(name) for name in names}
            assert len(slots) == 1
            assert await slot(keys.ids(4)) not in slots

    run(main())


def test_redis_append_from_stale_heads_is_refused_and_changes_nothing(
    redis_backend: Backend,
) -> None:
    """A Redis append planned from heads that Redis no longer has (a second process of the
    site) raises JournalError naming the heads, and stores nothing."""

    async def main() -> None:
        async with redis_backend.opened() as first, redis_backend.opened() as second:
            await first.append_local([group(0, "a", "b")])
            with pytest.raises(JournalError, match=r"bj/0 has head 2 in Redis, but this process"):
                await second.append_local([group(0, "c")])
            assert await all_ids(first, StreamId(SITE, 0)) == ["a", "b"]
            assert second.head(StreamId(SITE, 0)) == 0

    run(main())


def test_redis_refused_partition_keeps_what_other_partitions_stored(
    redis_backend: Backend,
) -> None:
    """When one partition's append is refused, the others' batches are stored and counted in
    the heads before the error is raised."""

    async def main() -> None:
        async with redis_backend.opened() as first:
            await first.append_local([group(1, "x")])
            async with redis_backend.opened() as second:
                await first.append_local([group(1, "y")])
                with pytest.raises(JournalError, match="bj/1 has head 2"):
                    await second.append_local([group(0, "a"), group(1, "b")])
                assert second.head(StreamId(SITE, 0)) == 1
                assert await all_ids(second, StreamId(SITE, 0)) == ["a"]
                assert await all_ids(second, StreamId(SITE, 1)) == ["x", "y"]

    run(main())


def test_redis_corrupted_head_is_refused_at_open(redis_backend: Backend) -> None:
    """A Redis head that disagrees with the stored batches raises JournalError at open."""

    async def main() -> None:
        async with backend_and_raw(redis_backend) as (journal, db):
            await journal.append_local([group(0, "a", "b")])
            await db.call("HSET", Keys(SITE).journal(SITE, 0)[2], "head", 5)
        broken = redis_backend.new()
        try:
            with pytest.raises(JournalError, match="stream bj/0 records head 5 but stores seq 2"):
                await broken.open()
        finally:
            await broken.close()

    run(main())


def test_redis_holes_are_found_and_repaired_in_place(redis_backend: Backend) -> None:
    """A batch missing below the head shows as a hole; repair puts it back between its
    neighbours (the stream's ids go back and forth), and appends go on after it."""

    async def main() -> None:
        stream = StreamId(PEER, 0)
        entries, index, head = Keys(SITE).journal(PEER, 0)
        async with backend_and_raw(redis_backend) as (journal, db):
            await journal.append_remote([remote(1, 2), remote(3, 2), remote(5, 2)])
            await db.call("XDEL", entries, "4-0")
            await db.call("ZREMRANGEBYSCORE", index, 4, 4)
            await db.call("HINCRBY", head, "messages", -2)
            assert await journal.holes(stream) == [(3, 4)]
            with pytest.raises(JournalError, match="does not fill a hole"):
                await journal.repair([remote(2, 3)])
            assert await journal.repair([remote(3, 2)]) == 1
            assert await journal.holes(stream) == []
            await journal.append_remote([remote(7, 1)])
            assert await all_seqs(journal, stream) == [1, 2, 3, 4, 5, 6, 7]
            assert await all_ids(journal, stream) == [f"{PEER}-0-{s}" for s in range(1, 8)]

    run(main())


def test_j3_redis_append_survives_a_crash_of_the_server(tmp_path: Path) -> None:
    """J3: what append_local acknowledged is there after the redis-server is SIGKILLed and
    started again on its data (appendonly yes, appendfsync always)."""

    async def write(url: str) -> None:
        journal = RedisJournal(SITE, url)
        await journal.open()
        await journal.append_local([group(0, "a", "b"), group(2, "c")])
        # the journal is not closed: the server dies under it

    async def read(url: str) -> None:
        journal = RedisJournal(SITE, url)
        await journal.open()
        try:
            assert journal.heads() == {StreamId(SITE, 0): 2, StreamId(SITE, 2): 1}
            assert await all_ids(journal, StreamId(SITE, 0)) == ["a", "b"]
            assert await journal.lookup(["c"]) == {"c": Position(SITE, 2, 1)}
        finally:
            await journal.close()

    with RedisServer(tmp_path / "redis") as server:
        asyncio.run(write(server.url))
        server.kill()
        server.start()
        asyncio.run(read(server.url))


def test_redis_servers_of_the_harness_run_with_appendfsync_always(
    redis_server: RedisServer, redis_cluster: RedisClusterServers
) -> None:
    """Every redis-server the tests start runs appendonly yes + appendfsync always (J3)."""
    for server in [redis_server, *redis_cluster.nodes]:
        with server.client() as client:
            config = client.config_get("append*")
        assert (config["appendonly"], config["appendfsync"]) == ("yes", "always")


def test_unreachable_redis_names_the_url_and_the_setting(tmp_path: Path) -> None:
    """Opening a Redis journal on a server that is not there raises StoreUnavailable naming
    the URL and the setting."""

    async def main() -> None:
        url = f"redis://127.0.0.1:{free_port()}/0"
        journal = RedisJournal(SITE, url, setting="redis_url of site 'bj'")
        with pytest.raises(StoreError) as caught:
            await journal.open()
        await journal.close()
        assert f"cannot connect to Redis at {url} (redis_url of site 'bj')" in str(caught.value)
        assert isinstance(caught.value, StoreUnavailable)  # a site starting waits for it

    run(main())


def test_redis_append_cancelled_midway_keeps_the_heads_in_step(redis_backend: Backend) -> None:
    """An append whose caller is cancelled (a link dropped mid-append) still counts what Redis
    stored, so the next append continues the stream instead of being refused."""

    async def main() -> None:
        stream = StreamId(PEER, 0)
        async with redis_backend.opened() as journal:
            for ticks in range(40):
                task = asyncio.ensure_future(
                    journal.append_remote([remote(journal.head(stream) + 1, 1)])
                )
                for _ in range(ticks):
                    await asyncio.sleep(0)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await journal.append_remote([remote(journal.head(stream) + 1, 1)])
            head = journal.head(stream)
            async with redis_backend.opened() as reopened:  # reads storage, not the tail cache
                assert reopened.head(stream) == head
                assert await all_seqs(reopened, stream) == list(range(1, head + 1))

    run(main())


def test_redis_scripts_forgotten_by_the_server_are_loaded_again(redis_backend: Backend) -> None:
    """After the server forgot its scripts (SCRIPT FLUSH, as after a restart) appends and
    trims still work: the journal loads its script again and repeats the call."""

    async def main() -> None:
        async with backend_and_raw(redis_backend) as (journal, db):
            await journal.append_local([group(0, "a")])
            await db.client.script_flush()
            await journal.append_local([group(0, "b")])
            await journal.append_remote([remote(1, 1)])
            assert await all_ids(journal, StreamId(SITE, 0)) == ["a", "b"]
            await db.client.script_flush()
            assert await journal.trim({StreamId(SITE, 0): 1}, older_than_ms=1 << 62) == 1

    run(main())


def lose_next_answer(journal: Journal) -> None:
    """The next append pipeline of this Redis journal runs on the server, and its answer is
    lost (what a connection cut while the pipeline is out does)."""
    assert isinstance(journal, RedisJournal)
    db = journal._open_db()
    real = db.run

    async def run_then_lose(calls: Any) -> list[Any]:
        if calls[0].args[0] != "append":
            return await real(calls)
        db.run = real  # type: ignore[method-assign]
        await real(calls)
        raise db.fail(ConnectionError("Connection closed by server"), "running a pipeline")

    db.run = run_then_lose  # type: ignore[method-assign]


def test_redis_lost_answer_is_unknown_and_the_next_append_adopts_what_was_stored(
    redis_backend: Backend,
) -> None:
    """An append whose answer is lost raises StoreOutcomeUnknown (not a refusal); the next
    append first reads the heads back and adopts the stored batch (observers hear of it), so
    a retry of the same ids finds their first positions and new ids continue the stream."""

    async def main() -> None:
        async with redis_backend.opened() as journal:
            told: list[tuple[bool, int]] = []
            journal.observers.append(lambda local, batches: told.append((local, len(batches))))
            await journal.append_local([group(0, "a")])
            lose_next_answer(journal)
            with pytest.raises(StoreOutcomeUnknown, match="may or may not be stored"):
                await journal.append_local([group(0, "b"), group(1, "c")])
            assert journal.head(StreamId(SITE, 0)) == 1  # not known yet
            again = await journal.append_local([group(0, "b", "d"), group(1, "c")])
            assert [(a.id, a.position.seq, a.duplicate) for a in again] == [
                ("b", 2, True), ("d", 3, False), ("c", 1, True),
            ]  # fmt: skip
            assert await all_ids(journal, StreamId(SITE, 0)) == ["a", "b", "d"]
            assert journal.head(StreamId(SITE, 1)) == 1
            assert told == [(True, 1), (True, 2), (True, 1)]

    run(main())


def test_redis_check_resyncs_after_a_lost_remote_append(redis_backend: Backend) -> None:
    """check() after a lost answer of a remote append adopts it; the batch sent again is a
    duplicate (J2), not a HEAD refusal."""

    async def main() -> None:
        async with redis_backend.opened() as journal:
            lose_next_answer(journal)
            with pytest.raises(StoreOutcomeUnknown):
                await journal.append_remote([remote(1, 3)])
            await journal.check()
            assert journal.head(StreamId(PEER, 0)) == 3
            result = await journal.append_remote([remote(1, 3), remote(4, 1)])
            assert (result.stored, result.duplicates) == (1, 1)
            await journal.check()  # nothing to resync: a PING

    run(main())


def test_redis_cluster_node_dying_with_an_append_in_flight_is_unknown_not_refused(
    tmp_path: Path,
) -> None:
    """On a cluster the commands of each node go on their own connection, and a node that
    dies before its reply comes back is handed back by redis-py as that command's result: the
    append raises StoreOutcomeUnknown (it may have run), never a refusal, and once the node
    is back the journal reads the heads again and the stream continues."""

    async def append_while_node_dies(servers: RedisClusterServers, partition: int) -> None:
        async with Backend("redis", tmp_path, servers.url).opened() as journal:
            await journal.append_remote([remote(1, 1, partition)])
            victim = servers.node_of(Keys(SITE).tag(partition))
            with victim.client() as client:  # the append script waits behind the pause
                client.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
            append = asyncio.create_task(journal.append_remote([remote(2, 1, partition)]))
            await asyncio.to_thread(wait_until_blocked, victim)
            victim.kill()
            with pytest.raises(StoreOutcomeUnknown, match="may or may not be stored"):
                await append
            await asyncio.to_thread(servers.start)
            await journal.check()
            result = await journal.append_remote([remote(2, 2, partition)])
            assert (result.stored, result.duplicates) == (1, 0)
            assert await all_seqs(journal, StreamId(PEER, partition)) == [1, 2, 3]

    with RedisClusterServers(tmp_path / "cluster") as servers:
        run(append_while_node_dies(servers, partition_on(servers, servers.nodes[1])))


def partition_on(servers: RedisClusterServers, node: RedisServer) -> int:
    """A partition of SITE whose keys the given node of the cluster holds."""
    return next(p for p in range(64) if servers.node_of(Keys(SITE).tag(p)) is node)


def wait_until_blocked(server: RedisServer, timeout_s: float = 10.0) -> None:
    """Until a client of the server waits (here: behind CLIENT PAUSE)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with server.client() as client:
            if client.info("clients")["blocked_clients"] > 0:
                return
        time.sleep(0.01)
    raise AssertionError(f"no client of redis-server on port {server.port} got blocked")
