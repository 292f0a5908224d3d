"""What both ends of a link share: the handshake rules and the link's live record.

A link carries one origin's own streams to one receiver (L1). Whichever end dials (the origin
in `push` mode, the receiver in `pull` mode), the first frames are the same: the dialer says
HELLO, the dialed end checks it against the topology and answers HELLO(reply). The receiver's
journal heads for the origin's streams travel in the receiver's HELLO, and they are the only
cursor: the sender streams from head + 1.

Link states, as both ends report them:

    connecting  no session yet, or the first attempt is under way
    streaming   a session is up and the receiver is keeping up (or nothing is owed)
    stalled     a session is up, the origin has more for the receiver, and nothing has been
                acknowledged (sender) or stored (receiver) for `stall_after_s` (L3)
    cut         the session was lost or a connection attempt failed; retrying
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from multiactive.clock import SYSTEM_CLOCK, Clock
from multiactive.errors import ConfigError, ProtocolError, UnknownSiteError
from multiactive.model.record import Record
from multiactive.model.topology import LinkConfig, Topology
from multiactive.wire.protocol import Hello

LinkState = Literal["connecting", "streaming", "stalled", "cut"]
Side = Literal["sender", "receiver"]
RATE_WINDOW_S = 5.0


@dataclass(frozen=True, slots=True)
class LinkStatistics(Record):
    name: str
    origin: str
    receiver: str
    mode: str
    side: Side
    state: LinkState
    origin_heads: dict[int, int]  # what the origin holds, per partition
    receiver_heads: dict[int, int]  # what the receiver holds durably, per partition
    backlog_messages: int  # origin heads minus receiver heads
    oldest_unreceived_age_s: float | None  # age of the oldest message the receiver lacks
    in_flight_bytes: int
    window_bytes: int
    rtt_ms: float | None
    messages_per_s: float
    bytes_per_s: float
    batches: int
    messages: int
    bytes: int
    connects: int
    since_progress_s: float | None
    last_frame_age_s: float | None
    last_error: str


class RateMeter:
    """Events per second over the last few seconds, from one-second buckets."""

    __slots__ = ("_buckets",)

    def __init__(self) -> None:
        self._buckets: deque[list[float]] = deque()  # [second, count]

    def add(self, count: float, now: float) -> None:
        second = float(int(now))
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += count
        else:
            self._buckets.append([second, count])
        while self._buckets and now - self._buckets[0][0] > RATE_WINDOW_S + 1:
            self._buckets.popleft()

    def rate(self, now: float) -> float:
        start = now - RATE_WINDOW_S
        total = sum(count for second, count in self._buckets if second >= start)
        return total / RATE_WINDOW_S


@dataclass(slots=True)
class LinkMonitor:
    """The live record of one link at one end; sessions update it, `snapshot()` reads it.

    Updates take the time they happen at (`now`, monotonic seconds), so the session state
    machines that make them stay free of clocks; reads use `clock`.
    """

    link: LinkConfig
    side: Side
    stall_after_s: float = 5.0
    clock: Clock = SYSTEM_CLOCK
    session: bool = False
    failed: bool = False
    origin_heads: dict[int, int] = field(default_factory=dict)
    receiver_heads: dict[int, int] = field(default_factory=dict)
    oldest_unreceived_ms: int | None = None
    in_flight_bytes: int = 0
    window_bytes: int = 0
    rtt_ms: float | None = None
    batches: int = 0
    messages: int = 0
    bytes: int = 0
    connects: int = 0
    last_frame_s: float = 0.0
    last_progress_s: float = 0.0
    last_error: str = ""
    _messages_rate: RateMeter = field(default_factory=RateMeter)
    _bytes_rate: RateMeter = field(default_factory=RateMeter)

    def connected(self, now: float) -> None:
        self.session = True
        self.failed = False
        self.connects += 1
        self.in_flight_bytes = 0
        self.last_frame_s = self.last_progress_s = now

    def disconnected(self, reason: str) -> None:
        self.session = False
        self.failed = True
        self.last_error = reason
        self.in_flight_bytes = 0

    def touch(self, now: float) -> None:
        self.last_frame_s = now

    def progressed(self, now: float) -> None:
        self.last_progress_s = now

    def counted(self, batches: int, messages: int, size: int, now: float) -> None:
        self.batches += batches
        self.messages += messages
        self.bytes += size
        self._messages_rate.add(messages, now)
        self._bytes_rate.add(size, now)

    @property
    def backlog(self) -> int:
        return sum(
            max(0, head - self.receiver_heads.get(p, 0)) for p, head in self.origin_heads.items()
        )

    def state_at(self, now: float) -> LinkState:
        if not self.session:
            return "cut" if self.failed else "connecting"
        stale = now - self.last_progress_s > self.stall_after_s
        return "stalled" if self.backlog and stale else "streaming"

    @property
    def state(self) -> LinkState:
        return self.state_at(self.clock.monotonic())

    def snapshot(self) -> LinkStatistics:
        now, now_ms = self.clock.monotonic(), self.clock.wall_ms()
        backlog = self.backlog
        oldest = None
        if backlog and self.oldest_unreceived_ms is not None:
            oldest = max(0.0, (now_ms - self.oldest_unreceived_ms) / 1000)
        return LinkStatistics(
            name=self.link.name,
            origin=self.link.origin,
            receiver=self.link.receiver,
            mode=self.link.mode,
            side=self.side,
            state=self.state_at(now),
            origin_heads=dict(self.origin_heads),
            receiver_heads=dict(self.receiver_heads),
            backlog_messages=backlog,
            oldest_unreceived_age_s=oldest,
            in_flight_bytes=self.in_flight_bytes,
            window_bytes=self.window_bytes,
            rtt_ms=self.rtt_ms,
            messages_per_s=round(self._messages_rate.rate(now), 1),
            bytes_per_s=round(self._bytes_rate.rate(now), 1),
            batches=self.batches,
            messages=self.messages,
            bytes=self.bytes,
            connects=self.connects,
            since_progress_s=now - self.last_progress_s if self.session else None,
            last_frame_age_s=now - self.last_frame_s if self.last_frame_s else None,
            last_error=self.last_error,
        )


def check_agreement(topology: Topology, hello: Hello) -> None:
    """Refuse a peer whose topology differs in the cluster name, the partitions or the sites,
    naming each difference (a peer that does not say, 0 or (), is not compared)."""
    if hello.cluster != topology.name:
        raise ProtocolError(
            f"peer {hello.site!r} belongs to cluster {hello.cluster!r}, this site to "
            f"{topology.name!r} ([cluster] name in {topology.source})"
        )
    differences = []
    if hello.partitions and hello.partitions != topology.partitions:
        differences.append(
            f"[cluster] partitions = {hello.partitions} there, {topology.partitions} here"
        )
    ours = tuple(sorted(topology.site_names))
    if hello.sites and tuple(sorted(hello.sites)) != ours:
        differences.append(
            f"[[sites]] {', '.join(sorted(hello.sites))} there, {', '.join(ours)} here"
        )
    if differences:
        raise ConfigError(
            f"peer {hello.site!r} runs on a different topology than {topology.source}: "
            f"{'; '.join(differences)}; every site must use the same file"
        )


def link_for_hello(topology: Topology, local: str, hello: Hello) -> LinkConfig:
    """The link a dialing peer's HELLO asks for, checked against the topology.

    `push`: the peer is the origin and this site the receiver; `pull`: this site is the
    origin and the peer the receiver. The link's mode in the topology must match.
    """
    check_agreement(topology, hello)
    if hello.site == local:
        raise ConfigError(
            f"a peer says it is this site ({local!r}): two sites share an address, or this "
            f"site dials itself; check listen, admin and [[links]] address in "
            f"{topology.source} (multiactive validate)"
        )
    if hello.site not in topology.site_names:
        raise UnknownSiteError(
            f"unknown site {hello.site!r} in HELLO; {topology.source} defines: "
            f"{', '.join(n for n in topology.site_names if n != local)}"
        )
    origin, receiver = (hello.site, local) if hello.role == "push" else (local, hello.site)
    link = topology.link(origin, receiver)
    if link.mode != hello.role:
        raise ProtocolError(
            f"link {link.name} is {link.mode!r} in {topology.source}, but {hello.site} "
            f"connected in {hello.role!r} mode; are both sites on the same topology file?"
        )
    return link
