"""The reconciler's decisions, as pure functions: what is behind, what to re-drive, whom to ask."""

from __future__ import annotations

from multiactive.model.message import StreamId
from multiactive.records import StreamLag
from multiactive.replication.reconcile_plan import (
    RedriveHistory,
    letter_key,
    plan_redrives,
    redriven,
    refetch_sources,
    streams_behind,
)
from multiactive.state.base import DeadLetter


def lag(origin: str, partition: int, behind: int) -> StreamLag:
    return StreamLag(origin, partition, 10, 10 - behind, 10 - behind, behind, 1.5 if behind else 0)


def letter(seq: int) -> DeadLetter:
    return DeadLetter("east", 0, seq, f"id{seq}", "user.op", "k", "boom", 5, 1000)


def test_only_streams_with_lag_are_behind_and_cut_or_stalled_links_are_problems() -> None:
    states = {"east": "cut", "north": "streaming"}
    behind, problems = streams_behind(
        "west", [lag("east", 0, 3), lag("east", 1, 0), lag("north", 0, 2), lag("west", 0, 1)],
        states.get,
    )  # fmt: skip
    assert [(b.origin, b.partition, b.link_state) for b in behind] == [
        ("east", 0, "cut"), ("north", 0, "streaming"), ("west", 0, "local"),
    ]  # fmt: skip
    assert problems == ["east/0: 3 messages behind; link east->west is cut"]


def test_a_hole_is_asked_of_its_origin_first_then_of_every_other_site() -> None:
    sources = refetch_sources(StreamId("north", 2), ["east", "north", "west"], "west")
    assert sources == ["north", "east"]


def test_dead_letters_are_redriven_with_doubling_backoff_then_given_up() -> None:
    history: dict[tuple[str, int, int], RedriveHistory] = {}
    letters = [letter(1)]
    interval, now = 60.0, 0.0
    due_times = []
    for _ in range(6):
        plan = plan_redrives(letters, history, now, max_attempts=3)
        if plan.due:
            due_times.append(now)
            redriven(history[letter_key(letters[0])], now, interval)
        if plan.given_up:
            assert plan.problems[0].startswith("dead letter id1 (user.op 'k') still fails after 3")
            break
        now = history[letter_key(letters[0])].next_s
    assert due_times == [0.0, 120.0, 360.0]  # waits of 2, 4 intervals
    assert history[letter_key(letters[0])].gave_up
    later = plan_redrives(letters, history, now + 1e6, max_attempts=3)
    assert later.due == []
    assert later.problems[0].startswith("dead letter id1")  # listed while it stays parked
    assert plan_redrives([], history, now + 2e6, max_attempts=3).problems == []  # replayed


def test_a_letter_whose_backoff_has_not_passed_waits() -> None:
    history = {letter_key(letter(1)): RedriveHistory(attempts=1, next_s=100.0)}
    assert plan_redrives([letter(1), letter(2)], history, 99.0, 10).due == [letter(2)]
