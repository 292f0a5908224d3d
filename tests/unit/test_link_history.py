"""The dashboard's link history: a bounded ring per link end, sampled on a clock, merged so
that each link appears once, from its sender when that site answers."""

from __future__ import annotations

import asyncio
import json

import pytest

from multiactive.admin.history import LinkHistoryRing, merge_histories, sample_forever
from multiactive.errors import StoreError
from multiactive.model.topology import LinkConfig
from multiactive.records import LinkHistory, LinkStatistics
from multiactive.replication.links import LinkMonitor
from multiactive.testing import FakeClock

AB, BA = LinkConfig("a", "b", "push"), LinkConfig("b", "a", "push")


def end(link: LinkConfig, side: str, owed: int = 0) -> LinkStatistics:
    monitor = LinkMonitor(link, "sender" if side == "sender" else "receiver", clock=FakeClock())
    monitor.origin_heads.update({0: owed})
    return monitor.snapshot()


def test_the_ring_keeps_one_window_of_samples_and_drops_the_oldest() -> None:
    ring = LinkHistoryRing(interval_s=5, window_s=20)
    for i in range(10):
        ring.record(1000 * i, [end(AB, "sender", owed=i)])
    (series,) = ring.answer("a").links
    assert ring.capacity == 4
    assert [s.at_ms for s in series.samples] == [6000, 7000, 8000, 9000]
    assert [s.backlog_messages for s in series.samples] == [6, 7, 8, 9]
    assert (series.name, series.side, series.origin, series.receiver) == (
        "a->b",
        "sender",
        "a",
        "b",
    )
    assert [s.at_ms for s in ring.answer("a", since_ms=8000).links[0].samples] == [8000, 9000]


def test_a_window_shorter_than_the_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        LinkHistoryRing(interval_s=10, window_s=5)


def test_the_history_survives_json() -> None:
    ring = LinkHistoryRing(interval_s=5, window_s=60)
    ring.record(5, [end(AB, "sender", owed=3), end(BA, "receiver")])
    answer = ring.answer("a")
    assert LinkHistory.from_json(json.loads(json.dumps(answer.to_json()))) == answer


def test_merge_takes_the_sender_end_and_falls_back_to_the_receiver() -> None:
    at_a, at_b = LinkHistoryRing(), LinkHistoryRing()
    at_a.record(1, [end(AB, "sender", owed=7), end(BA, "receiver")])
    at_b.record(2, [end(AB, "receiver", owed=1), end(BA, "sender", owed=4)])
    both = merge_histories("a", [AB, BA], {"a": at_a.answer("a"), "b": at_b.answer("b")}, 5, 3600)
    assert [(s.name, s.side, s.samples[0].backlog_messages) for s in both.links] == [
        ("a->b", "sender", 7), ("b->a", "sender", 4)
    ]  # fmt: skip
    only_a = merge_histories("a", [AB, BA], {"a": at_a.answer("a"), "b": None}, 5, 3600)
    assert [(s.name, s.side) for s in only_a.links] == [("a->b", "sender"), ("b->a", "receiver")]
    assert only_a.unreachable == ("b",)


def test_the_sampler_samples_every_interval_and_outlives_a_failed_look() -> None:
    clock = FakeClock()
    ring = LinkHistoryRing(interval_s=5, window_s=3600)
    looks = 0

    async def look() -> list[LinkStatistics]:
        nonlocal looks
        looks += 1
        if looks == 2:
            raise StoreError("journal restarting")
        return [end(AB, "sender", owed=looks)]

    async def run() -> None:
        task = asyncio.create_task(sample_forever(ring, clock, look))
        for _ in range(3):
            await clock.advance(5)
        task.cancel()

    asyncio.run(run())
    samples = ring.answer("a").links[0].samples
    assert [s.backlog_messages for s in samples] == [1, 3, 4]
    assert [s.at_ms - samples[0].at_ms for s in samples] == [0, 10_000, 15_000]
