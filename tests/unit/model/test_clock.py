"""The hybrid logical clock: versions that never go backwards and follow observed writes."""

from __future__ import annotations

from multiactive.model.clock import LOGICAL_BITS, HybridClock, version_ms


class FakeWall:
    """A wall clock the test sets by hand."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def test_tick_starts_at_the_wall_clock_millisecond() -> None:
    """The first version is the wall millisecond shifted above the logical bits."""
    clock = HybridClock(FakeWall(1_000))
    version = clock.tick()
    assert version == 1_000 << LOGICAL_BITS
    assert version_ms(version) == 1_000
    assert clock.last == version


def test_tick_counts_up_while_the_wall_clock_is_frozen() -> None:
    """With the wall clock standing still, each tick is exactly one more than the last."""
    clock = HybridClock(FakeWall(1_000))
    versions = [clock.tick() for _ in range(100)]
    assert versions == list(range(versions[0], versions[0] + 100))
    assert {version_ms(v) for v in versions} == {1_000}


def test_tick_never_goes_back_when_the_wall_clock_does() -> None:
    """A wall clock stepping backwards does not make versions go backwards."""
    wall = FakeWall(5_000)
    clock = HybridClock(wall)
    first = clock.tick()
    wall.ms = 4_000
    assert clock.tick() == first + 1


def test_tick_follows_the_wall_clock_forward() -> None:
    """When the wall clock moves on, the version jumps to the new millisecond."""
    wall = FakeWall(1_000)
    clock = HybridClock(wall)
    clock.tick()
    clock.tick()
    wall.ms = 2_000
    assert clock.tick() == 2_000 << LOGICAL_BITS


def test_tick_reserves_a_run_of_versions() -> None:
    """tick(count) returns the first of count versions; the next tick comes after them all."""
    clock = HybridClock(FakeWall(1_000))
    first = clock.tick(5)
    assert clock.last == first + 4
    assert clock.tick() == first + 5


def test_observe_moves_the_clock_past_a_remote_version() -> None:
    """After observing a version from the future, the next tick is greater than it."""
    clock = HybridClock(FakeWall(1_000))
    clock.tick()
    remote = (9_000 << LOGICAL_BITS) + 7
    clock.observe(remote)
    assert clock.last == remote
    assert clock.tick() == remote + 1


def test_observe_ignores_an_older_version() -> None:
    """Observing a version behind the clock does not move it back."""
    clock = HybridClock(FakeWall(1_000))
    clock.tick(10)
    last = clock.last
    clock.observe(5)
    assert clock.last == last
    assert clock.tick() == last + 1
