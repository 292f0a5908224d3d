"""A paced write workload at several sites at once, with conflicting keys.

Each site gets its own `Client`; every tick each site publishes its share of `rate`, drawn
from one shared key space so that sites write the same keys concurrently (the conflicts that
last-writer-wins must settle the same way everywhere). Acknowledgements are counted per site.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from multiactive.client import Client
from multiactive.errors import MultiactiveError
from multiactive.model.topology import Address

TICK_S = 0.01
MAX_IN_FLIGHT_PER_SITE = 20_000
PUBLISH_DEADLINE_S = (
    10.0  # a write unanswered this long counts as failed (the client retries it until then)
)


@dataclass
class SiteCounts:
    sent: int = 0
    acked: int = 0
    failed: int = 0
    last_error: str = ""


@dataclass
class Workload:
    addresses: Mapping[str, Address]
    rate: float  # messages per second, all sites together
    keys: int = 1000
    delete_share: float = 0.1
    payload_bytes: int = 100
    seed: int = 1
    counts: dict[str, SiteCounts] = field(default_factory=dict)
    paused: set[str] = field(default_factory=set)

    async def run(self, duration_s: float) -> None:
        """Publish for `duration_s`, then wait for the answers still in flight."""
        self.counts = {site: SiteCounts() for site in self.addresses}
        await asyncio.gather(*(self._site(site, duration_s) for site in self.addresses))

    @property
    def acked(self) -> int:
        return sum(c.acked for c in self.counts.values())

    async def _site(self, site: str, duration_s: float) -> None:
        rng = random.Random(f"{self.seed}:{site}")
        counts = self.counts[site]
        share = self.rate / len(self.addresses)
        pending: set[asyncio.Task[None]] = set()
        client: Client | None = None
        start = time.monotonic()
        due = 0.0
        while (elapsed := time.monotonic() - start) < duration_s:
            due += share * TICK_S
            burst, due = int(due), due - int(due)
            if site in self.paused or len(pending) > MAX_IN_FLIGHT_PER_SITE:
                counts.failed += burst if site in self.paused else 0
            else:
                client = await self._connected(site, client, counts)
                if client is not None:
                    for _ in range(burst):
                        task = asyncio.create_task(self._one(client, rng, counts))
                        pending.add(task)
                        task.add_done_callback(pending.discard)
            await asyncio.sleep(max(0.0, start + elapsed + TICK_S - time.monotonic()))
        if pending:
            await asyncio.wait(pending)
        if client is not None:
            await client.close()

    async def _connected(
        self, site: str, client: Client | None, counts: SiteCounts
    ) -> Client | None:
        if client is not None and client.connected:
            return client
        if client is not None:
            await client.close()
        fresh = Client(self.addresses[site], connect_timeout_s=1.0, deadline_s=PUBLISH_DEADLINE_S)
        try:
            await fresh.connect()
        except MultiactiveError as exc:
            counts.last_error = str(exc)
            return None
        return fresh

    async def _one(self, client: Client, rng: random.Random, counts: SiteCounts) -> None:
        key = f"user:{rng.randrange(self.keys)}"
        counts.sent += 1
        try:
            if rng.random() < self.delete_share:
                await client.publish("kv.del", key)
            else:
                await client.publish("kv.set", key, rng.randbytes(self.payload_bytes))
        except MultiactiveError as exc:
            counts.failed += 1
            counts.last_error = str(exc)
        else:
            counts.acked += 1
