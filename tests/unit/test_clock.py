"""`FakeClock` moves only when told, and wakes sleepers at their deadlines, in order."""

from __future__ import annotations

import asyncio

from multiactive.testing import FakeClock


def test_sleepers_wake_in_deadline_order_when_time_is_advanced() -> None:
    async def main() -> None:
        clock = FakeClock(start_s=0.0)
        woke: list[tuple[str, float]] = []

        async def sleeper(name: str, seconds: float) -> None:
            await clock.sleep(seconds)
            woke.append((name, clock.monotonic()))

        tasks = [asyncio.create_task(sleeper(n, s)) for n, s in (("b", 2.0), ("a", 1.0))]
        await clock.advance(0.5)
        assert woke == []
        assert clock.sleepers == 2
        await clock.advance(2.0)
        assert woke == [("a", 1.0), ("b", 2.0)]
        assert clock.monotonic() == 2.5
        assert clock.wall_ms() - FakeClock(start_s=0.0).wall_ms() == 2500
        await asyncio.gather(*tasks)

    asyncio.run(main())
