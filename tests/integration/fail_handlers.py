"""Handlers for trace and dead-letter tests, loaded with `--handlers fail_handlers`.

- `test.flaky` fails while $MULTIACTIVE_TEST_OUT/broken or .../broken-<site> exists;
- `test.broken` fails every time unless $MULTIACTIVE_TEST_OUT/fixed exists;
each success writes the message key to the site's cache under `done:<key>`.
"""

from __future__ import annotations

import os
from pathlib import Path

from multiactive.replication.handlers import Delivery, HandlerRegistry
from multiactive.state import Entry


def _flag(name: str) -> bool:
    return (Path(os.environ["MULTIACTIVE_TEST_OUT"]) / name).exists()


async def _done(delivery: Delivery) -> None:
    m = delivery.message
    await delivery.cache.put([Entry(f"done:{m.key}", b"1", m.version, m.origin)])


async def flaky(delivery: Delivery) -> None:
    if _flag("broken") or _flag(f"broken-{delivery.site}"):
        raise RuntimeError(f"downstream unavailable for {delivery.message.key}")
    await _done(delivery)


async def broken(delivery: Delivery) -> None:
    if not _flag("fixed"):
        raise ValueError(f"cannot handle {delivery.message.key}")
    await _done(delivery)


def setup(registry: HandlerRegistry) -> None:
    registry.register("test.flaky", flaky)
    registry.register("test.broken", broken)
