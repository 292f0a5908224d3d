"""Automatic failover's rules: holistic detection (the watcher alone losing the primary decides
nothing), the detection period, the most advanced replica as the target, the anti-flap block."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from multiactive.db.auto import Detector, watch
from multiactive.db.decisions import Decision, DecisionLog
from multiactive.db.replication import ServerState
from multiactive.testing import FakeClock

DOWN = ServerState("bj", False, error="refused")
PRIMARY = ServerState("bj", True, gtid_binlog_state="0-1-100")


def replica(site: str, io: str, position: int) -> ServerState:
    return ServerState(
        site, True, read_only=True, replica_of="h:1", io_running=io,
        gtid_current_pos=f"0-1-{position}",
    )  # fmt: skip


def test_a_primary_that_answers_is_healthy() -> None:
    detector = Detector(detect_s=3, block_s=60)
    states = {"bj": PRIMARY, "gz": replica("gz", "Yes", 100)}
    assert detector.observe(states, 0.0).action == "healthy"


def test_a_replica_still_connected_to_the_primary_means_not_dead() -> None:
    detector = Detector(detect_s=3, block_s=60)
    states = {"bj": DOWN, "gz": replica("gz", "Yes", 100), "tel": replica("tel", "No", 99)}
    for now in (0.0, 10.0, 100.0):
        decision = detector.observe(states, now)
        assert decision.action == "healthy"
        assert "still replicate" in decision.reason


def test_lost_by_everyone_for_the_detection_period_fails_over_to_the_most_advanced() -> None:
    detector = Detector(detect_s=3, block_s=60)
    states = {
        "bj": DOWN,
        "gz": replica("gz", "Connecting", 98),
        "tel": replica("tel", "Connecting", 100),
    }
    assert detector.observe(states, 0.0).action == "suspect"
    assert detector.observe(states, 2.9).action == "suspect"
    decision = detector.observe(states, 3.0)
    assert decision.action == "fail_over"
    assert decision.target == "tel"
    detector.failed_over(3.5)
    # Lost again soon after: the anti-flap block holds; after it, a failover again.
    assert detector.observe(states, 4.0).action == "suspect"
    assert detector.observe(states, 7.0).action == "blocked"
    assert detector.observe(states, 63.5).action == "fail_over"


def test_a_primary_that_comes_back_resets_the_detection_period() -> None:
    detector = Detector(detect_s=3, block_s=60)
    lost = {"bj": DOWN, "gz": replica("gz", "Connecting", 100)}
    assert detector.observe(lost, 0.0).action == "suspect"
    assert detector.observe({"bj": PRIMARY, "gz": replica("gz", "Yes", 100)}, 2.0).action == (
        "healthy"
    )
    assert detector.observe(lost, 4.0).action == "suspect"
    assert detector.observe(lost, 6.9).action == "suspect"
    assert detector.observe(lost, 7.0).action == "fail_over"


def test_the_watcher_stamps_logs_and_records_each_changed_decision(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every decision that differs from the one before is stamped (time, watcher, acting)
    and handed to `record` (what posts it to the sites); a watcher without --auto does not
    fail over; a site's DecisionLog keeps the newest, bounded."""
    from multiactive.db.config import DatabaseSettings

    clock = FakeClock()
    looks = iter([{"bj": PRIMARY}] * 2 + [{"bj": DOWN, "gz": replica("gz", "No", 100)}] * 6)
    recorded: list[Decision] = []

    async def look() -> dict[str, ServerState]:
        return next(looks)

    async def record(decision: Decision) -> None:
        recorded.append(decision)

    async def announce(role: object) -> None:
        raise AssertionError("a watcher without --auto never fails over")

    async def main() -> None:
        settings = DatabaseSettings("writer", "bj", {}, "test.toml")
        task = asyncio.create_task(watch(
            settings, announce, Detector(detect_s=3, block_s=60), clock, period_s=1, rounds=8,
            record=record, watcher="host:7", look=look,
        ))  # fmt: skip
        for _ in range(8):
            await clock.advance(1)
        await task

    with caplog.at_level(logging.INFO, logger="multiactive"):
        asyncio.run(main())
    assert [(d.action, d.target) for d in recorded] == [
        ("healthy", None), ("suspect", None), ("fail_over", "gz")
    ]  # fmt: skip
    assert all(d.watcher == "host:7" and not d.acting for d in recorded)
    assert [d.at_ms - recorded[0].at_ms for d in recorded] == [0, 2000, 5000]
    logged = [r for r in caplog.records if r.getMessage().startswith("db_watch ")]
    assert [r.levelno for r in logged] == [logging.INFO, logging.WARNING, logging.WARNING]
    kept = DecisionLog(size=2)
    for d in recorded:
        kept.add(d)
    assert [d.action for d in kept.newest()] == ["fail_over", "suspect"]
    assert Decision.from_json(json.loads(json.dumps(recorded[-1].to_json()))) == recorded[-1]
