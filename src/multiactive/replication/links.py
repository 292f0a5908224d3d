"""What both ends of a link share: the handshake rules and the link's live record.

A link carries one origin's own streams to one receiver (L1). Whichever end dials (the origin
in `push` mode, the receiver in `pull` mode), the first frames are the same: the dialer says
HELLO, the dialed end checks it against the topology and answers HELLO(reply). The receiver's
journal heads for the origin's streams travel in the receiver's HELLO, and they are the only
cursor: the sender streams from head + 1.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from multiactive.errors import ProtocolError, UnknownSiteError
from multiactive.model.topology import LinkConfig, Topology
from multiactive.wire.protocol import Hello

LinkState = Literal["connecting", "streaming", "disconnected"]
Side = Literal["sender", "receiver"]


@dataclass(frozen=True, slots=True)
class LinkStatistics:
    name: str
    origin: str
    receiver: str
    mode: str
    side: Side
    state: LinkState
    peer_heads: dict[int, int]  # sender side: what the receiver acknowledged
    in_flight_bytes: int
    batches: int
    messages: int
    bytes: int
    connects: int
    last_frame_age_s: float | None
    last_error: str


@dataclass(slots=True)
class LinkMonitor:
    """The live record of one link at one end; sessions update it, `snapshot()` reads it."""

    link: LinkConfig
    side: Side
    state: LinkState = "disconnected"
    peer_heads: dict[int, int] = field(default_factory=dict)
    in_flight_bytes: int = 0
    batches: int = 0
    messages: int = 0
    bytes: int = 0
    connects: int = 0
    last_frame_s: float = 0.0
    last_error: str = ""

    def connected(self) -> None:
        self.state = "streaming"
        self.connects += 1
        self.in_flight_bytes = 0
        self.touch()

    def disconnected(self, reason: str) -> None:
        self.state = "disconnected"
        self.last_error = reason
        self.in_flight_bytes = 0

    def touch(self) -> None:
        self.last_frame_s = time.monotonic()

    def counted(self, batches: int, messages: int, size: int) -> None:
        self.batches += batches
        self.messages += messages
        self.bytes += size

    def snapshot(self) -> LinkStatistics:
        age = time.monotonic() - self.last_frame_s if self.last_frame_s else None
        return LinkStatistics(
            self.link.name,
            self.link.origin,
            self.link.receiver,
            self.link.mode,
            self.side,
            self.state,
            dict(self.peer_heads),
            self.in_flight_bytes,
            self.batches,
            self.messages,
            self.bytes,
            self.connects,
            age,
            self.last_error,
        )


def link_for_hello(topology: Topology, local: str, hello: Hello) -> LinkConfig:
    """The link a dialing peer's HELLO asks for, checked against the topology.

    `push`: the peer is the origin and this site the receiver; `pull`: this site is the
    origin and the peer the receiver. The link's mode in the topology must match.
    """
    if hello.cluster != topology.name:
        raise ProtocolError(
            f"peer {hello.site!r} belongs to cluster {hello.cluster!r}, this site to "
            f"{topology.name!r}"
        )
    if hello.site not in topology.site_names or hello.site == local:
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
