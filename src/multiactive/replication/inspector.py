"""What a site knows about itself, as records: statistics, lag per stream, where a message is.

The admin API, the reconciler and the metrics read a site through this one object, built from
the parts that hold the facts (journal heads, the processor's watermarks, the links' monitors,
the state's dead letters, the audit trail) rather than from the whole site node.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from multiactive.audit import Auditor
from multiactive.clock import SYSTEM_CLOCK, Clock
from multiactive.journal.base import Journal
from multiactive.model.message import Position, StreamId
from multiactive.records import (
    AuditEntry,
    OriginTotals,
    PositionTrace,
    ProcessorSummary,
    ReconcileReport,
    SiteStatus,
    StreamLag,
    StreamStatus,
)
from multiactive.replication.ingress import Ingress, IngressStatistics
from multiactive.replication.links import LinkMonitor, LinkStatistics
from multiactive.replication.processor import (
    ProcessorStatistics,
    ProcessorView,
    RetryState,
    RunningHandler,
    StreamProgress,
)
from multiactive.state.base import StateBackend

DEAD_LETTER_COUNT_LIMIT = 100_000


@dataclass(frozen=True, slots=True)
class SiteStatistics:
    site: str
    cluster: str
    uptime_s: float
    heads: dict[StreamId, int]
    ingress: IngressStatistics
    processor: ProcessorStatistics
    links: tuple[LinkStatistics, ...]


class SiteInspector:
    def __init__(
        self,
        site: str,
        cluster: str,
        journal: Journal,
        processor: ProcessorView,
        state: StateBackend,
        ingress: Ingress,
        monitors: Mapping[str, LinkMonitor],
        auditor: Auditor | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.site = site
        self._cluster = cluster
        self._journal = journal
        self._processor = processor
        self._state = state
        self._ingress = ingress
        self.monitors = monitors
        self._auditor = auditor
        self._clock = clock
        self._started_s: float | None = None

    def started(self) -> None:
        self._started_s = self._clock.monotonic()

    def link_into_here(self, origin: str) -> LinkMonitor | None:
        """The monitor of the link that brings `origin`'s messages here."""
        return self.monitors.get(f"{origin}->{self.site}")

    # -- statistics and status -----------------------------------------------------------

    def statistics(self) -> SiteStatistics:
        own = {s.partition: h for s, h in self._journal.heads(self.site).items()}
        for monitor in self.monitors.values():
            if monitor.side == "sender":
                monitor.origin_heads.update(own)  # current even while the link is down
        started = self._started_s
        return SiteStatistics(
            self.site,
            self._cluster,
            0.0 if started is None else self._clock.monotonic() - started,
            self._journal.heads(),
            self._ingress.statistics(),
            self._processor.statistics(),
            tuple(m.snapshot() for m in self.monitors.values()),
        )

    async def refresh_senders(self) -> None:
        """Bring each sender-side link record up to date from the journal: what the origin
        holds, and the creation time of the oldest message the receiver has not acknowledged.
        A session's heartbeats keep these only while the link is up; read here, they stay
        true while it is cut (the owed count grows and ages)."""
        own = {s.partition: h for s, h in self._journal.heads(self.site).items()}
        for monitor in self.monitors.values():
            if monitor.side != "sender":
                continue
            monitor.origin_heads.update(own)
            oldest: int | None = None
            for partition, head in own.items():
                acked = monitor.receiver_heads.get(partition, 0)
                if head > acked:
                    created = await self._journal.created_at(
                        StreamId(self.site, partition), acked + 1
                    )
                    if created is not None and (oldest is None or created < oldest):
                        oldest = created
            monitor.oldest_unreceived_ms = oldest

    async def status(self, reconcile: ReconcileReport | None) -> SiteStatus:
        """`/status`: statistics, lag per stream and origin, dead letters, last reconcile."""
        await self.refresh_senders()
        stats = self.statistics()
        lags = await self.lag()
        letters = await self._state.dead_letters(limit=DEAD_LETTER_COUNT_LIMIT)
        progress = stats.processor.streams
        streams = [_stream_status(lag, progress) for lag in lags]
        p = stats.processor
        return SiteStatus(
            stats.site, stats.cluster, round(stats.uptime_s, 3), origin_totals(streams),
            tuple(streams), stats.ingress,
            ProcessorSummary(p.applied_messages, p.parked_messages, p.handler_failures,
                             p.latency_ms_p50, p.latency_ms_p99, p.stuck_handlers),
            stats.links, len(letters), None if reconcile is None else reconcile.summary(),
            self._processor.canaries(), p.db,
        )  # fmt: skip

    # -- lag -----------------------------------------------------------------------------

    async def lag(self) -> list[StreamLag]:
        """Per stream: what the origin holds, what is here, what is applied, and how old the
        oldest missing message is."""
        now_ms = self._clock.wall_ms()
        remote = self._remote_origin_heads()
        lags = []
        for stream in sorted(set(self._journal.heads()) | set(remote)):
            received = self._journal.head(stream)
            applied = self._processor.applied(stream)
            origin_head = max(received, remote.get(stream, 0))
            oldest: int | None = None
            if applied < received:
                oldest = await self._journal.created_at(stream, applied + 1)
            elif origin_head > received:
                monitor = self.link_into_here(stream.origin)
                oldest = None if monitor is None else monitor.oldest_unreceived_ms
            lag_s = 0.0 if origin_head == applied else None
            if oldest is not None:
                lag_s = max(0.0, (now_ms - oldest) / 1000)
            lags.append(
                StreamLag(stream.origin, stream.partition, origin_head, received, applied,
                          origin_head - applied, lag_s)
            )  # fmt: skip
        return lags

    def _remote_origin_heads(self) -> dict[StreamId, int]:
        heads: dict[StreamId, int] = {}
        for monitor in self.monitors.values():
            if monitor.side == "receiver":
                origin = monitor.link.origin
                heads.update({StreamId(origin, p): h for p, h in monitor.origin_heads.items()})
        return heads

    # -- trace ---------------------------------------------------------------------------

    async def trace_position(self, position: Position) -> PositionTrace:
        """Where one message stands here: received, applied, parked, retrying, and why not."""
        stream = StreamId(position.origin, position.partition)
        head, applied = self._journal.head(stream), self._processor.applied(stream)
        parked = [
            d
            for d in await self._state.dead_letters(limit=DEAD_LETTER_COUNT_LIMIT)
            if (d.origin, d.partition, d.seq) == tuple(position)
        ]
        retry = self._processor.retry_state(stream)
        running = next(
            (
                r
                for r in self._processor.stuck_handlers()
                if StreamId(r.origin, r.partition) == stream
            ),
            None,
        )
        trace = PositionTrace(
            site=self.site,
            received=head >= position.seq,
            head=head,
            applied=applied >= position.seq and not parked,
            watermark=applied,
            dead_letter=parked[0] if parked else None,
            retrying=retry if retry is not None and retry.seq == position.seq else None,
            why="",
            audit=await self._audit(position),
            running=running,
        )
        return _with_why(trace, self._why_not(position, trace, retry))

    async def _audit(self, position: Position) -> tuple[AuditEntry, ...] | None:
        if self._auditor is None:
            return None
        records = await self._auditor.store.covering(*position)
        return tuple(AuditEntry(r.stage, r.at_ms, r.detail) for r in records if r.site == self.site)

    def _why_not(self, position: Position, trace: PositionTrace, retry: RetryState | None) -> str:
        if trace.dead_letter is not None:
            letter = trace.dead_letter
            return f"parked after {letter.attempts} attempts: {letter.error}"
        if trace.applied:
            return ""
        if trace.running is not None and trace.received:
            return _running_why(position, trace.running)
        if trace.retrying is not None:
            r = trace.retrying
            return f"handler failed {r.attempts} times ({r.error}); retry in {r.retry_in_s} s"
        if trace.received:
            if retry is not None:
                return f"waiting behind seq {retry.seq}, whose handler is failing: {retry.error}"
            return "received; the processor has not reached it yet"
        monitor = self.link_into_here(position.origin)
        if monitor is None:
            return "not received: no link from its origin to this site"
        snap = monitor.snapshot()
        detail = f"; last error: {snap.last_error}" if snap.last_error else ""
        if snap.state != "streaming":  # the heartbeats stopped: only the origin knows what is owed
            return f"not received: link {snap.name} is {snap.state}{detail}"
        return (
            f"not received: link {snap.name} is {snap.state}, {snap.backlog_messages} owed{detail}"
        )


