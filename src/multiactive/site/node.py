"""The site node: wires journal, state, ingress, links and processor, and runs their lifecycle.

    start()  open the journal and state, restore the clock and watermarks, listen
    run()    ingress flusher, processor, link dialers and maintenance, until `stop` is set
    drain    stop listening, refuse new publishes, journal and acknowledge what was queued
    close    cancel sessions, close the state and the journal

Children run in one `asyncio.TaskGroup`: a crash in any of them ends the node with that error
instead of being logged and forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

import aiohttp

from multiactive import failpoints
from multiactive.audit import Auditor, SqliteAuditStore, Stage
from multiactive.clock import SYSTEM_CLOCK, Clock
from multiactive.db.site import open_db_apply
from multiactive.errors import (
    ConfigError,
    ConnectionLost,
    DecodeError,
    RejectedError,
    StoreError,
)
from multiactive.journal import Journal, open_journal
from multiactive.logs import get_logger
from multiactive.model.batch import RecordBatch, split_batches
from multiactive.model.clock import HybridClock, wall_ms
from multiactive.model.message import StreamId
from multiactive.model.partition import partition_for
from multiactive.model.topology import SiteConfig, Topology
from multiactive.reads.site import SiteReads, site_reads
from multiactive.replication.handlers import HandlerRegistry
from multiactive.replication.ingress import Ingress
from multiactive.replication.inspector import SiteInspector, SiteStatistics
from multiactive.replication.links import LinkMonitor
from multiactive.replication.processor import CANARY_TYPE, Processor, ProcessorView
from multiactive.replication.reconciler import Reconciler
from multiactive.routing.config import routing_config
from multiactive.routing.gate import RoutingGate
from multiactive.security.tls import TlsMaterial
from multiactive.site.applier import ApplierLaunch, ProcessorProcess
from multiactive.site.connections import Connections
from multiactive.site.startup import when_available
from multiactive.state import DeadLetter, StateBackend, open_state

TRIM_INTERVAL_S = 60.0
DRAIN_TIMEOUT_S = 10.0

log = get_logger("site")


def _auditor(topology: Topology, site: SiteConfig) -> Auditor | None:
    """The audit trail the topology asks for, or None."""
    settings = topology.audit
    if settings.store == "none":
        return None
    if settings.store == "postgresql":
        from multiactive.audit.postgres import PostgresAuditStore  # needs psycopg

        return Auditor(site.name, PostgresAuditStore(settings.dsn))
    return Auditor(site.name, SqliteAuditStore(site.data_dir / "audit.sqlite3"))


def routing_gate(topology: Topology, site: str) -> RoutingGate | None:
    """The check of routed writes, when the topology has [routing] (checked here at start)."""
    if topology.routing is None:
        return None
    return RoutingGate(site, routing_config(topology))


def _skewed_ms() -> int:
    return wall_ms() - failpoints.CLOCK_BEHIND_MS


def canary_keys(site: str, partitions: int) -> list[str]:
    """One key per partition, so that canaries travel every stream of a site."""
    keys: dict[int, str] = {}
    index = 0
    while len(keys) < partitions:
        key = f"ma:canary:{site}:{index}"
        keys.setdefault(partition_for(key, partitions), key)
        index += 1
    return [keys[p] for p in range(partitions)]


class SiteNode:
    def __init__(
        self,
        topology: Topology,
        site: str,
        registry: HandlerRegistry | None = None,
        applier: ApplierLaunch | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        """`applier`: how to start the processor in a child process (`site.applier`); without
        it, or with memory backends, or `separate_processor = false`, it runs inline."""
        self.topology = topology
        self.config: SiteConfig = topology.site(site)
        self.name = site
        self.registry = registry or HandlerRegistry()
        self.clock = HybridClock(
            _skewed_ms if failpoints.active(failpoints.CLOCK_BEHIND) else wall_ms
        )
        self.journal: Journal = open_journal(self.config, topology.replication)
        self.state: StateBackend = open_state(topology, site)
        self.ingress = Ingress(
            site, self.journal, self.clock, topology.partitions, topology.limits, clock
        )
        self.processor: ProcessorView
        if (
            applier is not None
            and topology.replication.separate_processor
            and "memory" not in (self.config.journal, self.config.state)
        ):
            self.processor = ProcessorProcess(site, self.journal, applier)
            self.journal.cache_remote = False  # the applier reads them from storage
        else:
            db = open_db_apply(topology, site, self.journal, self.registry, clock)
            self.processor = Processor(
                site, self.journal, self.state, self.registry, topology.replication, clock, db
            )
        stall_after_s = topology.replication.stall_after_s
        self.monitors = {
            link.name: LinkMonitor(
                link, "sender" if link.origin == site else "receiver", stall_after_s, clock
            )
            for link in topology.links
            if site in (link.origin, link.receiver)
        }
        self.tls = None if topology.tls is None else TlsMaterial(topology.tls, site)
        self.connections = Connections(
            site, topology, self.journal, self.ingress, self.monitors, self.clock, clock, self.tls
        )
        self.gate = routing_gate(topology, site)
        if self.gate is not None:
            self.ingress.gate = self.gate.check
        self.reads: SiteReads | None = site_reads(
            topology, site, self.state, self.registry.loaders, clock
        )
        self.auditor = _auditor(topology, self.config)
        if self.auditor is not None:
            self._observe(self.auditor)
        self.inspector = SiteInspector(
            site, topology.name, self.journal, self.processor, self.state, self.ingress,
            self.monitors, self.auditor, clock,
        )  # fmt: skip
        self.reconciler = Reconciler(
            site, topology.site_names, topology.replication, self.journal, self.state,
            self.processor, self.inspector, self._fetch_range, self.auditor, clock,
        )  # fmt: skip
        self._clock = clock
        self._http: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def _observe(self, auditor: Auditor) -> None:
        """Feed the audit trail from the journal (accepted, received) and the processor
        (applied, parked)."""

        def stored(local: bool, batches: Sequence[RecordBatch]) -> None:
            for b in batches:
                stage: Stage = "accepted" if local else "received"
                auditor.note(b.origin, b.partition, b.first_seq, b.last_seq, stage)

        def applied(stream: StreamId, first: int, last: int, dead: Sequence[DeadLetter]) -> None:
            auditor.note(stream.origin, stream.partition, first, last, "applied")
            for letter in dead:
                auditor.note(letter.origin, letter.partition, letter.seq, letter.seq, "parked",
                             letter.error)  # fmt: skip

        self.journal.observers.append(stored)
        self.processor.observers.append(applied)

    async def start(self) -> None:
        await self._open_storage()
        if self.auditor is not None:
            await self.auditor.store.open()
        self.clock.observe(self.journal.max_version)
        await self._when_available(self.processor.load, "watermarks")
        if self.gate is not None:
            gate = self.gate
            await self._when_available(lambda: gate.refresh(self.state), "routing policy")
        await self.connections.listen()
        for warning in [] if self.tls is None else self.tls.warnings():
            log.warning("tls_certificate_expiring", site=self.name, detail=warning)
        if self.tls is not None and not self.tls.tokens.admin:
            detail = "no admin token in [tls] tokens: every mutating admin call is refused"
            log.warning("admin_locked", site=self.name, detail=detail)
        self.inspector.started()
        log.info(
            "site_started",
            site=self.name,
            listen=self.config.listen,
            journal=self.journal.backend,
            state=self.state.backend,
            streams=len(self.journal.heads()),
        )

    async def _open_storage(self) -> None:
        """Journal and state, waiting for a Redis that is restarting (`site.startup`)."""
        await self._when_available(self.journal.open, "journal", self.journal.close)
        await self._when_available(self.state.open, "state", self.state.close)
        if self.reads is not None:
            reads = self.reads
            await self._when_available(reads.open, "reload queue", reads.queue.close)

    async def _when_available(
        self,
        step: Callable[[], Awaitable[None]],
        what: str,
        undo: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        await when_available(step, site=self.name, what=what, undo=undo, clock=self._clock)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then drain and close. Call `start()` first."""
        try:
            async with asyncio.TaskGroup() as group:
                self._tasks = [
                    group.create_task(self.ingress.run()),
                    group.create_task(self.processor.run()),
                    group.create_task(self._maintain()),
                    group.create_task(self.reconciler.run()),
                    group.create_task(self._send_canaries()),
                    *([group.create_task(self.auditor.run())] if self.auditor else []),
                    *([group.create_task(self.reads.run())] if self.reads else []),
                    *([group.create_task(self.tls.watch(self._clock))] if self.tls else []),
                    *self._gate_tasks(group),
                    *(group.create_task(d) for d in self.connections.dialers()),
                ]
                await stop.wait()
                await self._drain()
        finally:
            await self._close()

    def reload_tls(self) -> None:
        """SIGHUP: new certificates for new connections; those up keep theirs."""
        if self.tls is not None:
            self.tls.reload("sighup")

    def _gate_tasks(self, group: asyncio.TaskGroup) -> list[asyncio.Task[None]]:
        """The routing gate's refresh from state, when the topology has [routing]."""
        if self.gate is None:
            return []
        return [group.create_task(self.gate.run(self.state, self._clock))]

    async def _drain(self) -> None:
        log.info("site_draining", site=self.name, pending=self.ingress.pending)
        self.connections.stop_listening()
        try:
            await asyncio.wait_for(self.ingress.drain(), DRAIN_TIMEOUT_S)
        except TimeoutError:
            log.warning("drain_timeout", site=self.name, pending=self.ingress.pending)
        await self.connections.flush_publishers()
        for task in self._tasks:
            task.cancel()

    async def _close(self) -> None:
        await self.connections.close()
        await self.processor.close()
        if self._http is not None:
            await self._http.close()
        if self.reads is not None:
            await self.reads.close()
        await self.state.close()
        await self.journal.close()
        if self.auditor is not None:
            await self.auditor.store.close()
        log.info("site_stopped", site=self.name)

    async def _maintain(self) -> None:
        """Trim what every peer holds and is older than retention (J4)."""
        while True:
            await self._clock.sleep(TRIM_INTERVAL_S)
            try:
                await self._trim()
            except StoreError as exc:  # storage restarting: trim at the next interval
                log.warning("trim_failed", site=self.name, reason=exc)

    async def _trim(self) -> None:
        floors = await self.trim_floors()
        older_than = self._clock.wall_ms() - int(self.topology.replication.retention_s * 1000)
        dropped = await self.journal.trim(floors, older_than)
        if dropped:
            log.info("journal_trimmed", site=self.name, batches=dropped)

    async def _send_canaries(self) -> None:
        """Every `canary_interval_s`, one canary per partition of this site's streams: every
        other site applies them, and notices when they stop arriving (`Reconciler`)."""
        interval = self.topology.replication.canary_interval_s
        if interval <= 0:
            return
        keys = canary_keys(self.name, self.topology.partitions)
        while True:
            drafts = [["", CANARY_TYPE, key, {}, b""] for key in keys]
            with contextlib.suppress(RejectedError):
                await self.ingress.submit(drafts, internal=True)
            await self._clock.sleep(interval)

    async def publish_internal(self, type_: str, key: str, payload: bytes) -> None:
        """Journal a site's own control message (a reserved `ma.` type) like any write."""
        await self.ingress.submit([["", type_, key, {}, payload]], internal=True)

    async def _fetch_range(
        self, site: str, stream: StreamId, first: int, last: int
    ) -> list[RecordBatch]:
        """The stored batches of `stream` covering `first..last`, from another site's admin
        API (used by the reconciler to refill journal holes)."""
        address = self.topology.site(site).admin
        if address is None:
            raise ConfigError(f"site {site} has no admin address to fetch from (sites[].admin)")
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        url = (
            f"http://{address}/journal/batches?origin={stream.origin}"
            f"&partition={stream.partition}&from_seq={first}&to_seq={last}"
        )
        try:
            async with self._http.get(url, headers=self._admin_headers()) as response:
                if response.status != 200:
                    raise ConnectionLost(f"{url}: HTTP {response.status}")
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ConnectionLost(f"cannot fetch {url}: {exc}") from exc
        try:
            return split_batches(body)
        except DecodeError as exc:
            raise ConnectionLost(f"{url}: bad batches: {exc}") from exc

    def _admin_headers(self) -> dict[str, str]:
        """A peer's admin API may want a token (`[tls] admin_read = "token"`)."""
        tokens = () if self.tls is None else self.tls.tokens.admin
        return {"Authorization": f"Bearer {tokens[0]}"} if tokens else {}

    async def trim_floors(self) -> dict[StreamId, int]:
        """Per stream, the highest seq no one here or elsewhere still needs.

        Own streams: the lowest head every receiver acknowledged (a receiver never heard
        from holds everything back). Remote streams: what the processor applied.
        """
        acked = await self.journal.peer_heads()
        receivers = [link.receiver for link in self.topology.links_from(self.name)]
        floors: dict[StreamId, int] = {}
        for stream in self.journal.heads():
            if stream.origin == self.name:
                floors[stream] = min(
                    (acked.get(r, {}).get(stream, 0) for r in receivers), default=0
                )
            else:
                floors[stream] = self.processor.applied(stream)
        return floors

    def statistics(self) -> SiteStatistics:
        return self.inspector.statistics()
