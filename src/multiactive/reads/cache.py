"""The read API: a site's cache as applications in its datacenter read it, with cache-aside.

    async def load_user(key: str, db: DbReader) -> Loaded:   # reads the site's own DB copy
        row = await db.fetchone("SELECT body, version FROM users WHERE id = %s", (key,))
        return Loaded(None) if row is None else Loaded(row[0], row[1])

    loaders = Loaders()
    loaders.register("user:", load_user)            # or registry.register_loader(...)
    async with open_cache(topology, "gz", loaders=loaders) as cache:   # reads.site
        hit = await cache.get("user:42")            # Cached(value, version, origin, filled)
        row = await cache.get_or_load("user:42")    # the loader of the longest prefix

Reads go straight to the state backend (SQLite file, Redis): no HTTP on the way. On a miss,
`get_or_load` runs the loader once per key however many readers missed at once (single flight),
fills the value in with the row's version (`Loaded.version`, which a DB handler stored from
`message.version`; a row without one fills at version 0, below every message-driven write),
and, when the load read a replica that may lag, queues the key for one reload (see
`reads/reloads.py`; the site process runs the reloads with the loaders registered in its
`--handlers` module). Which copy wins is decided atomically in the state backend
(`state.ops.fill_wins`): a fill never replaces a newer or equal message-driven value, and a
message-driven write beats a fill of its own version. docs/reads.md tells why.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from multiactive.clock import SYSTEM_CLOCK, Clock
from multiactive.db.reader import DbReader
from multiactive.errors import ConfigError, DatabaseError, DatabaseUnavailable
from multiactive.model.topology import DEFAULT_LOAD_TIMEOUT_S
from multiactive.reads.gate import CURRENT, PositionGate
from multiactive.state import StateBackend
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

    @property
    def fill_version(self) -> int:
        """The version a fill writes: the row's, or one below every message's."""
        return VERSIONLESS if self.version is None else self.version


Loader = Callable[[str, DbReader], Awaitable[Loaded]]


class Loaders:
    """Loaders by key prefix: a key is loaded by the loader of its longest matching prefix."""

    def __init__(self) -> None:
        self._by_prefix: dict[str, Loader] = {}
        self._longest_first: list[tuple[str, Loader]] = []

    def register(self, prefix: str, loader: Loader) -> None:
        if prefix in self._by_prefix:
            raise ConfigError(f"a loader for the key prefix {prefix!r} is already registered")
        self._by_prefix[prefix] = loader
        self._longest_first = sorted(self._by_prefix.items(), key=lambda p: -len(p[0]))

    def loader_for(self, key: str) -> Loader | None:
        return next((ld for prefix, ld in self._longest_first if key.startswith(prefix)), None)

    @property
    def prefixes(self) -> tuple[str, ...]:
        return tuple(sorted(self._by_prefix))


class ReloadSink(Protocol):
    """Where a fill from a copy that may lag is queued for one reload."""

    dropped: int  # fills not queued: the queue was full

    async def schedule(self, key: str, mark: str, filled_ms: int) -> None: ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class CacheStatistics:
    hits: int = 0
    misses: int = 0
    loads: int = 0  # loader calls (single flight: fewer than misses under concurrency)
    fills: int = 0  # fills written
    fills_lost: int = 0  # fills a newer value in the cache kept out
    unavailable: int = 0  # misses that raised DatabaseUnavailable
    reloads_dropped: int = 0  # fills not queued for a reload: the queue was full


class Cache:
    """One site's cache, read directly from its state backend.

    `db` is the site's own database copy (what loaders read), `loaders` the loaders by key
    prefix, `gate` and `reloads` queue fills from a copy that may lag for one reload. Build
    it with `reads.site.open_cache(topology, site)` to get all of them from the topology."""

    def __init__(
        self,
        state: StateBackend,
        *,
        db: DbReader | None = None,
        loaders: Loaders | None = None,
        gate: PositionGate | None = None,
        reloads: ReloadSink | None = None,
        clock: Clock = SYSTEM_CLOCK,
        load_timeout_s: float = DEFAULT_LOAD_TIMEOUT_S,
    ) -> None:
        self.state, self.db, self.loaders = state, db, loaders or Loaders()
        self.load_timeout_s = load_timeout_s
        self._gate, self._reloads, self._clock = gate, reloads, clock
        self._flights: dict[str, asyncio.Future[Cached | None]] = {}
        self._counts = dict.fromkeys(CacheStatistics.__dataclass_fields__, 0)

    async def open(self) -> None:
        await self.state.open()
        if self._reloads is not None:
            await self._reloads.open()

    async def close(self) -> None:
        """Close the state, the database reader, the gate and the reload queue."""
        await self.state.close()
        if self.db is not None:
            await self.db.close()
        if self._gate is not None:
            await self._gate.close()
        if self._reloads is not None:
            await self._reloads.close()

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
        written = await self.state.fill(key, loaded.value, loaded.fill_version)
        self._count("fills" if written else "fills_lost")
        return written

    async def get_or_load(self, key: str, loader: Loader | None = None) -> Cached | None:
        """The cached value, or on a miss the loader's, filled in (one load per key at once).
        Without `loader`, the one registered for the key's longest prefix loads it.
        Raises `DatabaseUnavailable` when the miss cannot be loaded because the database
        does not answer; None when the database has no such row."""
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
            found = await self._load(key, loader or self._registered(key))
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
        dropped = 0 if self._reloads is None else self._reloads.dropped
        return CacheStatistics(**(self._counts | {"reloads_dropped": dropped}))

    def _registered(self, key: str) -> Loader:
        loader = self.loaders.loader_for(key)
        if loader is None:
            known = ", ".join(repr(p) for p in self.loaders.prefixes) or "none"
            raise ConfigError(
                f"no loader serves the key {key!r} (registered prefixes: {known}); register "
                "one with register_loader(prefix, loader) or pass loader="
            )
        return loader

    async def load(self, key: str, loader: Loader) -> Loaded:
        """Run a loader against the site's database; `DatabaseUnavailable` when it does not
        answer (a loader's own bug, or a bad query, raises as it is)."""
        if self.db is None:
            raise ConfigError("this cache has no database to load from (build it with db=)")
        self._count("loads")
        try:
            async with asyncio.timeout(self.load_timeout_s):
                return await loader(key, self.db)
        except TimeoutError as exc:
            self._count("unavailable")
            raise DatabaseUnavailable(
                f"cache miss of {key!r}: the site's database did not answer within "
                f"{self.load_timeout_s:g} s (load_timeout_s in [reads]); cached keys are "
                "still served"
            ) from exc
        except (DatabaseError, OSError) as exc:
            if isinstance(exc, DatabaseError) and not exc.transient:
                raise
            self._count("unavailable")
            raise DatabaseUnavailable(
                f"cache miss of {key!r}: the site's database does not answer ({exc}); "
                "cached keys are still served"
            ) from exc

    async def _load(self, key: str, loader: Loader) -> Cached | None:
        loaded = await self.load(key, loader)
        if not await self.fill(key, loaded):
            return await self.get(key)  # no row, or something newer is held: that
        await self._queue_reload(key)  # only what was written can be stale
        assert loaded.value is not None
        return Cached(key, loaded.value, loaded.fill_version, FILL_ORIGIN)

    async def _queue_reload(self, key: str) -> None:
        if self._gate is None or self._reloads is None:
            return
        mark = await self._gate.mark()
        if mark != CURRENT:
            await self._reloads.schedule(key, mark, self._clock.wall_ms())

    def _count(self, name: str) -> None:
        self._counts[name] += 1