def origin_totals(streams: list[StreamStatus]) -> dict[str, OriginTotals]:
    """Per origin, its streams summed; the lag is the worst stream's (None if any is
    unknown)."""
    totals: dict[str, OriginTotals] = {}
    for s in streams:
        t = totals.get(s.origin, OriginTotals())
        lag_s = None if t.lag_s is None or s.lag_s is None else max(t.lag_s, s.lag_s)
        totals[s.origin] = OriginTotals(
            t.origin_head + s.origin_head, t.head + s.received, t.applied + s.applied,
            t.applied_count + s.applied_count, t.lag_messages + s.lag_messages, lag_s,
        )  # fmt: skip
    return totals


def _stream_status(lag: StreamLag, progress: Mapping[StreamId, StreamProgress]) -> StreamStatus:
    done = progress.get(StreamId(lag.origin, lag.partition))
    return StreamStatus(
        lag.origin, lag.partition, lag.origin_head, lag.received, lag.applied,
        lag.lag_messages, lag.lag_s, lag.received, 0 if done is None else done.count,
    )  # fmt: skip


def _running_why(position: Position, r: RunningHandler) -> str:
    """Why a message waits on a handler that is running (stuck) in its stream."""
    doing = (
        f"handler for {r.type!r} has run for {r.running_s:.1f} s (attempt {r.attempt}; the "
        f"attempt fails after {r.timeout_s:g} s, then is retried or parked)"
    )
    if r.seq == position.seq:
        return f"its {doing}"
    return f"waiting behind seq {r.seq} (id {r.id}), whose {doing}"


def _with_why(trace: PositionTrace, why: str) -> PositionTrace:
    return replace(trace, why=why)
