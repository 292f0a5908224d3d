"""Helpers for testing code built on multiactive: a clock that tests move by hand.

    clock = FakeClock()
    task = asyncio.create_task(component.run())   # sleeps on `clock`
    await clock.advance(5.0)                      # its 5 s timers fire now, in order

Nothing in the product imports this package (a test in `tests/unit/test_layers.py` checks).
"""

from multiactive.testing.clock import FakeClock

__all__ = ["FakeClock"]
