"""Failpoints: named deliberate faults read from MULTIACTIVE_FAILPOINTS, a testing aid."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from multiactive import failpoints
from multiactive.errors import ConfigError
from multiactive.journal import LocalGroup, MemoryJournal
from multiactive.model.topology import ReplicationSettings
from multiactive.replication.handlers import HandlerRegistry
from multiactive.replication.processor import Processor
from multiactive.state import MemoryState


@pytest.fixture
def switched_on(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """counter_applied_twice on in this process for one test (the cache is read once)."""
    monkeypatch.setenv(failpoints.ENV_VAR, failpoints.COUNTER_APPLIED_TWICE)
    failpoints.enabled.cache_clear()
    yield
    monkeypatch.delenv(failpoints.ENV_VAR)
    failpoints.enabled.cache_clear()


def test_a_list_of_known_names_parses_and_blanks_are_ignored() -> None:
    """Comma-separated names, spaces and empty items allowed."""
    assert failpoints.parse(" counter_applied_twice ,,") == {"counter_applied_twice"}
    assert failpoints.parse("") == frozenset()


def test_an_unknown_name_is_an_error_naming_the_known_ones() -> None:
    """A typo must not silently test nothing."""
    with pytest.raises(
        ConfigError, match=r"unknown failpoint 'counter_twice'.*counter_applied_twice"
    ):
        failpoints.parse("counter_twice")
    with pytest.raises(ConfigError, match="unknown failpoint 'nope'"):
        failpoints.active("nope")


def test_failpoints_are_off_unless_the_environment_names_them() -> None:
    """Without MULTIACTIVE_FAILPOINTS nothing misbehaves."""
    assert not failpoints.active(failpoints.COUNTER_APPLIED_TWICE)


async def _counter_after(rows: list[tuple[str, str, str, int, int, dict[str, str], bytes]]) -> int:
    journal, state = MemoryJournal("bj"), MemoryState()
    processor = Processor("bj", journal, state, HandlerRegistry(), ReplicationSettings())
    await processor.load()
    await journal.append_local([LocalGroup(0, rows, 0)])
    task = asyncio.create_task(processor.run())
    assert await processor.wait_caught_up(5.0)
    task.cancel()
    return await state.counter("n")


@pytest.mark.usefixtures("switched_on")
def test_counter_applied_twice_doubles_every_counter_add_in_the_processor() -> None:
    """With the failpoint on, counters grow by twice each delta, on the all-built-in path and on
    the path for batches mixed with user messages; other ops and watermarks are unchanged."""
    add = ("a", "counter.add", "n", 1, 0, {}, b"5")
    canary = ("c", "ma.canary", "x", 2, 0, {}, b"")
    assert asyncio.run(_counter_after([add])) == 10
    assert asyncio.run(_counter_after([add, canary])) == 10


def test_without_the_failpoint_a_counter_add_counts_once() -> None:
    """The same batches apply each delta once when the failpoint is off."""
    add = ("a", "counter.add", "n", 1, 0, {}, b"5")
    assert asyncio.run(_counter_after([add])) == 5
