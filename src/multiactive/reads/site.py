"""A site's read side, built from the topology: the cache applications read, and the upkeep
the site process runs for it.

Applications in the site's datacenter open the cache on the site's own state backend:

    registry = HandlerRegistry()
    registry.load("myapp.handlers")              # its setup() registers loaders by prefix
    async with open_cache(topology, "gz", loaders=registry.loaders) as cache:
        row = await cache.get_or_load("user:42")

The site process (`SiteReads`, started by the site node when its `--handlers` module
registers loaders or the database is in `writer` mode) runs the reloads that every application's
fills queued, with the same loaders, and probes the site's database every
`[reads] db_probe_interval_s`: while it does not answer, the site is **degraded** (status,
dashboard, metrics): cached keys are still served, misses raise `DatabaseUnavailable`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from multiactive.clock import SYSTEM_CLOCK, Clock
from multiactive.db.config import DatabaseSettings, database_settings
from multiactive.db.reader import DbReader, open_reader
from multiactive.errors import DatabaseError
from multiactive.logs import get_logger
from multiactive.model.record import Record
from multiactive.model.topology import Topology
from multiactive.reads.cache import Cache, Loaders
from multiactive.reads.gate import CurrentGate, PositionGate
from multiactive.reads.reloads import (
    MemoryReloads,
    Reloader,
    ReloaderStatistics,
    ReloadQueue,
    SqliteReloads,
)
from multiactive.state import StateBackend, open_state

log = get_logger("reads")

RELOADS_FILE = "reloads.sqlite3"


def reload_queue(topology: Topology, site: str) -> ReloadQueue:
    """The site's durable reload queue, in the backend of its state (not yet open)."""
    config, reads = topology.site(site), topology.reads
    limits = (reads.reload_after_s, reads.max_pending_reloads)
    if config.state == "redis":
        from multiactive.reads.redis import RedisReloads

        assert config.redis_url is not None
        setting = f"{topology.source}: sites.{site}.redis_url"
        return RedisReloads(config.redis_url, site, setting, *limits)
    if config.state == "sqlite":
        return SqliteReloads(config.data_dir / RELOADS_FILE, *limits)
    return MemoryReloads(*limits)


def position_gate(settings: DatabaseSettings, site: str) -> PositionGate:
    """MariaDB replicas may lag the writer: their gate; every other copy is current."""
    if settings.mode != "writer" or settings.site(site).url.scheme != "mysql":
        return CurrentGate()
    from multiactive.db.positions import MariaDbGate  # needs the [mariadb] extra (asyncmy)

    return MariaDbGate(settings, site)


def open_cache(
    topology: Topology,
    site: str,
    *,
    loaders: Loaders | None = None,
    state: StateBackend | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> Cache:
    """The cache of `site` with its database reader, position gate and reload queue, as the
    topology gives them (call `open()`, or use `async with`)."""
    settings = database_settings(topology)
    return Cache(
        state or open_state(topology, site),
        db=open_reader(settings, site),
        loaders=loaders,
        gate=position_gate(settings, site),
        reloads=reload_queue(topology, site),
        clock=clock,
        load_timeout_s=topology.reads.load_timeout_s,
    )


@dataclass(frozen=True, slots=True)
class DatabaseHealth(Record):
    """Does the site's own database answer? (None: not checked yet)"""

    reachable: bool | None = None
    error: str | None = None
    since_ms: int | None = None  # when `reachable` last changed
    checks: int = 0


@dataclass(frozen=True, slots=True)
class ReadsSummary(Record):
    """The read side in `/status` (field `reads`), `multiactive status` and the dashboard."""

    loaders: tuple[str, ...] = ()  # key prefixes the site's loaders serve
    reloads: ReloaderStatistics = field(default_factory=ReloaderStatistics)
    database: DatabaseHealth = field(default_factory=DatabaseHealth)

    @property
    def degraded(self) -> bool:
        """The database does not answer: misses fail, cached keys are still served."""
        return self.database.reachable is False


class DatabaseProbe:
    """Asks the site's database `SELECT 1` every interval and remembers the answer."""

    def __init__(
        self, db: DbReader, site: str, interval_s: float, timeout_s: float, clock: Clock
    ) -> None:
        self._db, self._site, self._clock = db, site, clock
        self._interval_s, self._timeout_s = interval_s, timeout_s
        self._health = DatabaseHealth()

    async def run(self) -> None:
        while True:
            await self.check()
            await self._clock.sleep(self._interval_s)

    async def check(self) -> DatabaseHealth:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._db.fetchone("SELECT 1")
        except TimeoutError:
            self._note(False, f"no answer within {self._timeout_s:g} s (load_timeout_s)")
        except DatabaseError as exc:
            self._note(False, str(exc))
        else:
            self._note(True, None)
        return self._health

    def health(self) -> DatabaseHealth:
        return self._health

    def _note(self, reachable: bool, error: str | None) -> None:
        held = self._health
        changed = held.reachable is not reachable
        since = self._clock.wall_ms() if changed else held.since_ms
        self._health = DatabaseHealth(reachable, error, since, held.checks + 1)
        if changed and not reachable:
            log.warning("database_unreachable", site=self._site, degraded=True, error=error)
        elif changed and held.reachable is False:
            log.info("database_reachable", site=self._site, degraded=False)


class SiteReads:
    """The site process's part of the read path: reloads and the database probe."""

    def __init__(
        self,
        topology: Topology,
        site: str,
        state: StateBackend,
        loaders: Loaders,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        """`state` is the node's own (opened and closed by the node, not here)."""
        settings = database_settings(topology)
        self.loaders = loaders
        self.queue = reload_queue(topology, site)
        self.db = open_reader(settings, site)
        self.gate = position_gate(settings, site)
        reads = topology.reads
        cache = Cache(
            state, db=self.db, loaders=loaders, clock=clock, load_timeout_s=reads.load_timeout_s
        )
        self.reloader = Reloader(self.queue, self.gate, cache, poll_s=reads.reload_poll_s,
                                 clock=clock)  # fmt: skip
        self.probe = DatabaseProbe(
            self.db, site, reads.db_probe_interval_s, reads.load_timeout_s, clock
        )

    async def open(self) -> None:
        await self.queue.open()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self.reloader.run())
            group.create_task(self.probe.run())

    async def close(self) -> None:
        self.reloader.stop()
        await self.queue.close()
        await self.gate.close()
        await self.db.close()

    def summary(self) -> ReadsSummary:
        return ReadsSummary(self.loaders.prefixes, self.reloader.statistics(), self.probe.health())


def site_reads(
    topology: Topology, site: str, state: StateBackend, loaders: Loaders, clock: Clock
) -> SiteReads | None:
    """The site's read upkeep, when it has loaders or its database is a writer-mode copy
    (whose health status and the dashboard show); None otherwise."""
    if not loaders.prefixes and database_settings(topology).mode != "writer":
        return None
    return SiteReads(topology, site, state, loaders, clock)
