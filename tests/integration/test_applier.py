"""The applier: a site's processor in a child process, and what happens when either dies."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from multiactive.local.cluster import LocalCluster

from .conftest import ClusterFactory, assert_same_digest, publish, wait_for


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def _appliers(cluster: LocalCluster, site: str) -> list[int]:
    process = cluster.processes[site].process
    assert process is not None
    return [
        child
        for child in _children(process.pid)
        if b"apply" in Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
    ]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_each_site_applies_in_a_child_process_and_converges(make_cluster: ClusterFactory) -> None:
    """With sqlite backends every site has one applier child; writes at both sites are
    applied everywhere through it, exactly as the inline processor would."""
    cluster = make_cluster()
    cluster.start()
    assert all(len(_appliers(cluster, site)) == 1 for site in cluster.sites)
    publish(cluster.client_address("a"), 300, lambda i: f"k{i}")
    publish(cluster.client_address("b"), 300, lambda i: f"k{i % 50}")
    cluster.wait_converged(30)
    assert_same_digest(cluster)
    assert cluster.status("b").processor.applied_messages == 600


def test_separate_processor_false_applies_inline(make_cluster: ClusterFactory) -> None:
    """`[replication] separate_processor = false`: no child process, same result."""
    cluster = make_cluster(settings={"replication": {"separate_processor": False}})
    cluster.start()
    assert _appliers(cluster, "a") == []
    publish(cluster.client_address("a"), 100, lambda i: f"k{i}")
    cluster.wait_converged(30)
    assert_same_digest(cluster)


def test_a_dead_applier_stops_its_site_with_the_reason(make_cluster: ClusterFactory) -> None:
    """An applier that dies takes its site down (exit code != 0, the reason logged), so a
    supervisor restarts both; after a restart nothing is applied twice."""
    cluster = make_cluster()
    cluster.start()
    publish(cluster.client_address("a"), 200, lambda i: f"k{i}")
    cluster.wait_converged(30)
    (applier,) = _appliers(cluster, "b")
    os.kill(applier, signal.SIGKILL)
    assert cluster.processes["b"].wait(30) != 0
    assert "the applier of site b exited" in cluster.processes["b"].log_tail(60)
    cluster.start(["b"])
    publish(cluster.client_address("a"), 100, lambda i: f"later{i}")
    cluster.wait_converged(30)
    assert_same_digest(cluster)
    streams = cluster.status("b").streams
    assert streams
    assert all(s.applied_count == s.head for s in streams)


def test_a_killed_site_takes_its_applier_with_it(make_cluster: ClusterFactory) -> None:
    """SIGKILL of a site process: its applier gets SIGKILL too (no orphan keeps applying)."""
    cluster = make_cluster()
    cluster.start()
    (applier,) = _appliers(cluster, "a")
    cluster.kill("a")
    wait_for(lambda: not _alive(applier), 10, "the applier to die with its site")
