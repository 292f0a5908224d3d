"""A handler that never returns, on one partition: every other stream keeps applying at every
site; the stuck message is named in trace, status and metrics, retried after its timeout, then
parked, and the messages behind it go ahead."""

from __future__ import annotations

import asyncio
import urllib.request

from multiactive.client import Ack, Client
from multiactive.local.cluster import LocalCluster
from multiactive.model.partition import partition_for
from multiactive.records import PositionTrace, SiteStatus

from .conftest import ClusterFactory, assert_applied_exactly_once, wait_for

PARTITIONS = 4
TIMEOUT_S = 2.0
ATTEMPTS = 2
STUCK_KEY = "stuck"


async def publish_stuck(cluster: LocalCluster) -> Ack:
    async with Client(cluster.client_address("a")) as client:
        return await client.publish("test.hang", STUCK_KEY, b"", id="hang-1")


async def publish_others(cluster: LocalCluster, site: str, count: int) -> list[Ack]:
    async with Client(cluster.client_address(site)) as client:
        return await asyncio.gather(
            *(client.publish("kv.set", f"{site}-k{i}", b"v") for i in range(count))
        )


def trace_at(cluster: LocalCluster, site: str, ack: Ack) -> PositionTrace:
    query = f"/trace/position?origin=a&partition={ack.partition}&seq={ack.seq}"
    return PositionTrace.from_json(cluster.get(site, query))


def others_applied(cluster: LocalCluster, stuck_partition: int) -> bool:
    """Every stream but (a, stuck partition) applied up to its origin's head, everywhere."""
    statuses = {site: SiteStatus.from_json(cluster.get(site, "/status")) for site in cluster.sites}
    for status in statuses.values():
        for s in status.streams:
            if (s.origin, s.partition) == ("a", stuck_partition):
                continue
            if s.applied != s.origin_head or s.origin_head == 0:
                return False
    return True


def metrics(cluster: LocalCluster, site: str) -> str:
    url = f"http://{cluster.processes[site].admin}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def test_hung_handler_stalls_only_its_stream_is_named_then_parked(
    make_cluster: ClusterFactory,
) -> None:
    settings = {
        "handler_timeout_s": TIMEOUT_S,
        "apply_max_attempts": ATTEMPTS,
        "apply_retry_backoff_ms": 100.0,
    }
    cluster = make_cluster(
        sites=("a", "b"), partitions=PARTITIONS, handlers=["hang_handlers"],
        settings={"replication": settings},
    )  # fmt: skip
    cluster.start()
    stuck = asyncio.run(publish_stuck(cluster))
    assert stuck.partition == partition_for(STUCK_KEY, PARTITIONS)

    for site in cluster.sites:  # named in trace while it runs
        wait_for(
            lambda s=site: trace_at(cluster, s, stuck).running is not None, 10, f"{site} stuck"
        )
        trace = trace_at(cluster, site, stuck)
        assert trace.running is not None
        assert trace.running.id == "hang-1"
        assert "handler for 'test.hang' has run for" in trace.why, trace.why

    for site in cluster.sites:
        asyncio.run(publish_others(cluster, site, 200))
    wait_for(lambda: others_applied(cluster, stuck.partition), 2 * TIMEOUT_S, "other streams")
    for site in cluster.sites:  # ... while the stuck stream still waits, not parked yet
        status = SiteStatus.from_json(cluster.get(site, "/status"))
        held = {(s.origin, s.partition): s for s in status.streams}[("a", stuck.partition)]
        assert held.applied < stuck.seq, site
        assert cluster.get(site, "/deadletters") == [], site
        assert [r.id for r in status.processor.stuck_handlers] == ["hang-1"], site
        assert 'id="hang-1"' in metrics(cluster, site), site

    for site in cluster.sites:  # retried after its timeout, then parked
        wait_for(lambda s=site: len(cluster.get(s, "/deadletters")) == 1, 4 * TIMEOUT_S, site)
        (letter,) = cluster.get(site, "/deadletters")
        assert letter["id"] == "hang-1"
        assert letter["attempts"] == ATTEMPTS
        assert "HandlerTimeout" in letter["error"]
        assert trace_at(cluster, site, stuck).why.startswith(f"parked after {ATTEMPTS} attempts")
    cluster.wait_converged(30)
    assert_applied_exactly_once(cluster)
    for site in cluster.sites:
        log = cluster.processes[site].log_path.read_text()
        assert "WARNING processor handler_timeout" in log, site
        assert "id=hang-1" in log, site
        assert "ERROR processor message_parked" in log, site
