"""Reloads that repair stale fills, gated on the replica's position instead of a fixed delay.

Weibo reloaded every key filled from a lagging replica ten minutes later. Here a fill from a
copy that may lag is queued with the gate's mark (the writer's position at fill time) and a
deadline (`reload_after_s`, default 600: the seed's ten minutes stay as the upper bound). The
`Reloader` asks the gate once per round for every pending mark and reloads a key as soon as
the local copy has passed its mark (a delayed replica: the delay plus one round), or at its
deadline when the position is unknown. A reload fills again; a newer row wins over the stale
fill (`state.ops.fill_wins`), a message-driven value that arrived meanwhile stays.

The queue is durable (`SqliteReloads`: a table in its own file in the site's data dir;
`reads.redis.RedisReloads`: two keys in the site's Redis; a restart loses no pending reload),
one entry per key (a later fill's mark replaces an earlier
one, the earliest deadline is kept), and bounded: when `max_pending` entries wait, a new key is
not queued and is counted as `dropped` (its fill stays until the key is written or evicted; the
bound protects the site, the count says it happened). `MemoryReloads` is its twin for tests.
"""

from __future__ import annotations

import abc
import asyncio
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from multiactive.clock import SYSTEM_CLOCK, Clock
from multiactive.errors import DatabaseError, MultiactiveError
from multiactive.logs import get_logger
from multiactive.model.record import Record
from multiactive.model.topology import (
    DEFAULT_MAX_PENDING_RELOADS,
    DEFAULT_RELOAD_AFTER_S,
    DEFAULT_RELOAD_POLL_S,
)
from multiactive.reads.cache import Cache
from multiactive.reads.gate import PositionGate
from multiactive.sqlitedb import SqliteDb

log = get_logger("reads")

ROUND_LIMIT = 1000  # pending reloads looked at per round, earliest deadline first


@dataclass(frozen=True, slots=True)
class PendingReload:
    key: str
    mark: str
    filled_ms: int
    due_ms: int  # the deadline: reloaded then even when the mark was not seen passed


class ReloadQueue(abc.ABC):
    """Keys filled from a copy that may lag, each waiting for one reload."""

    def __init__(self, reload_after_s: float, max_pending: int) -> None:
        self.reload_after_ms = int(reload_after_s * 1000)
        self.max_pending = max_pending
        self.dropped = 0

    async def schedule(self, key: str, mark: str, filled_ms: int) -> None:
        """Queue `key` (or move its mark on); not queued and counted when the queue is full."""
        if not await self._put(
            PendingReload(key, mark, filled_ms, filled_ms + self.reload_after_ms)
        ):
            self.dropped += 1
            log.warning("reload_dropped", key=key, max_pending_reloads=self.max_pending)

    @abc.abstractmethod
    async def _put(self, entry: PendingReload) -> bool:
        """Insert or update one key's entry; False when the queue is full and it is new."""

    @abc.abstractmethod
    async def pending(self, limit: int = ROUND_LIMIT) -> list[PendingReload]:
        """Waiting reloads, earliest deadline first."""

    @abc.abstractmethod
    async def done(self, entries: Sequence[PendingReload]) -> None:
        """Remove these entries, each only if its key was not queued again with another
        mark meanwhile (that later fill still needs its own reload)."""

    @abc.abstractmethod
    async def count(self) -> int: ...

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None


def merged(held: PendingReload | None, new: PendingReload) -> PendingReload:
    """One entry per key: the newest mark, the earliest deadline."""
    if held is None:
        return new
    return replace(new, due_ms=min(held.due_ms, new.due_ms), filled_ms=held.filled_ms)


