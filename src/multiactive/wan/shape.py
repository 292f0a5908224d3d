"""What a long-haul link does to bytes, as pure arithmetic (no I/O, no clock of its own).

A link direction is modelled as a serializing wire of `bandwidth` bytes per second followed by
a propagation delay of `delay_ms` plus jitter: a chunk that arrives at time t leaves the wire
when the wire is free and has sent it, and is delivered `delay + jitter` later. Delivery times
never go backwards, so jitter never reorders a TCP byte stream.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from multiactive.errors import ConfigError


@dataclass(frozen=True, slots=True)
class LinkShape:
    delay_ms: float = 0.0  # one way
    jitter_ms: float = 0.0  # delivery time varies uniformly within +- jitter_ms
    bandwidth_mbps: float = 0.0  # megabits per second; 0 means unlimited

    def __post_init__(self) -> None:
        if self.delay_ms < 0 or self.jitter_ms < 0 or self.bandwidth_mbps < 0:
            raise ConfigError(
                f"link shape values must be >= 0, got delay_ms={self.delay_ms}, "
                f"jitter_ms={self.jitter_ms}, bandwidth_mbps={self.bandwidth_mbps}"
            )

    @property
    def bytes_per_s(self) -> float:
        return self.bandwidth_mbps * 1_000_000 / 8

    @property
    def passthrough(self) -> bool:
        """Nothing to emulate: chunks can be forwarded the moment they arrive."""
        return self.delay_ms == 0 and self.jitter_ms == 0 and self.bandwidth_mbps == 0


class Pacer:
    """Delivery times for the chunks of one direction of one connection."""

    __slots__ = ("_last_delivery", "_random", "_wire_free", "shape")

    def __init__(self, shape: LinkShape, rng: random.Random | None = None) -> None:
        self.shape = shape
        self._random = rng or random.Random()
        self._wire_free = 0.0
        self._last_delivery = 0.0

    def delivery_time(self, now: float, size: int) -> float:
        """When a chunk of `size` bytes arriving at `now` (seconds) is delivered."""
        shape = self.shape
        sent = max(now, self._wire_free)
        if shape.bandwidth_mbps:
            sent += size / shape.bytes_per_s
        self._wire_free = sent
        delay = shape.delay_ms
        if shape.jitter_ms:
            delay = max(0.0, delay + self._random.uniform(-shape.jitter_ms, shape.jitter_ms))
        delivery = max(sent + delay / 1000, self._last_delivery)
        self._last_delivery = delivery
        return delivery
