"""Redis access at the boundary (`multiactive.redisdb`): whatever redis-py raises while a
server or cluster node comes and goes reaches the rest of the site as a StoreError."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from multiactive import aio
from multiactive.errors import StoreError, StoreUnavailable
from multiactive.redisdb import RedisDb

WRITERS = 16
CLOSES = 100


Runner = Callable[[Coroutine[Any, Any, Counter[str]]], Counter[str]]


@pytest.mark.parametrize("runner", [asyncio.run, aio.run], ids=["asyncio", "uvloop"])
def test_a_cluster_client_closed_under_commands_in_flight_fails_them_as_store_errors(
    redis_cluster_url: str, runner: Runner
) -> None:
    """redis-py closes every connection of a cluster client when a node answers CLUSTERDOWN,
    under commands that other tasks have in flight; those fail as StoreUnavailable (a
    connection lost), never with an exception from inside redis-py (AttributeError, or on
    uvloop RuntimeError, which ended the site)."""

    async def main() -> Counter[str]:
        db = await RedisDb.connect(redis_cluster_url, "redis_url")
        outcomes: Counter[str] = Counter()
        done = asyncio.Event()

        async def write(n: int) -> None:
            while not done.is_set():
                try:
                    await db.call("SET", f"k{n}:{outcomes.total() % 50}", "v")
                    outcomes["ok"] += 1
                except StoreUnavailable:
                    outcomes["unavailable"] += 1
                except StoreError:
                    outcomes["other StoreError"] += 1

        writers = [asyncio.create_task(write(n)) for n in range(WRITERS)]
        for _ in range(CLOSES):
            await asyncio.sleep(0.005)  # the writers' commands are in flight meanwhile
            await db.client.aclose()  # what redis-py does itself on CLUSTERDOWN
        done.set()
        await asyncio.gather(*writers)
        await db.close()
        return outcomes

    outcomes = runner(main())
    assert set(outcomes) <= {"ok", "unavailable"}, outcomes
    assert outcomes["unavailable"] > 0
    assert outcomes["ok"] > 0
