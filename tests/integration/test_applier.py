"""The applier: a site's processor in a child process, and what happens when either dies."""

from __future__ import annotations

import os
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


# A dead applier is restarted by its site, and past a bound the site exits cleanly:
# tests/integration/test_applier_death.py.


def test_a_killed_site_takes_its_applier_with_it(make_cluster: ClusterFactory) -> None:
    """SIGKILL of a site process: its applier gets SIGKILL too (no orphan keeps applying)."""
    cluster = make_cluster()
    cluster.start()
    (applier,) = _appliers(cluster, "a")
    cluster.kill("a")
    wait_for(lambda: not _alive(applier), 10, "the applier to die with its site")
