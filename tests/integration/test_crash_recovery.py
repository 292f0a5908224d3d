"""Site processes killed with SIGKILL or down for a while: nothing lost, nothing applied twice."""

from __future__ import annotations

import asyncio

import pytest

from multiactive.client import Ack, Client
from multiactive.errors import ConnectionLost, OutcomeUnknown
from multiactive.model.topology import Address

from .conftest import (
    MODES,
    ClusterFactory,
    assert_applied_exactly_once,
    assert_same_digest,
    publish,
    stream_heads,
    wait_for,
)

BACKLOG = 60_000
PAYLOAD = b"x" * 1024


@pytest.mark.parametrize("mode", MODES)
def test_receiver_killed_mid_stream_gets_everything_once(
    make_cluster: ClusterFactory, mode: str
) -> None:
    """A receiver SIGKILLed while catching up resumes from its durable heads: all arrive, once."""
    cluster = make_cluster(default_mode=mode)
    cluster.start(["a"])
    publish(cluster.client_address("a"), BACKLOG, lambda i: f"k{i}", PAYLOAD)
    cluster.start(["b"])

    def received() -> int:
        return sum(stream_heads(cluster, "b", "a").values())

    wait_for(lambda: received() > 0, 30, "b to start receiving")
    seen = received()
    cluster.kill("b")
    assert 0 < seen < BACKLOG, f"kill was not mid-stream: b had {seen} of {BACKLOG}"

    cluster.restart("b")
    cluster.wait_converged(60)
    assert sum(stream_heads(cluster, "b", "a").values()) == BACKLOG
    assert_applied_exactly_once(cluster)
    assert_same_digest(cluster)


async def _publish_until_killed(
    address: Address, started: asyncio.Event
) -> tuple[list[tuple[str, Ack]], int]:
    """Publish in waves until the site dies; return (key, ack) pairs and the failure count."""
    acks: list[tuple[str, Ack]] = []
    failed = 0
    async with Client(address, deadline_s=2.0) as client:  # the site stays down: fail soon
        wave = 0
        while True:
            keys = [f"w{wave}-{i}" for i in range(500)]
            results = await asyncio.gather(
                *(client.publish("kv.set", key, b"v") for key in keys),
                return_exceptions=True,
            )
            for key, result in zip(keys, results, strict=True):
                if isinstance(result, Ack):
                    acks.append((key, result))
                else:
                    assert isinstance(result, ConnectionLost | OutcomeUnknown), result
                    failed += 1
            if failed:
                return acks, failed
            wave += 1
            if wave == 4:
                started.set()


@pytest.mark.parametrize("mode", MODES)
def test_origin_killed_after_acks_loses_no_acknowledged_write(
    make_cluster: ClusterFactory, mode: str
) -> None:
    """Every write acknowledged before the origin's SIGKILL reaches every site after restart;
    publishes the site never answered are reported as failed, not accepted."""
    cluster = make_cluster(default_mode=mode)
    cluster.start()

    async def scenario() -> tuple[list[tuple[str, Ack]], int]:
        started = asyncio.Event()
        publisher = asyncio.create_task(_publish_until_killed(cluster.client_address("a"), started))
        await started.wait()
        await asyncio.to_thread(cluster.kill, "a")
        return await asyncio.wait_for(publisher, 30)

    acks, failed = asyncio.run(scenario())
    assert acks, "some publishes must be acknowledged before the kill"
    assert failed, "the kill must land while publishes are in flight"

    cluster.restart("a")
    cluster.wait_converged(60)
    for site in cluster.sites:
        keys = {entry["key"] for entry in cluster.get(site, "/state/entries?limit=1000000")}
        missing = [ack.id for key, ack in acks if key not in keys]
        assert not missing, f"{site} lacks {len(missing)} acknowledged writes"
    assert_applied_exactly_once(cluster)
    assert_same_digest(cluster)

    async def republish_first() -> Ack:
        async with Client(cluster.client_address("a")) as client:
            key, first = acks[0]
            return await client.publish("kv.set", key, b"v", id=first.id)

    again = asyncio.run(republish_first())
    first = acks[0][1]
    assert again.duplicate
    assert (again.partition, again.seq) == (first.partition, first.seq)


@pytest.mark.parametrize("mode", MODES)
def test_origin_keeps_accepting_while_a_peer_is_down(
    make_cluster: ClusterFactory, mode: str
) -> None:
    """With one receiver down, the others go on accepting writes; it catches up on return."""
    cluster = make_cluster(("a", "b", "c"), default_mode=mode)
    cluster.start()
    publish(cluster.client_address("a"), 1000, lambda i: f"before{i}")
    cluster.wait_converged(30)

    cluster.kill("c")
    acks_a = publish(cluster.client_address("a"), 5000, lambda i: f"a{i % 700}")
    acks_b = publish(cluster.client_address("b"), 5000, lambda i: f"b{i % 700}")
    assert len(acks_a) == len(acks_b) == 5000
    cluster.wait_converged(30, sites=["a", "b"])

    cluster.restart("c")
    cluster.wait_converged(60)
    assert_applied_exactly_once(cluster)
    assert_same_digest(cluster)


def test_sigterm_drains_and_stops_cleanly(make_cluster: ClusterFactory) -> None:
    """SIGTERM stops a site with exit code 0 after journaling what it had accepted."""
    cluster = make_cluster()
    cluster.start()
    acks = publish(cluster.client_address("a"), 2000, lambda i: f"k{i}")
    assert cluster.terminate("a") == 0
    assert cluster.terminate("b") == 0
    log = cluster.processes["a"].log_path.read_text()
    assert "site_draining" in log
    assert "site_stopped" in log
    cluster.start()
    assert sum(stream_heads(cluster, "a", "a").values()) == len(acks)
    cluster.wait_converged(30)
    assert_applied_exactly_once(cluster)
