"""Handlers for the handler-isolation test, loaded with `--handlers hang_handlers`:
`test.hang` never returns (it waits on an event nothing sets)."""

from __future__ import annotations

import asyncio

from multiactive.replication.handlers import Delivery, HandlerRegistry


async def hang(delivery: Delivery) -> None:
    await asyncio.Event().wait()


def setup(registry: HandlerRegistry) -> None:
    registry.register("test.hang", hang)
