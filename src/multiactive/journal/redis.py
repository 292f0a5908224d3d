"""Redis journal: Redis Streams on one server or on a Redis Cluster (ARCHITECTURE.md section 4).

One stream per (origin, partition); an entry is a stored batch, its bytes as they are plus the
header fields a read needs, under the id `<last_seq>-0`. The key layout is in
`multiactive.redisdb`; the scripts, with what each checks, in `journal/redis.lua`.

- The decisions are `Journal.plan_local` / `plan_remote`, shared with every backend; a
  refused gap is reported in `RemoteResult.gaps` as everywhere else.
- Each append is one Lua script call per partition (the keys of one (site, partition) share a
  hash slot), sent together in one pipeline: the script checks that every batch continues its
  stream's head before it writes anything, so an append of one partition is all or nothing,
  and an XADD of an old id is refused by Redis itself. If one partition's call fails, the
  others' batches are stored and counted, and `StoreOutcomeUnknown` is raised (the caller
  cannot tell which drafts are stored; a retried publish finds the stored ids).
- A connection that breaks while the pipeline is out leaves its outcome unknown: the scripts
  may have run. The append raises `StoreOutcomeUnknown` (never a plain refusal), and before
  the next append (or in `check()`) the heads are read back from Redis and what the lost
  answer had stored is adopted (`Journal.adopt`): heads, observers, the applier. An error
  before the pipeline (looking ids up, registering streams) stored nothing: `StoreError`.
- Trimming is XTRIM MINID below what every peer acknowledged (J4), from the oldest batch on.
- Request-id dedup is per partition (`ma:{site:P}:ids`), not per site as in SQLite: a retried
  publish carries the same key, so the same partition, and finds its first position. The same
  id sent again with another key is journaled again.
- Durability (J3): acknowledged means the Redis server has the write. Across a crash of the
  Redis server (or its machine) that holds only with `appendonly yes` and
  `appendfsync always`: Redis then fsyncs its append-only file before it replies. The servers
  `multiactive.local.redis` starts (tests, demo, benchmarks) run that way. With replicas,
  a failover may lose acknowledged writes (Redis replication is asynchronous).
- Seqs are exact below 2**53 (Lua numbers and sorted-set scores are doubles).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any

from multiactive.errors import JournalError, StoreError, StoreOutcomeUnknown
from multiactive.journal.base import Journal, LocalAppend, LocalGroup, RemoteResult
from multiactive.model.batch import CODEC_NONE, RecordBatch
from multiactive.model.message import Position, StreamId
from multiactive.redisdb import (
    DEFAULT_PREFIX,
    Keys,
    RedisDb,
    Script,
    ScriptCall,
    display_url,
    lua_pack,
    lua_source,
    uncancellable,
)

READ_BATCHES = 256  # at most this many batches per read, as in SQLite
_HEAD_REFUSED = re.compile(r"HEAD (\d+) (\d+)")


class RedisJournal(Journal):
    backend = "redis"

    def __init__(
        self,
        site: str,
        url: str,
        *,
        codec: int = CODEC_NONE,
        prefix: str = DEFAULT_PREFIX,
        setting: str = "redis_url",
    ) -> None:
        super().__init__(site, codec)
        self.url = url
        self._setting = setting
        self._keys = Keys(site, prefix)
        self._script = Script(lua_source("multiactive.journal", "redis.lua"))
        self._db: RedisDb | None = None
        self._lock = asyncio.Lock()  # one append (plan, script, heads) at a time
        self._registered: set[StreamId] = set()
        self._suspect = False  # an append failed: heads may lag behind what Redis holds

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        db = self._db = await RedisDb.connect(self.url, self._setting)
        await db.claim(self._keys)
        await db.load(self._script)
        names = await db.call("SMEMBERS", self._keys.streams)
        streams = sorted(_stream_of(name) for name in names)
        self._registered = set(streams)
        await self._load_heads(streams)

    async def open_for_reading(self) -> None:
        self._db = await RedisDb.connect(self.url, self._setting)
        names = await self._db.call("SMEMBERS", self._keys.streams)
        await self._load_heads(sorted(_stream_of(name) for name in names))

    async def _load_heads(self, streams: list[StreamId]) -> None:
        commands: list[tuple[Any, ...]] = []
        for stream in streams:
            entries, index, head = self._keys.journal(*stream)
            commands += [
                ("HMGET", head, "head", "max_version"),
                ("ZRANGE", index, -1, -1, "WITHSCORES"),
                ("XLEN", entries),
                ("ZCARD", index),
            ]
        results = _raise_first(self._open_db(), await self._open_db().pipeline(commands))
        for n, stream in enumerate(streams):
            (head, version), top, length, indexed = results[4 * n : 4 * n + 4]
            if head is None:
                continue  # registered by an append that failed
            self._heads[stream] = int(head)
            self.max_version = max(self.max_version, int(version or 0))
            self._check_stream(stream, int(head), _top_score(top), length, indexed)

    def _check_stream(
        self, stream: StreamId, head: int, stored: int | None, length: int, indexed: int
    ) -> None:
        where = self._open_db().where
        if stored is not None and stored != head:
            raise JournalError(
                f"{where}: stream {stream} records head {head} but stores seq {stored}; "
                "the data was changed outside multiactive"
            )
        if length != indexed:
            raise JournalError(
                f"{where}: stream {stream} holds {length} batches but indexes {indexed}; "
                "the data was changed outside multiactive"
            )

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    # -- appends ---------------------------------------------------------------------------

    async def _append_local(
        self, groups: Sequence[LocalGroup]
    ) -> tuple[LocalAppend, list[RecordBatch]]:
        return await uncancellable(self._append_local_now(groups))

    async def _append_local_now(
        self, groups: Sequence[LocalGroup]
    ) -> tuple[LocalAppend, list[RecordBatch]]:
        async with self._lock:
            await self._resync_if_suspect()
            known = await self._known_ids(groups)
            plan = self.plan_local(groups, lambda ids: dict(known))
            await self._store(plan.batches, deduplicated=len(plan.result.duplicates))
        return plan.result, plan.batches

    async def _known_ids(self, groups: Sequence[LocalGroup]) -> dict[str, Position]:
        """Ids of these groups already journaled, each looked up in its own partition."""
        wanted: dict[int, list[str]] = {}
        for group in groups:
            wanted.setdefault(group.partition, []).extend(row[0] for row in group.rows)
        return await self._find_ids(wanted)

    async def _find_ids(self, wanted: dict[int, list[str]]) -> dict[str, Position]:
        """One script call per partition: the ids travel as one msgpack value, and only the
        ids found come back (usually none)."""
        db = self._open_db()
        partitions = [p for p, ids in wanted.items() if ids]
        calls = [
            ScriptCall(self._script, [self._keys.ids(p)], ["known", lua_pack(wanted[p])])
            for p in partitions
        ]
        found: dict[str, Position] = {}
        for partition, pairs in zip(partitions, _raise_first(db, await db.run(calls)), strict=True):
            for id_, seq in zip(pairs[::2], pairs[1::2], strict=True):
                found.setdefault(id_.decode(), Position(self.site, partition, int(seq)))
        return found

    async def _append_remote(self, batches: Sequence[RecordBatch]) -> RemoteResult:
        return await uncancellable(self._append_remote_now(batches))

    async def _append_remote_now(self, batches: Sequence[RecordBatch]) -> RemoteResult:
        async with self._lock:
            await self._resync_if_suspect()
            plan = self.plan_remote(batches)
            await self._store(plan.batches)
        return self.remote_result(plan)

    async def _store(self, batches: Sequence[RecordBatch], deduplicated: int = 0) -> None:
        """One script call per partition, pipelined; count what was stored, then raise the
        first refusal if any."""
        by_partition: dict[int, list[RecordBatch]] = {}
        for batch in batches:
            by_partition.setdefault(batch.partition, []).append(batch)
        await self._register({batch.stream for batch in batches})
        db = self._open_db()
        try:
            results = await db.run([self._append_call(p, b) for p, b in by_partition.items()])
        except StoreError as exc:
            self._suspect = True
            raise StoreOutcomeUnknown(f"{exc}; the append may or may not be stored") from exc
        stored: list[RecordBatch] = []
        error: Exception | None = None
        for group, result in zip(by_partition.values(), results, strict=True):
            if isinstance(result, Exception):
                error = error or self._append_error(group, result)
            else:
                stored.extend(group)
        if error is None:
            self.commit_plan(stored, deduplicated=deduplicated)
        else:
            self.adopt(stored)  # stored, though the caller sees the error: observers hear of it
        if error is not None and stored and not isinstance(error, JournalError):
            raise StoreOutcomeUnknown(
                f"{len(stored)} of {len(batches)} batches stored, the others refused: {error}"
            ) from error
        if error is not None:
            raise error

    async def check(self) -> None:
        async with self._lock:
            if not await self._resync_if_suspect():
                await self._open_db().call("PING")

    async def _resync_if_suspect(self) -> bool:
        """After a failed append: read every head back from Redis and adopt the batches the
        lost answer had stored. False if there was nothing to do."""
        if not self._suspect:
            return False
        streams = sorted(self._registered | set(self._heads))
        db = self._open_db()
        replies = _raise_first(
            db, await db.pipeline([("HGET", self._keys.journal(*s)[2], "head") for s in streams])
        )
        found: list[RecordBatch] = []
        for stream, reply in zip(streams, replies, strict=True):
            stored, cached = int(reply or 0), self.head(stream)
            if stored < cached:
                raise JournalError(
                    f"{db.where}: stream {stream} has head {stored} in Redis, but this process "
                    f"acknowledged up to {cached}; the server lost acknowledged writes (it "
                    "needs appendonly yes and appendfsync always)"
                )
            while cached < stored:
                batches = await self._read_stored(stream, cached + 1, 64 << 20)
                found += batches
                cached = batches[-1].last_seq if batches else stored
        self._suspect = False
        self.adopt(found)
        for stream, reply in zip(streams, replies, strict=True):
            if reply is not None:
                self._heads[stream] = max(self.head(stream), int(reply))
        return True

    async def _register(self, streams: set[StreamId]) -> None:
        new = streams - self._registered
        if new:
            names = [f"{s.origin}/{s.partition}" for s in sorted(new)]
            await self._open_db().call("SADD", self._keys.streams, *names)
            self._registered |= new

    def _append_call(self, partition: int, batches: list[RecordBatch]) -> ScriptCall:
        numbers: dict[StreamId, int] = {}
        keys = [self._keys.ids(partition)]
        args: list[Any] = ["append"]
        for batch in batches:
            number = numbers.get(batch.stream)
            if number is None:
                number = numbers[batch.stream] = len(numbers)
                keys.extend(self._keys.journal(*batch.stream))
            ids = _id_index(batch) if batch.origin == self.site else b""
            args += [
                number, batch.first_seq, batch.last_seq, batch.created_ms,
                batch.max_version, batch.codec, batch.data, ids,
            ]  # fmt: skip
        return ScriptCall(self._script, keys, args)

    def _append_error(self, batches: list[RecordBatch], exc: Exception) -> Exception:
        refused = _HEAD_REFUSED.search(str(exc))
        if refused is None:
            return self._open_db().fail(exc, "appending batches")
        streams = list(dict.fromkeys(batch.stream for batch in batches))
        stream = streams[int(refused[1])]
        return JournalError(
            f"{self._open_db().where}: stream {stream} has head {refused[2]} in Redis, but this "
            f"process holds {self.head(stream)}; another process may be writing site "
            f"{self.site}'s journal, or the server lost acknowledged writes (it needs "
            "appendonly yes and appendfsync always)"
        )

    # -- reads -----------------------------------------------------------------------------

    async def _read(self, stream: StreamId, from_seq: int, max_bytes: int) -> list[RecordBatch]:
        if stream not in self._heads or from_seq > self.head(stream):
            return []
        return await self._read_stored(stream, from_seq, max_bytes)

    async def _read_stored(
        self, stream: StreamId, from_seq: int, max_bytes: int
    ) -> list[RecordBatch]:
        entries_key, index_key, _ = self._keys.journal(*stream)
        db = self._open_db()
        index = await db.call(
            "ZRANGE", index_key, from_seq, "+inf", "BYSCORE", "LIMIT", 0, READ_BATCHES
        )
        count = _fitting(index, max_bytes)
        if not count:
            return []
        entries = await db.call("XRANGE", entries_key, f"{from_seq}-0", "+", "COUNT", count)
        return [_batch(stream, entry_id, fields) for entry_id, fields in entries]

    async def holes(self, stream: StreamId) -> list[tuple[int, int]]:
        """From the index alone; one sorted-set read and a count when the stream is whole."""
        head = self.head(stream)
        if head == 0:
            return []
        _, index_key, head_key = self._keys.journal(*stream)
        db = self._open_db()
        first, messages = _raise_first(
            db, await db.pipeline([("ZRANGE", index_key, 0, 0), ("HGET", head_key, "messages")])
        )
        if not first or int(messages or 0) == head - _index_entry(first[0])[0] + 1:
            return []
        missing: list[tuple[int, int]] = []
        expected = _index_entry(first[0])[0]
        for member, score in _pairs(await db.call("ZRANGE", index_key, 0, -1, "WITHSCORES")):
            start = _index_entry(member)[0]
            if start > expected:
                missing.append((expected, start - 1))
            expected = int(score) + 1
        if expected <= head:
            missing.append((expected, head))
        return missing

    async def _store_repair(self, batch: RecordBatch) -> None:
        keys = list(self._keys.journal(*batch.stream))
        args = [
            "repair", batch.first_seq, batch.last_seq, batch.created_ms, batch.max_version,
            batch.codec, batch.data,
        ]  # fmt: skip
        async with self._lock:
            (result,) = await self._open_db().run([ScriptCall(self._script, keys, args)])
        if isinstance(result, Exception):
            if "OVERLAP" in str(result):
                raise JournalError(
                    f"repair batch {batch.stream}@{batch.first_seq} overlaps a stored batch"
                )
            raise self._open_db().fail(result, "repairing a batch")

    async def created_at(self, stream: StreamId, seq: int) -> int | None:
        if stream not in self._heads:
            return None
        _, index_key, _ = self._keys.journal(*stream)
        found = await self._open_db().call(
            "ZRANGE", index_key, seq, "+inf", "BYSCORE", "LIMIT", 0, 1
        )
        if not found:
            return None
        first, created, _ = _index_entry(found[0])
        return created if first <= seq else None

    async def lookup(self, ids: Sequence[str]) -> dict[str, Position]:
        """Ids are indexed per partition here: look in every partition of this site."""
        partitions = sorted(s.partition for s in self._heads if s.origin == self.site)
        if not ids:
            return {}
        return await self._find_ids({p: list(ids) for p in partitions})

    async def low_water(self, stream: StreamId) -> int:
        if stream not in self._heads:
            return self.head(stream) + 1
        _, index_key, _ = self._keys.journal(*stream)
        first = await self._open_db().call("ZRANGE", index_key, 0, 0)
        return _index_entry(first[0])[0] if first else self.head(stream) + 1

    # -- trimming and peer heads -------------------------------------------------------

    async def _trim(self, floors: dict[StreamId, int], older_than_ms: int) -> int:
        calls = []
        for stream, floor in floors.items():
            if stream in self._heads:
                keys = [*self._keys.journal(*stream), self._keys.ids(stream.partition)]
                own = int(stream.origin == self.site)
                calls.append(ScriptCall(self._script, keys, ["trim", floor, older_than_ms, own]))
        db = self._open_db()
        return sum(_raise_first(db, await db.run(calls)))

    async def save_peer_heads(self, peer: str, heads: dict[StreamId, int]) -> None:
        if heads:
            fields = [x for s, h in heads.items() for x in (f"{peer}/{s.origin}/{s.partition}", h)]
            await self._open_db().call("HSET", self._keys.peer_heads, *fields)

    async def peer_heads(self) -> dict[str, dict[StreamId, int]]:
        saved = await self._open_db().call("HGETALL", self._keys.peer_heads)
        out: dict[str, dict[StreamId, int]] = {}
        for name, head in saved.items():
            peer, origin, partition = name.decode().split("/")
            out.setdefault(peer, {})[StreamId(origin, int(partition))] = int(head)
        return out

    def _open_db(self) -> RedisDb:
        if self._db is None:
            raise RuntimeError(f"journal at {display_url(self.url)} is not open")
        return self._db


def _id_index(batch: RecordBatch) -> bytes:
    """seq, id, seq, id... of a local batch's messages, as the ids sorted set takes them."""
    flat: list[int | str] = []
    for seq, row in enumerate(batch.rows(), start=batch.first_seq):
        flat += (seq, row[0])
    return lua_pack(flat)


