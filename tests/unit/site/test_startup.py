"""Starting on storage that is not there yet (`site.startup.when_available`): a store that is
unavailable is tried again with backoff until a deadline; any other error ends the start."""

from __future__ import annotations

import asyncio

import pytest

from multiactive.aio import STORE_RETRY_MAX_S as RETRY_MAX_S
from multiactive.errors import StoreError, StoreUnavailable
from multiactive.site.startup import when_available
from multiactive.testing import FakeClock


class Flaky:
    """A step that fails with `error` its first `failures` tries, then answers "open"."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.tries = 0
        self.undone = 0

    async def step(self) -> str:
        self.tries += 1
        if self.tries <= self.failures:
            raise self.error
        return "open"

    async def undo(self) -> None:
        self.undone += 1


def start(flaky: Flaky, clock: FakeClock, wait_s: float = 30.0) -> asyncio.Task[str]:
    return asyncio.create_task(
        when_available(
            flaky.step, site="bj", what="journal", undo=flaky.undo, clock=clock, wait_s=wait_s
        )
    )


def test_an_unavailable_store_is_tried_again_until_it_answers() -> None:
    """StoreUnavailable three times: each failed try is undone, the fourth try's answer is
    returned once time has moved past the backoffs."""

    async def main() -> None:
        clock = FakeClock()
        flaky = Flaky(3, StoreUnavailable("Redis at redis://x (redis_url) failed"))
        task = start(flaky, clock)
        for _ in range(3):
            await clock.advance(RETRY_MAX_S)
        assert await task == "open"
        assert (flaky.tries, flaky.undone) == (4, 3)

    asyncio.run(main())


def test_a_store_still_unavailable_at_the_deadline_ends_the_start() -> None:
    """Past `wait_s` the StoreUnavailable is raised: a supervisor restarts the site."""

    async def main() -> None:
        clock = FakeClock()
        flaky = Flaky(1000, StoreUnavailable("cannot connect to Redis"))
        task = start(flaky, clock, wait_s=10.0)
        await clock.advance(10.0 + RETRY_MAX_S)
        with pytest.raises(StoreUnavailable, match="cannot connect"):
            await task
        assert 5 <= flaky.tries < 1000

    asyncio.run(main())


def test_any_other_store_error_ends_the_start_at_once() -> None:
    """A store that answers with bad data (StoreError, not StoreUnavailable) is not waited
    for."""

    async def main() -> None:
        clock = FakeClock()
        flaky = Flaky(1, StoreError("holds the data of site 'gz'"))
        with pytest.raises(StoreError, match="site 'gz'"):
            await start(flaky, clock)
        assert (flaky.tries, flaky.undone) == (1, 0)

    asyncio.run(main())
