"""Redis access shared by the redis journal and the redis state: the key layout, connecting,
running Lua scripts, and claiming a database for one site.

Key layout, in this one place. Every key starts with a prefix (`ma`, or another one a test
chooses); S is the site whose data it is, P a partition. `{...}` is the Redis Cluster hash tag:
every key of one (site, partition) hashes to one slot, so one Lua script may touch them all,
which is what makes an append (journal) or a step (state) one atomic script call.

    ma:meta                  HASH    site, schema: the site whose data this database holds
                                     (claimed at open; another site's process is refused)

    journal (`multiactive.journal.redis`), per site:
    ma:{S}:streams           SET     "<origin>/<partition>" of every stream journaled here
    ma:{S}:peer_heads        HASH    "<peer>/<origin>/<partition>" -> head the peer acknowledged
    journal, per stream (origin, P):
    ma:{S:P}:j:<origin>      STREAM  one entry per stored batch: id "<last_seq>-0" (so an XADD
                                     of an old batch is refused by Redis itself); fields
                                     f first seq, t created ms, v max version, c codec,
                                     d the batch bytes as stored and shipped
    ma:{S:P}:ji:<origin>     ZSET    index of that stream: score last seq, member
                                     "<first_seq>:<created_ms>:<bytes>" (reads, trims and
                                     ages without copying batch bytes)
    ma:{S:P}:jh:<origin>     HASH    head, max_version, messages (how many are stored)
    ma:{S:P}:ids             ZSET    request id -> seq (score) of this site's own messages in P

    state (`multiactive.state.redis`), P = the partition of the key (`partition_for`):
    ma:{S:P}:kv:<key>        HASH    version, origin, value (no value field: a tombstone)
    ma:{S:P}:c:<key>         STRING  a counter (INCRBY)
    ma:{S:P}:z:<key>         ZSET    a set's present members, score = version >> 16 (ms)
    ma:{S:P}:zm:<key>        HASH    member -> "<version>:<origin>:<1 present | 0 removed>"
    state, P = the partition of the stream:
    ma:{S:P}:wm              HASH    applied:<origin>, count:<origin>: watermark of (origin, P)
    ma:{S:P}:dead            HASH    "<origin>:<seq>" -> a dead letter (msgpack)

    reads (`multiactive.reads.redis`, `reads/reloads.lua`), per site:
    ma:{S}:reloads           ZSET    key -> due ms: cache fills waiting for one reload
    ma:{S}:reload            HASH    key -> "<first fill ms>:<mark>" (the writer's position)

Versions are int64 and Lua numbers are doubles, so versions travel and are stored as decimal
strings and compared in Lua as such; seqs and counts are exact as Lua numbers below 2**53.

Errors from redis-py are translated here into `StoreError` naming the URL (without its
password) and the setting; `StoreUnavailable` when trying again later may work (the server, or
the cluster node of the keys, is down or restarting). Commands are not retried by the client:
a write whose reply was lost is not sent twice, the caller fails and the site restarts from
what is durable.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import msgpack
import redis.asyncio as aioredis
from redis import exceptions as rex
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from multiactive.errors import ConfigError, StoreError, StoreUnavailable

SCHEMA_VERSION = "1"
DEFAULT_PREFIX = "ma"
CONNECT_TIMEOUT_S = 5.0
# No command waits longer for its answer: a server that stopped answering (SIGSTOPped, cut
# off without a reset) is then a StoreError like a closed connection, never a hang.
COMMAND_TIMEOUT_S = 10.0
# redis-py's cluster client closes every connection of every node when a node answers
# CLUSTERDOWN (`RedisCluster.aclose`), under the feet of commands that other tasks have in
# flight: they fail from inside redis-py with AttributeError (a reader or writer that is now
# None) or, on uvloop, RuntimeError (a write on a closed transport). For us, on a cluster
# client only, that is a connection lost mid-command; elsewhere they stay the bugs they are.
_TORN_DOWN = (AttributeError, RuntimeError)
_UNREACHABLE = (
    rex.ConnectionError, rex.TimeoutError, rex.ClusterError, rex.RedisClusterException,
)  # fmt: skip
_REPLY_LOST = (rex.ConnectionError, rex.TimeoutError)  # its outcome is not known
_REFUSED = (rex.AuthenticationError, rex.AuthorizationError)
_PREFIX_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")

Client = aioredis.Redis | RedisCluster
T = TypeVar("T")


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme.endswith("+cluster")


def display_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def lua_source(package: str, name: str) -> str:
    """A Lua script shipped beside a module (`package`/`name`)."""
    return resources.files(package).joinpath(name).read_text(encoding="utf-8")


class Keys:
    """Key names of one site's data under one prefix (see the module docstring)."""

    def __init__(self, site: str, prefix: str = DEFAULT_PREFIX) -> None:
        if not prefix or not set(prefix) <= _PREFIX_CHARS:
            raise ConfigError(f"Redis key prefix {prefix!r}: use lowercase letters, digits, - _")
        self.site = site
        self.prefix = prefix
        self.meta = f"{prefix}:meta"
        self.streams = f"{prefix}:{{{site}}}:streams"
        self.peer_heads = f"{prefix}:{{{site}}}:peer_heads"
        self.reloads = f"{prefix}:{{{site}}}:reloads"
        self.reload_entries = f"{prefix}:{{{site}}}:reload"
        self.site_pattern = f"{prefix}:{{{site}:*"
        self._tag_start = f"{prefix}:{{{site}:".encode()

    def tag(self, partition: int) -> str:
        """The start of every key of (site, partition): one hash slot."""
        return f"{self.prefix}:{{{self.site}:{partition}}}:"

    def journal(self, origin: str, partition: int) -> tuple[str, str, str]:
        """(stream, index, head) keys of the journal stream (origin, partition)."""
        tag = self.tag(partition)
        return f"{tag}j:{origin}", f"{tag}ji:{origin}", f"{tag}jh:{origin}"

    def ids(self, partition: int) -> str:
        return f"{self.tag(partition)}ids"

    def split(self, key: bytes) -> tuple[int, str, bytes] | None:
        """(partition, family, rest) of one of this site's keys, e.g. (3, "kv", b"user:1")."""
        if not key.startswith(self._tag_start):
            return None
        partition, sep, tail = key[len(self._tag_start) :].partition(b"}:")
        family, _, rest = tail.partition(b":")
        if not sep or not partition.isdigit():
            return None
        return int(partition), family.decode(), rest


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script and its SHA-1, as EVALSHA names it."""

    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


@dataclass(frozen=True, slots=True)
class ScriptCall:
    script: Script
    keys: Sequence[str]
    args: Sequence[Any]

    def command(self) -> tuple[Any, ...]:
        return ("EVALSHA", self.script.sha, len(self.keys), *self.keys, *self.args)


class RedisDb:
    """A connection pool to one site's Redis server or cluster; every error names the URL."""

    def __init__(self, url: str, setting: str, client: Client) -> None:
        self.url = url
        self.setting = setting
        self.cluster = isinstance(client, RedisCluster)
        self.client = client
        torn_down = _TORN_DOWN if self.cluster else ()
        self._unreachable = (*_UNREACHABLE, *torn_down)  # the same command may work later
        self._failures = (*self._unreachable, rex.RedisError)  # what becomes a StoreError
        self._reply_lost = (*_REPLY_LOST, *torn_down)

    @classmethod
    async def connect(cls, url: str, setting: str) -> RedisDb:
        """Connect and PING; StoreError naming the URL and the setting if that fails."""
        options: dict[str, Any] = {
            "socket_connect_timeout": CONNECT_TIMEOUT_S,
            "socket_timeout": COMMAND_TIMEOUT_S,
            "retry": Retry(NoBackoff(), 0),
        }
        client: Client
        if is_cluster_url(url):
            parts = urlsplit(url)
            plain = urlunsplit(parts._replace(scheme=parts.scheme.removesuffix("+cluster")))
            client = RedisCluster.from_url(plain, **options)
        else:
            client = aioredis.Redis.from_url(url, **options)
        db = cls(url, setting, client)
        try:
            if isinstance(client, RedisCluster):
                await client.initialize()
            await client.execute_command("PING")
        except db._failures as exc:
            await db.close()
            raise db._kind(exc)(f"cannot connect to Redis at {db.where}: {exc}") from exc
        return db

    @property
    def where(self) -> str:
        return f"{display_url(self.url)} ({self.setting})"

    def fail(self, exc: Exception, doing: str = "") -> StoreError:
        """The StoreError for a Redis error: StoreUnavailable when the server (or the node of
        the keys) could not be reached."""
        what = f" while {doing}" if doing else ""
        return self._kind(exc)(f"Redis at {self.where} failed{what}: {type(exc).__name__}: {exc}")

    def _kind(self, exc: Exception) -> type[StoreError]:
        """StoreUnavailable when the server, or the cluster node of the keys, could not be
        reached (or answered CLUSTERDOWN): the same command may work later. A refused
        password is not that, although redis-py counts it among connection errors."""
        if isinstance(exc, self._unreachable) and not isinstance(exc, _REFUSED):
            return StoreUnavailable
        return StoreError

    async def close(self) -> None:
        await self.client.aclose()

    async def call(self, *args: Any) -> Any:
        """One command; any Redis error becomes a StoreError naming the URL."""
        try:
            return await self.client.execute_command(*args)
        except self._failures as exc:
            raise self.fail(exc, str(args[0])) from exc

    async def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Commands sent together (not a transaction); each result or its exception, in
        order. A server that cannot be reached raises StoreError, and so does a reply lost
        on the way back (the command may have run): on a cluster, the commands of each node
        travel on their own connection, and redis-py hands back a connection that broke
        mid-reply as that node's results instead of raising."""
        if not commands:
            return []
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        try:
            results = list(await pipe.execute(raise_on_error=False))
        except self._unreachable as exc:
            raise self.fail(exc, "running a pipeline") from exc
        lost = next((r for r in results if isinstance(r, self._reply_lost)), None)
        if lost is not None:
            raise self.fail(lost, "running a pipeline") from lost
        return results

    async def run(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """Run scripts (pipelined, in order per slot); each result or its exception. Scripts
        the server does not know (it restarted, or this is the first use) are loaded and
        those calls run again, in order."""
        results = await self.pipeline([call.command() for call in calls])
        missing = [i for i, r in enumerate(results) if isinstance(r, rex.NoScriptError)]
        if missing:
            for script in {calls[i].script for i in missing}:
                await self.load(script)
            again = await self.pipeline([calls[i].command() for i in missing])
            for i, result in zip(missing, again, strict=True):
                results[i] = result
        return results

    async def load(self, script: Script) -> None:
        """SCRIPT LOAD on the server (on every primary of a cluster)."""
        try:
            await self.client.script_load(script.source)
        except self._failures as exc:
            raise self.fail(exc, "loading a Lua script") from exc

    async def scan(self, match: str) -> AsyncIterator[bytes]:
        """Every key matching a pattern (on every primary of a cluster)."""
        try:
            async for key in self.client.scan_iter(match=match, count=1000):
                yield key
        except self._failures as exc:
            raise self.fail(exc, f"scanning {match}") from exc

    async def claim(self, keys: Keys) -> None:
        """Mark this database as `keys.site`'s, or refuse if another site claimed it."""
        await self.pipeline(
            [
                ("HSETNX", keys.meta, "site", keys.site),
                ("HSETNX", keys.meta, "schema", SCHEMA_VERSION),
            ]
        )
        site, schema = await self.call("HMGET", keys.meta, "site", "schema")
        if site != keys.site.encode():
            owner = site.decode() if site else None
            raise ConfigError(
                f"{display_url(self.url)} holds the data of site {owner!r}, not "
                f"{keys.site!r}; check --site and {self.setting}"
            )
        if schema != SCHEMA_VERSION.encode():
            raise ConfigError(
                f"{display_url(self.url)} holds multiactive schema {schema!r}, this build reads "
                f"{SCHEMA_VERSION}"
            )


async def uncancellable(work: Coroutine[Any, Any, T]) -> T:
    """Run a write and the bookkeeping after it to the end even if the caller is cancelled
    (a link dropped mid-append, say): Redis may already have applied the write, and the
    cached heads or watermarks must then follow it. (SQLite's thread does the same by
    itself.)"""
    task = asyncio.ensure_future(work)
    task.add_done_callback(_retrieve)
    return await asyncio.shield(task)


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # raised to the caller, or, if it was cancelled, dropped here


def lua_pack(value: Any) -> bytes:
    """msgpack for a Lua script: Redis's cmsgpack reads no bin types, so bytes travel as raw
    strings (Lua strings either way)."""
    packed: bytes = msgpack.packb(value, use_bin_type=False)
    return packed
