"""The admin API's records: what a site answers, typed, with `to_json()` / `from_json()`.

One module for every shape that crosses the admin API, shared by the server
(`admin/http.py`), the CLI, the chaos checker, the local cluster harness and the dashboard
(which reads the same JSON). `docs/admin-api.md` lists the endpoints and the record each
returns. A renamed field fails `tests/unit/test_records.py` and mypy, not a script.

    status = SiteStatus.from_json(json.load(response))
    status.links[0].backlog_messages
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from multiactive.db.apply import DbApplySummary
from multiactive.db.decisions import Decision, DecisionHistory
from multiactive.model.message import Message
from multiactive.model.record import Record
from multiactive.model.topology import LinkConfig
from multiactive.reads.site import ReadsSummary
from multiactive.replication.ingress import IngressStatistics
from multiactive.replication.links import LinkState, LinkStatistics
from multiactive.replication.processor import RetryState, RunningHandler
from multiactive.state.base import DeadLetter

__all__ = [
    "AuditEntry",
    "BehindStream",
    "ClusterLag",
    "ClusterTrace",
    "DbApplySummary",
    "DeadLetter",
    "Decision",
    "DecisionHistory",
    "HeadsAnswer",
    "IngressStatistics",
    "LinkHistory",
    "LinkSample",
    "LinkSeries",
    "LinkStatistics",
    "LinkView",
    "MessageRecord",
    "OriginTotals",
    "PositionTrace",
    "ProcessorSummary",
    "ReadsSummary",
    "ReconcileReport",
    "ReconcileSummary",
    "ReplayFailure",
    "ReplayResult",
    "RetryState",
    "RunningHandler",
    "SiteStatus",
    "StreamHeads",
    "StreamLag",
    "StreamStatus",
    "TraceAnswer",
    "link_views",
]


@dataclass(frozen=True, slots=True)
class StreamLag(Record):
    """How far this site is behind on one stream (origin, partition)."""

    origin: str
    partition: int
    origin_head: int  # what the origin holds (as its last heartbeat said, for remote streams)
    received: int  # journal head here
    applied: int  # applied watermark here
    lag_messages: int  # origin_head - applied
    lag_s: float | None  # age of the oldest message the origin has and this site has not applied


@dataclass(frozen=True, slots=True)
class StreamStatus(Record):
    """A stream in `/status`: its lag, its journal head, and how many messages were applied."""

    origin: str
    partition: int
    origin_head: int
    received: int
    applied: int
    lag_messages: int
    lag_s: float | None
    head: int
    applied_count: int


@dataclass(frozen=True, slots=True)
class OriginTotals(Record):
    """One origin's streams at this site, summed (the lag is the worst stream's)."""

    origin_head: int = 0
    head: int = 0
    applied: int = 0
    applied_count: int = 0
    lag_messages: int = 0
    lag_s: float | None = 0.0


@dataclass(frozen=True, slots=True)
class ProcessorSummary(Record):
    applied_messages: int
    parked_messages: int
    handler_failures: int
    latency_ms_p50: float | None  # origin acceptance -> applied here, recent messages
    latency_ms_p99: float | None
    stuck_handlers: tuple[
        RunningHandler, ...
    ] = ()  # running > STUCK_AFTER_S, each holding its stream


@dataclass(frozen=True, slots=True)
class ReconcileSummary(Record):
    started_ms: int
    duration_ms: float
    problems: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SiteStatus(Record):
    """`GET /status`: everything about one site that a dashboard or `multiactive status`
    shows."""

    site: str
    cluster: str
    uptime_s: float
    origins: dict[str, OriginTotals]
    streams: tuple[StreamStatus, ...]
    ingress: IngressStatistics
    processor: ProcessorSummary
    links: tuple[LinkStatistics, ...]
    dead_letters: int = 0
    reconcile: ReconcileSummary | None = None
    canaries: dict[str, dict[str, float]] = field(default_factory=dict)
    db: DbApplySummary | None = None  # the DB apply (sites with a [database])
    db_decisions: tuple[Decision, ...] = ()  # the newest failover decisions told to this site
    reads: ReadsSummary | None = None  # reloads and the database's health (docs/reads.md)


@dataclass(frozen=True, slots=True)
class StreamHeads(Record):
    origin: str
    partition: int
    head: int
    applied: int


@dataclass(frozen=True, slots=True)
class HeadsAnswer(Record):
    """`GET /heads`: per stream, journal head and applied watermark (cheap to poll)."""

    site: str
    streams: tuple[StreamHeads, ...]


@dataclass(frozen=True, slots=True)
class AuditEntry(Record):
    stage: str
    at_ms: int
    detail: str


@dataclass(frozen=True, slots=True)
class PositionTrace(Record):
    """`GET /trace/position`: where one message stands at one site, and why not further."""

    site: str
    received: bool
    head: int
    applied: bool
    watermark: int
    dead_letter: DeadLetter | None
    retrying: RetryState | None
    why: str
    audit: tuple[AuditEntry, ...] | None = None
    running: RunningHandler | None = None  # the handler of this stream running now, if stuck


@dataclass(frozen=True, slots=True)
class MessageRecord(Record):
    """A journaled message; the payload in base64."""

    id: str
    origin: str
    partition: int
    seq: int
    type: str
    key: str
    version: int
    created_ms: int
    headers: dict[str, str]
    payload: str

    @classmethod
    def of(cls, message: Message) -> MessageRecord:
        return cls(
            message.id, message.origin, message.partition, message.seq, message.type,
            message.key, message.version, message.created_ms, dict(message.headers),
            base64.b64encode(message.payload).decode(),
        )  # fmt: skip

    def to_message(self) -> Message:
        return Message(
            self.id, self.origin, self.partition, self.seq, self.type, self.key, self.version,
            self.created_ms, base64.b64decode(self.payload), dict(self.headers),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class TraceAnswer(Record):
    """`GET /trace/{id}` at one site: where the id was journaled (its origin knows)."""

    site: str
    id: str
    found: bool
    position: tuple[str, int, int] | None = None
    message: MessageRecord | None = None
    here: PositionTrace | None = None


@dataclass(frozen=True, slots=True)
class ClusterTrace(Record):
    """`multiactive trace ID --json`: the message and its trace at every site (None for a
    site that did not answer)."""

    id: str
    found: bool
    origin: str = ""
    message: MessageRecord | None = None
    sites: dict[str, PositionTrace | None] = field(default_factory=dict)
    links: dict[str, LinkView] = field(default_factory=dict)  # per site: origin -> site


@dataclass(frozen=True, slots=True)
class BehindStream(Record):
    """A stream behind at this site, with the state of the link that feeds it."""

    origin: str
    partition: int
    origin_head: int
    received: int
    applied: int
    lag_messages: int
    lag_s: float | None
    link_state: LinkState | str  # "local" for the site's own streams


@dataclass(frozen=True, slots=True)
class ReconcileReport(Record):
    """`GET /reconcile` (the last run) and `POST /reconcile` (a run now)."""

    site: str
    started_ms: int
    duration_ms: float
    streams: int
    holes_found: int
    messages_refetched: int
    behind: tuple[BehindStream, ...]
    dead_letters: int
    redriven: int
    redrive_succeeded: int
    given_up: int
    problems: tuple[str, ...]
    run: int = 0  # this run's number since the site started
    redriven_total: int = 0  # re-drives in all runs since the site started

    def figures(self) -> dict[str, float]:
        """The numbers a metrics scrape reports."""
        return {
            "duration_seconds": self.duration_ms / 1000,
            "holes_found": self.holes_found,
            "messages_refetched": self.messages_refetched,
            "streams_behind": len(self.behind),
            "redriven": self.redriven,
            "redrive_succeeded": self.redrive_succeeded,
            "given_up": self.given_up,
            "redriven_total": self.redriven_total,
            "problems": len(self.problems),
            "last_run_timestamp_seconds": self.started_ms / 1000,
        }

    def summary(self) -> ReconcileSummary:
        return ReconcileSummary(self.started_ms, self.duration_ms, self.problems)


@dataclass(frozen=True, slots=True)
class ReplayFailure(Record):
    id: str
    error: str


@dataclass(frozen=True, slots=True)
class ReplayResult(Record):
    """`POST /deadletters/replay`: how many were re-applied, and why the others failed."""

    replayed: int
    succeeded: int
    failed: tuple[ReplayFailure, ...]


@dataclass(frozen=True, slots=True)
class ClusterLag(Record):
    """`multiactive lag --json`: per (site, origin), the cluster's best knowledge of how far
    the site is behind (the origin's own heads when it answers)."""

    site: str
    origin: str
    origin_head: int
    received: int
    applied: int
    lag_messages: int
    lag_s: float | None


LINK_STATE_RANK = {"streaming": 0, "connecting": 1, "stalled": 2, "cut": 3, "unknown": 4}


@dataclass(frozen=True, slots=True)
class LinkView(Record):
    """One link as its two ends report it, merged by one rule that `status`, `lag`, `trace`
    and the dashboard (`/cluster/status`) share: the worse state of the two ends, and the
    larger owed count and age. The sender's figures are current even while the link is cut
    (its own journal, the receiver's last acknowledged heads); the receiver's come from the
    sender's heartbeats, which stop with the link. `unknown`: neither end answered."""

    name: str
    origin: str
    receiver: str
    mode: str
    state: str
    owed_messages: int
    owed_age_s: float | None
    messages_per_s: float
    rtt_ms: float | None
    window_bytes: int
    connects: int
    errors: tuple[str, ...] = ()

    @property
    def healthy(self) -> bool:
        return self.state == "streaming"


def link_views(links: Sequence[LinkConfig], ends: Iterable[LinkStatistics]) -> list[LinkView]:
    """Each configured link from the ends that reported it (any site's /status links)."""
    by_end: Mapping[tuple[str, str], LinkStatistics] = {(e.name, e.side): e for e in ends}
    return [_view(link, by_end.get((link.name, "sender")), by_end.get((link.name, "receiver")))
            for link in links]  # fmt: skip


def _view(
    link: LinkConfig, sender: LinkStatistics | None, receiver: LinkStatistics | None
) -> LinkView:
    seen = [end for end in (sender, receiver) if end is not None]
    if not seen:
        return LinkView(link.name, link.origin, link.receiver, link.mode, "unknown", 0, None,
                        0.0, None, 0, 0)  # fmt: skip
    state = max((end.state for end in seen), key=lambda x: LINK_STATE_RANK.get(x, 9))
    ages = [e.oldest_unreceived_age_s for e in seen if e.oldest_unreceived_age_s is not None]
    flow = sender or receiver
    assert flow is not None
    errors = tuple(f"{e.side}: {e.last_error}" for e in seen if e.last_error)
    return LinkView(
        link.name, link.origin, link.receiver, link.mode, state,
        max(e.backlog_messages for e in seen), max(ages) if ages else None,
        flow.messages_per_s, flow.rtt_ms, flow.window_bytes,
        max(e.connects for e in seen), errors if state != "streaming" else (),
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class LinkSample(Record):
    """One look at one end of a link (`admin.history` takes one every few seconds)."""

    at_ms: int
    state: str
    backlog_messages: int  # owed: what the origin holds and the receiver does not
    lag_s: float | None  # age of the oldest owed message
    messages_per_s: float


@dataclass(frozen=True, slots=True)
class LinkSeries(Record):
    """One end's samples of one link, oldest first."""

    name: str
    origin: str
    receiver: str
    side: str
    samples: tuple[LinkSample, ...]


@dataclass(frozen=True, slots=True)
class LinkHistory(Record):
    """`GET /history/links` (this site's ends of its links) and `GET /cluster/history` (every
    link once, from its sender's site when that answers, else its receiver's): the link
    statistics over the last `window_s`, one sample every `interval_s`."""

    site: str
    interval_s: float
    window_s: float
    links: tuple[LinkSeries, ...]
    unreachable: tuple[str, ...] = ()  # sites whose history could not be read
