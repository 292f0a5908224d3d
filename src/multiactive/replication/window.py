"""How much a link keeps in flight: about twice bandwidth x round-trip time, capped in bytes.

Pure arithmetic on explicit times, so tests can drive it without a clock. The sender reports
each frame it sends and each acknowledgement it gets; the controller keeps

- the minimum round-trip time seen recently (a frame's send time to the ACK covering it);
- the best delivery rate seen recently (bytes acknowledged per second, measured over windows
  of at least one round trip);

and sets the window to `2 x rate x min_rtt`, never below `floor` nor above `cap`. While the
window is what limits the rate, each round trip measures a higher rate and the window doubles
(as in TCP slow start); once the path's bandwidth is the limit, it settles at twice the
bandwidth-delay product, enough to keep the path full while ACKs are on their way.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

RECENT_S = 10.0  # how long a min-RTT or max-rate sample stays relevant
GAIN = 2.0


@dataclass(frozen=True, slots=True)
class WindowStatistics:
    window_bytes: int
    rtt_ms: float | None
    rate_bytes_per_s: float


class WindowController:
    __slots__ = (
        "_acked_total",
        "_cap",
        "_floor",
        "_interval_bytes",
        "_interval_start",
        "_rates",
        "_rtts",
        "window",
    )

    def __init__(self, floor: int, cap: int, initial: int | None = None) -> None:
        self._floor = floor
        self._cap = max(cap, floor)
        self.window = min(self._cap, max(floor, initial or floor))
        self._rtts: deque[tuple[float, float]] = deque()  # (time, rtt), increasing rtt
        self._rates: deque[tuple[float, float]] = deque()  # (time, rate), decreasing rate
        self._interval_start = -1.0
        self._interval_bytes = 0
        self._acked_total = 0

    def on_ack(self, now: float, acked_bytes: int, rtt_s: float | None) -> None:
        """Frames of `acked_bytes` in all were acknowledged; `rtt_s` from the oldest of them."""
        if rtt_s is not None and rtt_s >= 0:
            _push_min(self._rtts, now, rtt_s)
        if self._interval_start < 0:
            self._interval_start = now
        self._interval_bytes += acked_bytes
        self._acked_total += acked_bytes
        min_rtt = self.min_rtt(now)
        elapsed = now - self._interval_start
        if min_rtt is not None and elapsed >= max(min_rtt, 0.001):
            _push_max(self._rates, now, self._interval_bytes / elapsed)
            self._interval_start = now
            self._interval_bytes = 0
        self._resize(now)

    def idle(self, now: float) -> None:
        """Nothing was in flight: the next interval starts fresh (idle time is not slowness)."""
        self._interval_start = now
        self._interval_bytes = 0

    def min_rtt(self, now: float) -> float | None:
        _expire(self._rtts, now)
        return self._rtts[0][1] if self._rtts else None

    def max_rate(self, now: float) -> float:
        _expire(self._rates, now)
        return self._rates[0][1] if self._rates else 0.0

    def _resize(self, now: float) -> None:
        rtt = self.min_rtt(now)
        rate = self.max_rate(now)
        if rtt is None or rate == 0:
            return
        self.window = int(min(self._cap, max(self._floor, GAIN * rate * rtt)))

    def statistics(self, now: float) -> WindowStatistics:
        rtt = self.min_rtt(now)
        return WindowStatistics(
            self.window, None if rtt is None else round(rtt * 1000, 3), self.max_rate(now)
        )


def _expire(samples: deque[tuple[float, float]], now: float) -> None:
    while samples and now - samples[0][0] > RECENT_S:
        samples.popleft()


def _push_min(samples: deque[tuple[float, float]], now: float, value: float) -> None:
    """Monotonic deque: the front is the minimum of the recent samples."""
    while samples and samples[-1][1] >= value:
        samples.pop()
    samples.append((now, value))


def _push_max(samples: deque[tuple[float, float]], now: float, value: float) -> None:
    """Monotonic deque: the front is the maximum of the recent samples."""
    while samples and samples[-1][1] <= value:
        samples.pop()
    samples.append((now, value))
