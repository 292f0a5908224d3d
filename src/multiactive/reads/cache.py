"""The read API: a site's cache as applications in its datacenter read it, with cache-aside.

    cache = Cache.for_site(topology, "gz")          # the site's own state backend
    await cache.open()
    hit = await cache.get("user:42")                # Cached(value, version, origin, filled)
    row = await cache.get_or_load("user:42", load_user)

Reads go straight to the state backend (SQLite file, Redis): no HTTP on the way. On a miss,
`get_or_load` runs the loader once per key however many readers missed at once (single flight),
fills the value in with the row's version (`Loaded.version`, which a DB handler stored from
`message.version`; a row without one fills at version 0, below every message-driven write),
and, when the load read a replica that may lag, queues the key for one reload (see
`reads/reloads.py`). Which copy wins is decided atomically in the state backend
(`state.ops.fill_wins`): a fill never replaces a newer or equal message-driven value, and a
message-driven write beats a fill of its own version. docs/reads.md tells why.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from multiactive.clock import SYSTEM_CLOCK, Clock
from multiactive.errors import DatabaseError, DatabaseUnavailable
from multiactive.model.topology import Topology
from multiactive.reads.gate import CURRENT, PositionGate
from multiactive.state import StateBackend, open_state
from multiactive.state.ops import FILL_ORIGIN, Entry, Member

VERSIONLESS = 0  # the fill version of a row that stores none: below every message's version


@dataclass(frozen=True, slots=True)
class Cached:
    """A key's value as the cache holds it; `filled`: written by a load, not by a message."""

    key: str
    value: bytes | None  # None: deleted (a tombstone)
    version: int
    origin: str

    @property
    def filled(self) -> bool:
        return self.origin == FILL_ORIGIN

    @classmethod
    def of(cls, entry: Entry) -> Cached:
        return cls(entry.key, entry.value, entry.version, entry.origin)


@dataclass(frozen=True, slots=True)
class Loaded:
    """What a loader read from the site's database: the value (None: no such row) and the
    version stored in the row (None: the row keeps none)."""

    value: bytes | None
    version: int | None = None


Loader = Callable[[str], Awaitable[Loaded]]


class ReloadSink(Protocol):
    """Where a fill from a copy that may lag is queued for one reload."""

    async def schedule(self, key: str, mark: str, filled_ms: int) -> None: ...


@dataclass(frozen=True, slots=True)
class CacheStatistics:
    hits: int = 0
    misses: int = 0
    loads: int = 0  # loader calls (single flight: fewer than misses under concurrency)
    fills: int = 0  # fills written
    fills_lost: int = 0  # fills a newer value in the cache kept out
    unavailable: int = 0  # misses that raised DatabaseUnavailable


class Cache:
    """One site's cache, read directly from its state backend."""

    def __init__(
        self,
        state: StateBackend,
        *,
        gate: PositionGate | None = None,
        reloads: ReloadSink | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.state = state
        self._gate, self._reloads, self._clock = gate, reloads, clock
        self._flights: dict[str, asyncio.Future[Cached | None]] = {}
        self._counts = dict.fromkeys(CacheStatistics.__dataclass_fields__, 0)

    @classmethod
    def for_site(
        cls,
        topology: Topology,
        site: str,
        *,
        gate: PositionGate | None = None,
        reloads: ReloadSink | None = None,
    ) -> Cache:
        """A cache on the state backend the topology gives `site` (call `open()`)."""
        return cls(open_state(topology, site), gate=gate, reloads=reloads)

    async def open(self) -> None:
        await self.state.open()

    async def close(self) -> None:
        await self.state.close()

    async def __aenter__(self) -> Cache:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def get(self, key: str) -> Cached | None:
        entry = await self.state.get(key)
        return None if entry is None else Cached.of(entry)

    async def get_many(self, keys: Sequence[str]) -> dict[str, Cached]:
        found = await asyncio.gather(*(self.state.get(k) for k in keys))
        return {e.key: Cached.of(e) for e in found if e is not None}

    async def counter(self, key: str) -> int:
        return await self.state.counter(key)

    async def newest(self, key: str, n: int) -> list[Member]:
        """The newest `n` present members of a set (a timeline), newest first."""
        return (await self.state.zset(key))[:n]

    async def fill(self, key: str, loaded: Loaded) -> bool:
        """Write what a loader read, unless the cache holds something newer; True if written."""
        if loaded.value is None:
            return False  # no row: nothing to cache
        version = VERSIONLESS if loaded.version is None else loaded.version
        written = await self.state.fill(key, loaded.value, version)
        self._count("fills" if written else "fills_lost")
        return written

    async def get_or_load(self, key: str, loader: Loader) -> Cached | None:
        """The cached value, or on a miss the loader's, filled in (one load per key at once)."""
        held = await self.get(key)
        if held is not None:
            self._count("hits")
            return held
        self._count("misses")
        flight = self._flights.get(key)
        if flight is not None:
            return await asyncio.shield(flight)
        flight = self._flights[key] = asyncio.get_running_loop().create_future()
        try:
            found = await self._load(key, loader)
        except BaseException as exc:
            flight.set_exception(exc)
            flight.exception()  # retrieved: waiters, if any, get it raised
            raise
        else:
            flight.set_result(found)
            return found
        finally:
            del self._flights[key]

    def statistics(self) -> CacheStatistics:
        return CacheStatistics(**self._counts)

    async def _load(self, key: str, loader: Loader) -> Cached | None:
        self._count("loads")
        try:
            loaded = await loader(key)
        except (DatabaseError, OSError) as exc:
            if isinstance(exc, DatabaseError) and not exc.transient:
                raise
            self._count("unavailable")
            raise DatabaseUnavailable(
                f"cache miss of {key!r}: the site's database does not answer ({exc}); "
                "cached keys are still served"
            ) from exc
        if await self.fill(key, loaded):
            await self._queue_reload(key)  # only what was written can be stale
        return await self.get(key)

    async def _queue_reload(self, key: str) -> None:
        if self._gate is None or self._reloads is None:
            return
        mark = await self._gate.mark()
        if mark != CURRENT:
            await self._reloads.schedule(key, mark, self._clock.wall_ms())

    def _count(self, name: str) -> None:
        self._counts[name] += 1
