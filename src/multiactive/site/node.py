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
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp

from multiactive.audit import Auditor, SqliteAuditStore, Stage
from multiactive.errors import ConfigError, ConnectionLost, DecodeError, RejectedError
from multiactive.journal import Journal, open_journal
from multiactive.logs import get_logger
from multiactive.model.batch import RecordBatch, split_batches
from multiactive.model.clock import HybridClock, wall_ms
from multiactive.model.message import Message, Position, StreamId
from multiactive.model.partition import partition_for
from multiactive.model.topology import SiteConfig, Topology
from multiactive.replication.handlers import HandlerRegistry
from multiactive.replication.ingress import Ingress, IngressStatistics
from multiactive.replication.links import LinkMonitor, LinkStatistics
from multiactive.replication.processor import CANARY_TYPE, Processor, ProcessorStatistics
from multiactive.replication.reconciler import Reconciler
from multiactive.site.applier import ApplierLaunch, ProcessorProcess
from multiactive.site.connections import Connections
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


def canary_keys(site: str, partitions: int) -> list[str]:
    """One key per partition, so that canaries travel every stream of a site."""
    keys: dict[int, str] = {}
    index = 0
    while len(keys) < partitions:
        key = f"ma:canary:{site}:{index}"
        keys.setdefault(partition_for(key, partitions), key)
        index += 1
    return [keys[p] for p in range(partitions)]


@dataclass(frozen=True, slots=True)
class StreamLag:
    """How far this site is behind on one stream (origin, partition)."""

    origin: str
    partition: int
    origin_head: int  # what the origin holds (as its last heartbeat said, for remote streams)
    received: int  # journal head here
    applied: int  # applied watermark here
    lag_messages: int  # origin_head - applied
    lag_s: float | None  # age of the oldest message the origin has and this site has not applied


@dataclass(frozen=True, slots=True)
class SiteStatistics:
    site: str
    cluster: str
    uptime_s: float
    heads: dict[StreamId, int]
    ingress: IngressStatistics
    processor: ProcessorStatistics
    links: tuple[LinkStatistics, ...]