def _stream_of(name: bytes) -> StreamId:
    origin, _, partition = name.decode().rpartition("/")
    return StreamId(origin, int(partition))


def _raise_first(db: RedisDb, results: list[Any]) -> list[Any]:
    for result in results:
        if isinstance(result, Exception):
            raise db.fail(result)
    return results


def _pairs(flat: Sequence[Any]) -> list[tuple[Any, Any]]:
    """A flat [member, score, ...] reply (or redis-py's pairs) as pairs."""
    if flat and isinstance(flat[0], list | tuple):
        return [(m, s) for m, s in flat]
    return list(zip(flat[::2], flat[1::2], strict=True))


def _top_score(reply: Sequence[Any]) -> int | None:
    pairs = _pairs(reply)
    return int(float(pairs[0][1])) if pairs else None


def _index_entry(member: bytes) -> tuple[int, int, int]:
    """(first seq, created ms, bytes) of an index member."""
    first, created, size = member.split(b":")
    return int(first), int(created), int(size)


def _fitting(index: Sequence[bytes], max_bytes: int) -> int:
    """How many of these batches a read returns: at least one, about max_bytes in all."""
    total = 0
    for count, member in enumerate(index):
        size = _index_entry(member)[2]
        if count and total + size > max_bytes:
            return count
        total += size
    return len(index)


def _batch(stream: StreamId, entry_id: bytes, fields: dict[bytes, bytes]) -> RecordBatch:
    last = int(entry_id.partition(b"-")[0])
    first = int(fields[b"f"])
    return RecordBatch(
        stream.origin, stream.partition, first, last - first + 1, int(fields[b"t"]),
        int(fields[b"v"]), int(fields[b"c"]), fields[b"d"],
    )  # fmt: skip
