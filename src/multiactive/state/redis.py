"""Redis state: the built-in operations of `state/ops.py` as one Lua script per step (P3).

A step (one stream, so one partition) is one script call that applies all its operations,
parks its dead letters and moves its watermark, atomically, refusing a watermark that does not
advance (`state/redis.lua`, which also says in which order it works and why). The key layout
is in `multiactive.redisdb`: state keys are tagged by (site, partition of the key), so a step
touches one hash slot, and a real cache is left behind: `HGET ma:{bj:3}:kv:<key> value`,
`GET ma:{bj:3}:c:<key>`, `ZREVRANGE ma:{bj:3}:z:<key> 0 9`.

Differences from the SQLite state, all documented where they apply:
- `commit(*steps)` runs one script call per step, pipelined: each step is atomic (effects and
  watermark, which is what P3 needs), but steps of different streams commit separately. A
  watermark that would not advance is refused before anything is sent, so that refusal still
  changes nothing; a server error in the middle of a commit may leave earlier steps committed
  (the processor then stops and, restarted, goes on from the watermarks Redis holds).
- The script also refuses a step whose stream's watermark is not the one this process last
  committed (`StoreError`): the server lost commits (restarted without `appendfsync always`)
  or another process commits for this site. Restarting the site re-reads the watermarks and
  applies the lost messages again from the journal.
- On a single server a step may hold keys of any partition; on a cluster every key of a step
  must belong to the step's partition (as ingress places them), else `ConfigError`.
- `snapshot`/`entries` SCAN the site's keys: exact when the site is idle (digests compare
  converged sites), not a point-in-time view while it applies.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any

import msgpack

from multiactive.errors import ConfigError, StaleStep, StoreError
from multiactive.model.message import StreamId
from multiactive.model.partition import partition_for
from multiactive.model.topology import DEFAULT_PARTITIONS
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
from multiactive.state.base import (
    COUNTER_ADD,
    DEFAULT_ZSET_CAP,
    KV_DEL,
    KV_SET,
    ZSET_ADD,
    ZSET_REM,
    Commit,
    DeadLetter,
    Entry,
    Member,
    OpTuple,
    Snapshot,
    StateBackend,
    Watermark,
)
from multiactive.state.ops import FILL_ORIGIN, KV_FILL, sorted_snapshot

_REGISTERS = (KV_SET, KV_DEL, KV_FILL)
_MEMBERS = (ZSET_ADD, ZSET_REM)


class RedisState(StateBackend):
    backend = "redis"

    def __init__(
        self,
        site: str,
        url: str,
        partitions: int = DEFAULT_PARTITIONS,
        zset_cap: int = DEFAULT_ZSET_CAP,
        *,
        prefix: str = DEFAULT_PREFIX,
        setting: str = "redis_url",
    ) -> None:
        self.site = site
        self.url = url
        self.zset_cap = zset_cap
        self._partitions = partitions
        self._setting = setting
        self._keys = Keys(site, prefix)
        self._tags = [self._keys.tag(p) for p in range(partitions)]
        self._script = Script(lua_source("multiactive.state", "redis.lua"))
        self._db: RedisDb | None = None
        self._marks: dict[StreamId, Watermark] | None = None  # as last committed here
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        db = self._db = await RedisDb.connect(self.url, self._setting)
        await db.claim(self._keys)
        await db.load(self._script)
        self._marks = await self.watermarks()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    # -- watermarks and commits ----------------------------------------------------------

    async def watermarks(self) -> dict[StreamId, Watermark]:
        replies = await self._pipeline([("HGETALL", f"{tag}wm") for tag in self._tags])
        fields: dict[StreamId, dict[str, int]] = {}
        for partition, reply in enumerate(replies):
            for name, value in reply.items():
                kind, _, origin = name.decode().partition(":")
                fields.setdefault(StreamId(origin, partition), {})[kind] = int(value)
        return {s: Watermark(f.get("applied", 0), f.get("count", 0)) for s, f in fields.items()}

    async def commit(self, *steps: Commit) -> None:
        await uncancellable(self._commit(steps))

    async def _commit(self, steps: tuple[Commit, ...]) -> None:
        async with self._lock:  # the cached watermarks follow one commit at a time
            await self._commit_now(steps)

    async def _commit_now(self, steps: tuple[Commit, ...]) -> None:
        marks = dict(self._marks if self._marks is not None else await self.watermarks())
        calls = []
        for step in steps:
            current = marks.get(step.stream, Watermark())
            if step.through_seq <= current.applied:
                raise StaleStep(step.stream, current.applied, step.through_seq)
            calls.append(self._step_call(step, current.applied))
            marks[step.stream] = Watermark(step.through_seq, current.count + step.processed)
        try:
            results = await self._open_db().run(calls)
        except StoreError:
            self._marks = None  # the connection broke: the steps may have committed
            raise
        for step, result in zip(steps, results, strict=True):
            if isinstance(result, Exception):
                self._marks = None  # some steps may have committed: read them again
                raise self._refusal(step, result)
        self._marks = marks

    def _step_call(self, step: Commit, expected: int) -> ScriptCall:
        partition = step.stream.partition
        tag = self._tags[partition]
        keys = [f"{tag}wm", f"{tag}dead"]
        ops = [self._op(keys, op, step.stream) for op in step.builtin]
        dead = [x for d in step.dead for x in (f"{d.origin}:{d.seq}", _pack_letter(d))]
        args = [
            step.stream.origin, step.through_seq, step.processed, expected,
            lua_pack(ops) if ops else b"", lua_pack(dead) if dead else b"",
        ]  # fmt: skip
        return ScriptCall(self._script, keys, args)

    def _op(self, keys: list[str], op: OpTuple, stream: StreamId | None) -> tuple[Any, ...]:
        """Add an operation's keys; return what the script reads of it."""
        type_, key, version, origin, payload = op
        tag = self._tag_of(key, stream)
        if type_ in _REGISTERS:
            keys.append(f"{tag}kv:{key}")
            return (type_, str(version), origin, payload)
        if type_ == COUNTER_ADD:
            keys.append(f"{tag}c:{key}")
            return (type_, "", origin, str(int(payload)))
        if type_ in _MEMBERS:
            keys += (f"{tag}z:{key}", f"{tag}zm:{key}")
            return (type_, str(version), origin, payload)
        raise ValueError(f"{type_!r} is not a built-in operation")

    def _tag_of(self, key: str, stream: StreamId | None) -> str:
        partition = partition_for(key, self._partitions)
        if stream is not None and partition != stream.partition and self._open_db().cluster:
            raise ConfigError(
                f"key {key!r} belongs to partition {partition} of {self._partitions}, but came "
                f"in stream {stream}; every site must use the same [cluster] partitions"
            )
        return self._tags[partition]

    def _refusal(self, step: Commit, exc: Exception) -> Exception:
        reason, _, held = str(exc).partition(" ")
        db = self._open_db()
        if reason == "WATERMARK":
            return StaleStep(step.stream, int(held), step.through_seq)
        if reason == "LOST":
            return StoreError(
                f"Redis at {db.where}: watermark of {step.stream} is {held}, not what this "
                "process committed; the server lost commits (it needs appendonly yes and "
                "appendfsync always) or another process commits for this site: restart the site"
            )
        return db.fail(exc, f"committing {step.stream} through {step.through_seq}")

    # -- key-value registers -------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        tag = self._tag_of(key, None)
        value, version, origin = await self._open_db().call(
            "HMGET", f"{tag}kv:{key}", "value", "version", "origin"
        )
        return None if version is None else Entry(key, value, int(version), origin.decode())

    async def put(self, entries: Sequence[Entry]) -> int:
        """One script call per partition (no watermark moves); the count of winners."""
        by_partition: dict[int, list[OpTuple]] = {}
        for e in entries:
            type_, value = (KV_DEL, b"") if e.value is None else (KV_SET, e.value)
            op = (type_, e.key, e.version, e.origin, value)
            by_partition.setdefault(partition_for(e.key, self._partitions), []).append(op)
        calls = []
        for partition, ops in by_partition.items():
            keys = [f"{self._tags[partition]}wm", f"{self._tags[partition]}dead"]
            packed = [self._op(keys, op, None) for op in ops]
            calls.append(ScriptCall(self._script, keys, ["", 0, 0, 0, lua_pack(packed), b""]))
        results = await self._open_db().run(calls)
        for result in results:
            if isinstance(result, Exception):
                raise self._open_db().fail(result, "writing entries")
        return sum(results)

    async def fill(self, key: str, value: bytes, version: int) -> bool:
        """One script call: the fill and its check against the held register, atomically."""
        tag = self._tags[partition_for(key, self._partitions)]
        keys = [f"{tag}wm", f"{tag}dead"]
        packed = [self._op(keys, (KV_FILL, key, version, FILL_ORIGIN, value), None)]
        (result,) = await self._open_db().run(
            [ScriptCall(self._script, keys, ["", 0, 0, 0, lua_pack(packed), b""])]
        )
        if isinstance(result, Exception):
            raise self._open_db().fail(result, f"filling {key!r}")
        return bool(result)

    async def entries(self) -> list[Entry]:
        keys = [k for k in await self._family_keys() if k[1] == "kv"]
        return sorted(await self._entries(keys), key=lambda e: e.key)

    async def _entries(self, keys: list[tuple[bytes, str, str]]) -> list[Entry]:
        replies = await self._pipeline(
            [("HMGET", k, "value", "version", "origin") for k, _, _ in keys]
        )
        return [
            Entry(key, value, int(version), origin.decode())
            for (_, _, key), (value, version, origin) in zip(keys, replies, strict=True)
            if version is not None
        ]

    # -- counters and sets ---------------------------------------------------------------

    async def counter(self, key: str) -> int:
        value = await self._open_db().call("GET", f"{self._tag_of(key, None)}c:{key}")
        return 0 if value is None else int(value)

    async def members(self, key: str) -> list[Member]:
        registers = await self._open_db().call("HGETALL", f"{self._tag_of(key, None)}zm:{key}")
        return sorted(
            (_member(m, r) for m, r in registers.items()), key=lambda member: member.member
        )

    async def zset(self, key: str) -> list[Member]:
        """The newest `zset_cap` present members, straight from the sorted set (ZREVRANGE
        orders equal scores by member bytes, highest first, as `ops.zset_view` does)."""
        tag = self._tag_of(key, None)
        db = self._open_db()
        shown = await db.call("ZREVRANGE", f"{tag}z:{key}", 0, self.zset_cap - 1)
        if not shown:
            return []
        registers = await db.call("HMGET", f"{tag}zm:{key}", *shown)
        members = [_member(m, r) for m, r in zip(shown, registers, strict=True) if r]
        return [m for m in members if m.present]  # a removal may land between the reads

    async def snapshot(self) -> Snapshot:
        keys = await self._family_keys()
        entries = await self._entries([k for k in keys if k[1] == "kv"])
        counter_keys = [k for k in keys if k[1] == "c"]
        set_keys = [k for k in keys if k[1] == "zm"]
        replies = await self._pipeline(
            [("GET", k) for k, _, _ in counter_keys] + [("HGETALL", k) for k, _, _ in set_keys]
        )
        counted = replies[: len(counter_keys)]
        counters = [(key, int(v)) for (_, _, key), v in zip(counter_keys, counted, strict=True)]
        zsets = [
            (key, [_member(m, r) for m, r in registers.items()])
            for (_, _, key), registers in zip(set_keys, replies[len(counter_keys) :], strict=True)
        ]
        return sorted_snapshot(entries, counters, zsets)

    async def _family_keys(self) -> list[tuple[bytes, str, str]]:
        """(Redis key, family, user key) of every state key of this site."""
        found = []
        async for name in self._open_db().scan(self._keys.site_pattern):
            parts = self._keys.split(name)
            if parts is not None and parts[1] in ("kv", "c", "zm"):
                found.append((name, parts[1], parts[2].decode()))
        return found

    # -- dead letters --------------------------------------------------------------------

    async def dead_letters(self, limit: int = 1000) -> list[DeadLetter]:
        replies = await self._pipeline([("HGETALL", f"{tag}dead") for tag in self._tags])
        letters = [
            DeadLetter(*msgpack.unpackb(packed, raw=False))
            for reply in replies
            for packed in reply.values()
        ]
        letters.sort(key=lambda d: (d.parked_ms, d.origin, d.partition, d.seq))
        return letters[:limit]

    async def forget_dead_letters(self, positions: Sequence[tuple[str, int, int]]) -> int:
        fields: dict[int, list[str]] = {}
        for origin, partition, seq in positions:
            fields.setdefault(partition, []).append(f"{origin}:{seq}")
        replies = await self._pipeline(
            [("HDEL", f"{self._tags[p]}dead", *names) for p, names in fields.items()]
        )
        return sum(replies)

    # -- plumbing ------------------------------------------------------------------------

    async def _pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        db = self._open_db()
        replies = await db.pipeline(commands)
        for reply in replies:
            if isinstance(reply, Exception):
                raise db.fail(reply)
        return replies

    def _open_db(self) -> RedisDb:
        if self._db is None:
            raise RuntimeError(f"state at {display_url(self.url)} is not open")
        return self._db


def _pack_letter(letter: DeadLetter) -> bytes:
    packed: bytes = msgpack.packb(dataclasses.astuple(letter), use_bin_type=True)
    return packed


def _member(member: bytes, register: bytes) -> Member:
    """A member register as stored: b"<version>:<origin>:<1|0>"."""
    version, _, rest = register.partition(b":")
    origin, _, present = rest.rpartition(b":")
    return Member(member, int(version), origin.decode(), present == b"1")
