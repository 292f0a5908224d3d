"""A bounded in-process history of this site's link statistics, for the dashboard's charts.

Every `interval_s` the sampler takes one `LinkSample` of each link end at this site (the
figures `/status` reports: state, owed messages, age of the oldest owed one, messages/s) into
a ring per link end holding `window_s` of them (an hour at 5 s: 720 samples a link end,
about 100 KB for a 3-site cluster). Nothing is stored on disk: a restarted site starts a new
hour. `/history/links` serves the ring as a `LinkHistory` record; `/cluster/history` merges the
sites' rings, one series per link, taken from its sender (whose figures stay true while the
link is cut) when that site answers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence

from multiactive.clock import Clock
from multiactive.errors import MultiactiveError
from multiactive.model.topology import LinkConfig
from multiactive.records import LinkHistory, LinkSample, LinkSeries, LinkStatistics

DEFAULT_INTERVAL_S = 5.0
DEFAULT_WINDOW_S = 3600.0


class LinkHistoryRing:
    """Per link end, the last `window_s / interval_s` samples (oldest dropped first)."""

    def __init__(
        self, interval_s: float = DEFAULT_INTERVAL_S, window_s: float = DEFAULT_WINDOW_S
    ) -> None:
        if interval_s <= 0 or window_s < interval_s:
            raise ValueError(
                f"history interval_s must be > 0 and <= window_s, got {interval_s}, {window_s}"
            )
        self.interval_s, self.window_s = interval_s, window_s
        self.capacity = int(window_s / interval_s)
        self._rings: dict[tuple[str, str], deque[LinkSample]] = {}
        self._ends: dict[tuple[str, str], LinkStatistics] = {}

    def record(self, at_ms: int, ends: Iterable[LinkStatistics]) -> None:
        for end in ends:
            key = (end.name, end.side)
            ring = self._rings.get(key)
            if ring is None:
                ring = self._rings[key] = deque(maxlen=self.capacity)
            self._ends[key] = end
            ring.append(
                LinkSample(at_ms, end.state, end.backlog_messages, end.oldest_unreceived_age_s,
                           round(end.messages_per_s, 1))
            )  # fmt: skip

    def answer(self, site: str, since_ms: int = 0) -> LinkHistory:
        series = tuple(
            LinkSeries(end.name, end.origin, end.receiver, end.side,
                       tuple(s for s in self._rings[key] if s.at_ms >= since_ms))
            for key, end in sorted(self._ends.items())
        )  # fmt: skip
        return LinkHistory(site, self.interval_s, self.window_s, series)


def merge_histories(
    site: str,
    links: Sequence[LinkConfig],
    answers: dict[str, LinkHistory | None],
    interval_s: float,
    window_s: float,
) -> LinkHistory:
    """Every configured link once: its sender's series when the origin site answered, else
    its receiver's (the same preference as `records.link_views` for owed counts)."""
    by_end = {
        (series.name, series.side): series
        for answer in answers.values()
        if answer is not None
        for series in answer.links
    }
    merged = []
    for link in links:
        found = by_end.get((link.name, "sender")) or by_end.get((link.name, "receiver"))
        merged.append(found or LinkSeries(link.name, link.origin, link.receiver, "none", ()))
    unreachable = tuple(name for name, answer in answers.items() if answer is None)
    return LinkHistory(site, interval_s, window_s, tuple(merged), unreachable)


async def sample_forever(
    ring: LinkHistoryRing,
    clock: Clock,
    look: Callable[[], Awaitable[Iterable[LinkStatistics]]],
) -> None:
    """Sample now and then every `ring.interval_s` until cancelled; a failed look (a backend
    restarting) skips one sample rather than ending the history."""
    while True:
        with contextlib.suppress(MultiactiveError):
            ring.record(clock.wall_ms(), await look())
        await clock.sleep(ring.interval_s)


def start_sampler(
    ring: LinkHistoryRing, clock: Clock, look: Callable[[], Awaitable[Iterable[LinkStatistics]]]
) -> asyncio.Task[None]:
    return asyncio.create_task(sample_forever(ring, clock, look), name="link-history")