class MemoryReloads(ReloadQueue):
    def __init__(
        self,
        reload_after_s: float = DEFAULT_RELOAD_AFTER_S,
        max_pending: int = DEFAULT_MAX_PENDING_RELOADS,
    ) -> None:
        super().__init__(reload_after_s, max_pending)
        self._entries: dict[str, PendingReload] = {}

    async def _put(self, entry: PendingReload) -> bool:
        held = self._entries.get(entry.key)
        if held is None and len(self._entries) >= self.max_pending:
            return False
        self._entries[entry.key] = merged(held, entry)
        return True

    async def pending(self, limit: int = ROUND_LIMIT) -> list[PendingReload]:
        return sorted(self._entries.values(), key=lambda p: (p.due_ms, p.key))[:limit]

    async def done(self, entries: Sequence[PendingReload]) -> None:
        for entry in entries:
            held = self._entries.get(entry.key)
            if held is not None and held.mark == entry.mark:
                del self._entries[entry.key]

    async def count(self) -> int:
        return len(self._entries)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS reloads(
    key TEXT PRIMARY KEY, mark TEXT NOT NULL, filled_ms INTEGER NOT NULL, due_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS reloads_due ON reloads(due_ms);
"""


def _create(conn: sqlite3.Connection) -> None:
    conn.executescript(_SCHEMA)


class SqliteReloads(ReloadQueue):
    """The queue in `<data_dir>/reloads.sqlite3` (WAL; a crash loses no committed entry)."""

    def __init__(
        self,
        path: Path,
        reload_after_s: float = DEFAULT_RELOAD_AFTER_S,
        max_pending: int = DEFAULT_MAX_PENDING_RELOADS,
    ) -> None:
        super().__init__(reload_after_s, max_pending)
        self.path = path
        self._db = SqliteDb(path, "reload queue", thread="reloads")

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self._db.open(_create)

    async def close(self) -> None:
        await self._db.close()

    async def _put(self, entry: PendingReload) -> bool:
        return await self._db.run(lambda: self._put_sync(entry))

    def _put_sync(self, entry: PendingReload) -> bool:
        conn = self._db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                "SELECT key, mark, filled_ms, due_ms FROM reloads WHERE key = ?", (entry.key,)
            ).fetchone()
            held = None if row is None else PendingReload(*row)
            if held is None and self._full(conn):
                conn.execute("ROLLBACK")
                return False
            e = merged(held, entry)
            conn.execute(
                "INSERT OR REPLACE INTO reloads VALUES (?, ?, ?, ?)",
                (e.key, e.mark, e.filled_ms, e.due_ms),
            )
            conn.execute("COMMIT")
            return True
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _full(self, conn: sqlite3.Connection) -> bool:
        (count,) = conn.execute("SELECT count(*) FROM reloads").fetchone()
        return bool(count >= self.max_pending)

    async def pending(self, limit: int = ROUND_LIMIT) -> list[PendingReload]:
        rows = await self._db.run(
            lambda: self._db.conn.execute(
                "SELECT key, mark, filled_ms, due_ms FROM reloads ORDER BY due_ms, key LIMIT ?",
                (limit,),
            ).fetchall()
        )
        return [PendingReload(*row) for row in rows]

    async def done(self, entries: Sequence[PendingReload]) -> None:
        rows = [(e.key, e.mark) for e in entries]
        await self._db.run(
            lambda: (
                self._db.conn.executemany("DELETE FROM reloads WHERE key = ? AND mark = ?", rows)
                and None
            )
        )

    async def count(self) -> int:
        (count,) = await self._db.run(
            lambda: self._db.conn.execute("SELECT count(*) FROM reloads").fetchone()
        )
        return int(count)


@dataclass(frozen=True, slots=True)
class ReloaderStatistics(Record):
    """The site's reloads, in `/status` (`reads.reloads`) and the metrics."""

    pending: int = 0
    oldest_filled_ms: int | None = None  # fill time of the oldest pending reload
    rounds: int = 0
    reloads: int = 0  # keys loaded again
    repaired: int = 0  # reloads that wrote a different value or version (a stale fill mended)
    at_deadline: int = 0  # reloads run because reload_after_s was up, not the position
    failures: int = 0  # loader or gate calls that failed (the entry stays)
    no_loader: int = 0  # queued keys no registered loader serves (removed)

    def oldest_age_s(self, now_ms: float) -> float | None:
        """How long the oldest pending reload has waited, in seconds."""
        if self.oldest_filled_ms is None:
            return None
        return max(0.0, (now_ms - self.oldest_filled_ms) / 1000)


class Reloader:
    """Runs queued reloads when the gate says the copy caught up, or at their deadline."""

    def __init__(
        self,
        queue: ReloadQueue,
        gate: PositionGate,
        cache: Cache,
        *,
        poll_s: float = DEFAULT_RELOAD_POLL_S,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        """`cache` brings the site's state, database reader and loaders."""
        self.queue, self.gate, self.cache = queue, gate, cache
        self._poll_s, self._clock = poll_s, clock
        self._stats = ReloaderStatistics()
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        """Rounds until `stop()`; a failing round is counted and the next one tries again."""
        while not self._stopping.is_set():
            try:
                await self.round()
            except MultiactiveError as exc:
                self._bump(failures=1)
                log.warning("reload_round_failed", error=str(exc))
            await self._clock.sleep(self._poll_s)

    def stop(self) -> None:
        self._stopping.set()

    async def round(self) -> int:
        """Reload what is ready now; return how many keys were reloaded."""
        pending = await self.queue.pending()
        ready = await self._ready(pending)
        finished = [p for p in ready if await self._reload(p)]
        if finished:
            await self.queue.done(finished)
        gone = {p.key for p in finished}
        oldest = min((p.filled_ms for p in pending if p.key not in gone), default=None)
        self._stats = replace(
            self._stats,
            pending=await self.queue.count(),
            oldest_filled_ms=oldest,
            rounds=self._stats.rounds + 1,
        )
        return len(finished)

    def statistics(self) -> ReloaderStatistics:
        return self._stats

    async def _ready(self, pending: list[PendingReload]) -> list[PendingReload]:
        if not pending:
            return []
        now = self._clock.wall_ms()
        try:
            passed = await self.gate.passed([p.mark for p in pending])
        except DatabaseError as exc:
            self._bump(failures=1)
            log.warning("reload_gate_failed", error=str(exc))
            passed = [False] * len(pending)
        ready = [p for p, ok in zip(pending, passed, strict=True) if ok or now >= p.due_ms]
        late = sum(1 for p, ok in zip(pending, passed, strict=True) if not ok and now >= p.due_ms)
        self._bump(at_deadline=late)
        return ready

    async def _reload(self, entry: PendingReload) -> bool:
        """Load and fill one key; True when its entry is finished (reloaded, or unservable)."""
        loader = self.cache.loaders.loader_for(entry.key)
        if loader is None:
            self._bump(no_loader=1)
            log.warning("reload_without_loader", key=entry.key)
            return True
        before = await self.cache.get(entry.key)
        try:
            loaded = await self.cache.load(entry.key, loader)
        except DatabaseError as exc:  # DatabaseUnavailable too
            self._bump(failures=1)
            log.warning("reload_failed", key=entry.key, error=str(exc))
            return False
        await self.cache.fill(entry.key, loaded)
        after = await self.cache.get(entry.key)
        changed = after is not None and (before is None or after != before)
        self._bump(reloads=1, repaired=int(changed))
        return True

    def _bump(self, **deltas: int) -> None:
        s = self._stats
        self._stats = replace(s, **{k: getattr(s, k) + v for k, v in deltas.items()})