class SiteNode:
    def __init__(
        self,
        topology: Topology,
        site: str,
        registry: HandlerRegistry | None = None,
        applier: ApplierLaunch | None = None,
    ) -> None:
        """`applier`: how to start the processor in a child process (`site.applier`); without
        it, or with memory backends, or `separate_processor = false`, it runs inline."""
        self.topology = topology
        self.config: SiteConfig = topology.site(site)
        self.name = site
        self.registry = registry or HandlerRegistry()
        self.clock = HybridClock()
        self.journal: Journal = open_journal(self.config, topology.replication)
        self.state: StateBackend = open_state(topology, site)
        self.ingress = Ingress(site, self.journal, self.clock, topology.partitions, topology.limits)
        self.processor: Processor | ProcessorProcess
        if (
            applier is not None
            and topology.replication.separate_processor
            and "memory" not in (self.config.journal, self.config.state)
        ):
            self.processor = ProcessorProcess(site, self.journal, applier)
        else:
            self.processor = Processor(
                site, self.journal, self.state, self.registry, topology.replication
            )
        stall_after_s = topology.replication.stall_after_s
        self.monitors = {
            link.name: LinkMonitor(
                link, "sender" if link.origin == site else "receiver", stall_after_s
            )
            for link in topology.links
            if site in (link.origin, link.receiver)
        }
        self.connections = Connections(self)
        self.auditor = _auditor(topology, self.config)
        if self.auditor is not None:
            self._observe(self.auditor)
        self.reconciler = Reconciler(self, self._fetch_range, self.auditor)
        self._http: aiohttp.ClientSession | None = None
        self._started_s = 0.0
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
        await self.journal.open()
        await self.state.open()
        if self.auditor is not None:
            await self.auditor.store.open()
        self.clock.observe(self.journal.max_version)
        await self.processor.load()
        await self.connections.listen()
        self._started_s = time.monotonic()
        log.info(
            "site_started",
            site=self.name,
            listen=self.config.listen,
            journal=self.journal.backend,
            state=self.state.backend,
            streams=len(self.journal.heads()),
        )

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
                    *(group.create_task(d) for d in self.connections.dialers()),
                ]
                await stop.wait()
                await self._drain()
        finally:
            await self._close()

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
        await self.state.close()
        await self.journal.close()
        if self.auditor is not None:
            await self.auditor.store.close()
        log.info("site_stopped", site=self.name)

    async def _maintain(self) -> None:
        """Trim what every peer holds and is older than retention (J4)."""
        while True:
            await asyncio.sleep(TRIM_INTERVAL_S)
            floors = await self.trim_floors()
            older_than = wall_ms() - int(self.topology.replication.retention_s * 1000)
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
            await asyncio.sleep(interval)

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
            async with self._http.get(url) as response:
                if response.status != 200:
                    raise ConnectionLost(f"{url}: HTTP {response.status}")
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ConnectionLost(f"cannot fetch {url}: {exc}") from exc
        try:
            return split_batches(body)
        except DecodeError as exc:
            raise ConnectionLost(f"{url}: bad batches: {exc}") from exc

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

    async def lag(self) -> list[StreamLag]:
        """Per stream: what the origin holds, what is here, what is applied, and how old the
        oldest missing message is."""
        now_ms = wall_ms()
        lags = []
        for stream in sorted(set(self.journal.heads()) | set(self._remote_origin_heads())):
            received = self.journal.head(stream)
            applied = self.processor.applied(stream)
            origin_head = max(received, self._remote_origin_heads().get(stream, 0))
            oldest: int | None = None
            if applied < received:
                oldest = await self.journal.created_at(stream, applied + 1)
            elif origin_head > received:
                oldest = self.monitors[f"{stream.origin}->{self.name}"].oldest_unreceived_ms
            lag_s = 0.0 if origin_head == applied else None
            if oldest is not None:
                lag_s = max(0.0, (now_ms - oldest) / 1000)
            lags.append(
                StreamLag(
                    stream.origin, stream.partition, origin_head, received, applied,
                    origin_head - applied, lag_s,
                )
            )  # fmt: skip
        return lags

    async def find_message(self, position: Position) -> Message | None:
        """The journaled message at a position, if this site holds it."""
        return await self.journal.find_message(position)

    async def trace_position(self, position: Position) -> dict[str, Any]:
        """Where one message stands here: received, applied, parked, retrying, and why not."""
        stream = StreamId(position.origin, position.partition)
        head, applied = self.journal.head(stream), self.processor.applied(stream)
        parked = [
            asdict(d)
            for d in await self.state.dead_letters(limit=100_000)
            if (d.origin, d.partition, d.seq) == tuple(position)
        ]
        retry = self.processor.retry_state(stream)
        retrying = asdict(retry) if retry is not None and retry.seq == position.seq else None
        trace: dict[str, Any] = {
            "site": self.name,
            "received": head >= position.seq,
            "head": head,
            "applied": applied >= position.seq and not parked,
            "watermark": applied,
            "dead_letter": parked[0] if parked else None,
            "retrying": retrying,
        }
        trace["why"] = self._why_not(position, trace, retry)
        if self.auditor is not None:
            records = await self.auditor.store.covering(*position)
            trace["audit"] = [
                {"stage": r.stage, "at_ms": r.at_ms, "detail": r.detail}
                for r in records
                if r.site == self.name
            ]
        return trace

    def _why_not(self, position: Position, trace: dict[str, Any], retry: Any) -> str:
        if trace["dead_letter"] is not None:
            letter = trace["dead_letter"]
            return f"parked after {letter['attempts']} attempts: {letter['error']}"
        if trace["applied"]:
            return ""
        if trace["retrying"] is not None:
            r = trace["retrying"]
            return (
                f"handler failed {r['attempts']} times ({r['error']}); retry in {r['retry_in_s']} s"
            )
        if trace["received"]:
            if retry is not None:
                return f"waiting behind seq {retry.seq}, whose handler is failing: {retry.error}"
            return "received; the processor has not reached it yet"
        link = self.monitors.get(f"{position.origin}->{self.name}")
        if link is None:
            return "not received: no link from its origin to this site"
        snap = link.snapshot()
        detail = f"; last error: {snap.last_error}" if snap.last_error else ""
        return (
            f"not received: link {snap.name} is {snap.state}, {snap.backlog_messages} owed{detail}"
        )

    def _remote_origin_heads(self) -> dict[StreamId, int]:
        heads: dict[StreamId, int] = {}
        for monitor in self.monitors.values():
            if monitor.side == "receiver":
                origin = monitor.link.origin
                heads.update({StreamId(origin, p): h for p, h in monitor.origin_heads.items()})
        return heads

    def statistics(self) -> SiteStatistics:
        own = {s.partition: h for s, h in self.journal.heads(self.name).items()}
        for monitor in self.monitors.values():
            if monitor.side == "sender":
                monitor.origin_heads.update(own)  # current even while the link is down
        return SiteStatistics(
            self.name,
            self.topology.name,
            time.monotonic() - self._started_s if self._started_s else 0.0,
            self.journal.heads(),
            self.ingress.statistics(),
            self.processor.statistics(),
            tuple(m.snapshot() for m in self.monitors.values()),
        )
