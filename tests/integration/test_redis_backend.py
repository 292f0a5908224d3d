"""Sites whose journal and state are Redis (one redis-server per site, started by the cluster):
every operation type written at every site, a receiver SIGKILLed mid-stream, one state at the
end."""

from __future__ import annotations

import asyncio
import base64

from multiactive.client import Ack, Client
from multiactive.model.topology import Address

from .conftest import (
    ClusterFactory,
    assert_applied_exactly_once,
    assert_same_digest,
    publish,
    stream_heads,
    wait_for,
)

SITES = ("a", "b", "c")
BACKLOG = 40_000
WAVE = 2_000
PAYLOAD = b"x" * 1024
ROUNDS = 60  # per site and phase; each round writes every operation type


def mixed_writes(site: str, phase: str) -> list[tuple[str, str, bytes]]:
    """kv.set/kv.del on shared keys, one counter, and adds and removals in one shared set."""
    writes = []
    for i in range(ROUNDS):
        member = f"{site}-{phase}-{i}".encode()
        writes += [
            ("kv.set", f"k{i % 25}", member),
            ("counter.add", "hits", b"1"),
            ("zset.add", "timeline", member),
        ]
        if i % 4 == 3:
            writes += [
                ("kv.del", f"k{(i + 11) % 25}", b""),
                ("zset.rem", "timeline", f"{site}-{phase}-{i - 2}".encode()),
            ]
    return writes


async def _publish_everywhere(addresses: dict[str, Address], phase: str) -> list[Ack]:
    async def one(site: str) -> list[Ack]:
        async with Client(addresses[site]) as client:
            return await client.publish_many(mixed_writes(site, phase))

    results = await asyncio.gather(*(one(site) for site in addresses))
    return [ack for acks in results for ack in acks]


def publish_everywhere(addresses: dict[str, Address], phase: str) -> int:
    """Every site writes its mixed operations at once; the number acknowledged."""
    return len(asyncio.run(_publish_everywhere(addresses, phase)))


def test_redis_sites_converge_after_a_receiver_is_killed_mid_stream(
    make_cluster: ClusterFactory,
) -> None:
    """Three sites on Redis, with kv, counter and set writes at every site and one site
    SIGKILLed while it catches up, converge: equal digests, every message applied once, the
    counter equal to the number of counter.add writes, the same capped set everywhere."""
    cluster = make_cluster(SITES, backend="redis")
    cluster.start()
    addresses = {site: cluster.client_address(site) for site in SITES}
    acked = publish_everywhere(addresses, "before")
    cluster.wait_converged(60)

    def received_from_a() -> int:
        return sum(stream_heads(cluster, "c", "a").values())

    had = received_from_a()
    cluster.kill("c")
    for wave in range(0, BACKLOG, WAVE):  # waves: one local append stays below a frame
        publish(addresses["a"], WAVE, lambda i, wave=wave: f"bulk{wave + i}", PAYLOAD)
    cluster.restart("c")
    wait_for(lambda: received_from_a() > had, 30, "c to receive the backlog")
    seen = received_from_a()
    cluster.kill("c")
    assert seen < had + BACKLOG, f"kill was not mid-stream: c had all {seen} messages of a"

    cluster.restart("c")
    acked += publish_everywhere(addresses, "after")
    cluster.wait_converged(90)
    assert_applied_exactly_once(cluster)
    assert_same_digest(cluster)
    counter_writes = 2 * len(SITES) * ROUNDS
    sets = []
    for site in SITES:
        assert cluster.get(site, "/state/counter/hits")["value"] == counter_writes
        members = cluster.get(site, "/state/zset/timeline")["members"]
        sets.append([base64.b64decode(m["member"]) for m in members])
    assert sets[0]
    assert sets[0] == sets[1] == sets[2]
    assert acked == 2 * sum(len(mixed_writes(site, "x")) for site in SITES)
