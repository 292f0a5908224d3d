"""Prometheus metrics, read from the site's statistics records at scrape time.

Nothing is counted twice: the components keep their `statistics()` records and this module
only renders them in the Prometheus text format (names `multiactive_*`, labels `site`,
`origin`, `partition`, `link`, `side`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from multiactive.replication.links import LinkState
from multiactive.replication.processor import RunningHandler

if TYPE_CHECKING:
    from multiactive.reads.site import ReadsSummary
    from multiactive.records import StreamLag
    from multiactive.replication.inspector import SiteStatistics

LINK_STATES: tuple[LinkState, ...] = ("connecting", "streaming", "stalled", "cut")
_STREAM_GAUGES = (  # (StreamLag field, metric name, help)
    ("origin_head", "origin_head", "Highest seq the origin holds."),
    ("received", "received_head", "Highest seq journaled here."),
    ("applied", "applied_watermark", "Highest seq applied here."),
    ("lag_messages", "lag_messages", "Messages the origin has and this site has not applied."),
    ("lag_s", "lag_seconds", "Age of the oldest message not applied here."),
)
_LINK_GAUGES = (  # (LinkStatistics field, metric name, help)
    ("backlog_messages", "link_backlog_messages", "Messages owed on the link."),
    ("in_flight_bytes", "link_in_flight_bytes", "Bytes sent and not acknowledged."),
    ("window_bytes", "link_window_bytes", "Current send window."),
    ("messages_per_s", "link_messages_per_second", "Recent message rate."),
)
_LINK_COUNTERS = (
    ("messages", "link_messages", "Messages sent or received."),
    ("bytes", "link_bytes", "Bytes sent or received."),
    ("connects", "link_connects", "Sessions established."),
)


@dataclass(frozen=True, slots=True)
class Scrape:
    """Everything one scrape renders (the async parts are gathered before rendering)."""

    stats: SiteStatistics
    lags: list[StreamLag]
    dead_letters: int
    reconcile: dict[str, float]
    canaries: dict[str, dict[str, float]] = field(default_factory=dict)
    # With [tls]: refused connections per (side, reason), seconds to each certificate's expiry.
    tls_refusals: dict[tuple[str, str], int] = field(default_factory=dict)
    tls_expiry_s: dict[str, float] = field(default_factory=dict)
    reads: ReadsSummary | None = None  # reloads and the database probe, when the site has them


def render_metrics(scrape: Scrape) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SiteCollector(scrape))
    return generate_latest(registry)


class _SiteCollector(Collector):
    def __init__(self, scrape: Scrape) -> None:
        self._scrape = scrape

    def collect(self) -> Iterator[Metric]:
        yield from self._ingress()
        yield from self._streams()
        yield from self._links()
        yield from self._processor()
        yield from self._reads()
        yield from self._tls()

    def _gauge(self, name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"multiactive_{name}", doc, labels=["site", *labels])

    def _counter(self, name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
        return CounterMetricFamily(f"multiactive_{name}", doc, labels=["site", *labels])

    def _site_counters(self, rows: Iterable[tuple[str, float, str]]) -> Iterator[Metric]:
        """One counter family per (name, value, help), labelled only by the site."""
        for name, value, doc in rows:
            family = self._counter(name, doc, [])
            family.add_metric([self._scrape.stats.site], value)
            yield family

    def _ingress(self) -> Iterator[Metric]:
        site, ingress = self._scrape.stats.site, self._scrape.stats.ingress
        yield from self._site_counters(
            (
                ("ingress_accepted", ingress.accepted, "Messages journaled at this site."),
                ("ingress_duplicates", ingress.duplicates, "Publishes of an id already journaled."),
                ("ingress_refused", ingress.refused, "Drafts refused at ingress."),
                ("ingress_flushes", ingress.flushes, "Group commits (journal appends)."),
                ("ingress_journal_errors", ingress.journal_errors, "Failed journal appends."),
                ("ingress_unknown", ingress.unknown, "Drafts answered outcome unknown."),
            )
        )
        pending = self._gauge("ingress_pending", "Drafts waiting for a group commit.", [])
        pending.add_metric([site], ingress.pending)
        yield pending
        available = self._gauge("ingress_available", "1 if the journal can be written now.", [])
        available.add_metric([site], 0 if ingress.unavailable else 1)
        yield available

    def _streams(self) -> Iterator[Metric]:
        site = self._scrape.stats.site
        labels = ["origin", "partition"]
        families = {attr: self._gauge(name, doc, labels) for attr, name, doc in _STREAM_GAUGES}
        for lag in self._scrape.lags:
            values = [site, lag.origin, str(lag.partition)]
            for attr, family in families.items():
                value = getattr(lag, attr)
                if value is not None:
                    family.add_metric(values, value)
        yield from families.values()

    def _links(self) -> Iterator[Metric]:
        site = self._scrape.stats.site
        labels = ["link", "side"]
        state = self._gauge("link_state", "1 for the link's current state.", [*labels, "state"])
        rtt = self._gauge("link_rtt_seconds", "Minimum recent round trip.", labels)
        gauges = {attr: self._gauge(name, doc, labels) for attr, name, doc in _LINK_GAUGES}
        counters = {attr: self._counter(name, doc, labels) for attr, name, doc in _LINK_COUNTERS}
        for link in self._scrape.stats.links:
            values = [site, link.name, link.side]
            for candidate in LINK_STATES:
                state.add_metric([*values, candidate], float(link.state == candidate))
            for attr, gauge in gauges.items():
                gauge.add_metric(values, getattr(link, attr))
            for attr, counter in counters.items():
                counter.add_metric(values, getattr(link, attr))
            if link.rtt_ms is not None:
                rtt.add_metric(values, link.rtt_ms / 1000)
        yield state
        yield rtt
        yield from gauges.values()
        yield from counters.values()

    def _stuck(self, site: str, stuck: tuple[RunningHandler, ...]) -> Iterator[Metric]:
        """Handlers running longer than STUCK_AFTER_S, each named with its message."""
        count = self._gauge("stuck_handlers", "User handlers running for over a second.", [])
        count.add_metric([site], len(stuck))
        yield count
        labels = ["origin", "partition", "seq", "id", "type"]
        running = self._gauge("stuck_handler_seconds", "How long a stuck handler has run.", labels)
        for r in stuck:
            running.add_metric([site, r.origin, str(r.partition), str(r.seq), r.id, r.type],
                               r.running_s)  # fmt: skip
        yield running

    def _processor(self) -> Iterator[Metric]:
        site, proc = self._scrape.stats.site, self._scrape.stats.processor
        for name, count, doc in (
            ("applied_messages", proc.applied_messages, "Messages applied here."),
            ("parked_messages", proc.parked_messages, "Messages parked as dead letters."),
            ("apply_errors", proc.handler_failures, "Handler failures (each attempt)."),
        ):
            total = self._counter(name, doc, [])
            total.add_metric([site], count)
            yield total
        latency = self._gauge(
            "apply_latency_seconds", "Acceptance at origin to applied here.", ["quantile"]
        )
        for quantile, value in (("0.5", proc.latency_ms_p50), ("0.99", proc.latency_ms_p99)):
            if value is not None:
                latency.add_metric([site, quantile], value / 1000)
        yield latency
        dead = self._gauge("dead_letters", "Dead letters held here.", [])
        dead.add_metric([site], self._scrape.dead_letters)
        yield dead
        yield from self._stuck(site, proc.stuck_handlers)
        age = self._gauge(
            "canary_age_seconds", "Age of the newest canary from an origin.", ["origin"]
        )
        took = self._gauge(
            "canary_latency_seconds", "How long that canary took to apply here.", ["origin"]
        )
        for origin, canary in self._scrape.canaries.items():
            age.add_metric([site, origin], canary["age_s"])
            took.add_metric([site, origin], canary["latency_s"])
        yield age
        yield took
        for name, figure in self._scrape.reconcile.items():
            gauge = self._gauge(f"reconcile_{name}", f"Last reconcile run: {name}.", [])
            gauge.add_metric([site], figure)
            yield gauge

    def _reads(self) -> Iterator[Metric]:
        """Reloads of cache fills and the database's health (`multiactive.reads`)."""
        site, reads = self._scrape.stats.site, self._scrape.reads
        if reads is None:
            return
        r = reads.reloads
        yield from self._site_counters(
            (
                ("reloads", r.reloads, "Cache keys loaded again after a fill from a lagging copy."),
                ("reloads_repaired", r.repaired, "Reloads that replaced a stale fill."),
                ("reloads_at_deadline", r.at_deadline, "Reloads run at reload_after_s."),
                ("reload_failures", r.failures, "Reload loads or position checks that failed."),
            )
        )
        pending = self._gauge("reloads_pending", "Cache keys waiting for a reload.", [])
        pending.add_metric([site], r.pending)
        yield pending
        oldest = self._gauge("reload_oldest_seconds", "Age of the oldest pending reload.", [])
        if (age := r.oldest_age_s(time.time() * 1000)) is not None:
            oldest.add_metric([site], age)
        yield oldest
        up = self._gauge("database_up", "1 if the site's database answers (0: degraded).", [])
        if reads.database.reachable is not None:
            up.add_metric([site], float(reads.database.reachable))
        yield up

    def _tls(self) -> Iterator[Metric]:
        site = self._scrape.stats.site
        if self._scrape.tls_expiry_s:
            expiry = self._gauge(
                "tls_certificate_expiry_seconds",
                "Seconds until a loaded certificate expires (site, ca0, ca1...).",
                ["certificate"],
            )
            for name, seconds in sorted(self._scrape.tls_expiry_s.items()):
                expiry.add_metric([site, name], seconds)
            yield expiry
        refused = self._counter(
            "tls_refused", "Connections refused by TLS or the link allow-list.", ["side", "reason"]
        )
        for (side, reason), count in sorted(self._scrape.tls_refusals.items()):
            refused.add_metric([site, side, reason], count)
        yield refused
