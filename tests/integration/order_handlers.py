"""Handlers loaded into site processes by `--handlers order_handlers` in the order test.

Each site appends one line per applied `test.append` message to
$MULTIACTIVE_TEST_OUT/<site>.log: "origin partition seq id".
"""

from __future__ import annotations

import os
from pathlib import Path

from multiactive.replication.handlers import Delivery, HandlerRegistry


async def record(delivery: Delivery) -> None:
    out = Path(os.environ["MULTIACTIVE_TEST_OUT"]) / f"{delivery.site}.log"
    m = delivery.message
    with out.open("a") as log:
        log.write(f"{m.origin} {m.partition} {m.seq} {m.id}\n")


def setup(registry: HandlerRegistry) -> None:
    registry.register("test.append", record)
