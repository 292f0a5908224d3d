"""A dead applier: one log line with its exit status, a new applier (bounded), and past the
bound a clean exit of the site with one clear message instead of a traceback."""

from __future__ import annotations

import os
import re
import signal

import pytest

from multiactive.errors import DataDirLocked
from multiactive.local.cluster import LocalCluster
from multiactive.site.applier import APPLIER_MAX_RESTARTS
from multiactive.site.lock import DataDirLock

from .conftest import (
    ClusterFactory,
    assert_applied_exactly_once,
    assert_same_digest,
    publish,
    wait_for,
)


def applier_pids(cluster: LocalCluster, site: str) -> list[int]:
    """Pids of the appliers the site started, in order, from its log."""
    text = cluster.processes[site].log_path.read_text(errors="replace")
    return [int(pid) for pid in re.findall(r"applier_started site=\S+ pid=(\d+)", text)]


def kill_applier(cluster: LocalCluster, site: str) -> None:
    """SIGKILL the current applier and wait until the site has logged its death."""
    pids = applier_pids(cluster, site)
    os.kill(pids[-1], signal.SIGKILL)
    log = cluster.processes[site].log_path
    wait_for(lambda: log.read_text().count("applier_exited") >= len(pids), 20, "the death logged")


def test_killed_applier_is_logged_restarted_and_past_the_bound_the_site_exits_cleanly(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(sites=("a", "b"))
    cluster.start()
    site = cluster.processes["a"]
    publish(cluster.client_address("a"), 100, lambda i: f"before{i}")
    cluster.wait_converged(30)

    kill_applier(cluster, "a")
    wait_for(lambda: len(applier_pids(cluster, "a")) == 2, 30, "a new applier")
    with pytest.raises(DataDirLocked, match=rf"process {applier_pids(cluster, 'a')[-1]} holds"):
        DataDirLock(site.data_dir, "applier").acquire()  # the new applier holds its lock
    line = next(x for x in site.log_path.read_text().splitlines() if "applier_exited" in x)
    assert 'status="killed by SIGKILL"' in line, line
    assert "restart=True" in line, line
    publish(cluster.client_address("a"), 100, lambda i: f"after{i}")
    cluster.wait_converged(30)
    assert_applied_exactly_once(cluster)  # the new applier applied nothing twice
    assert_same_digest(cluster)
    assert site.alive

    for restarts in range(2, APPLIER_MAX_RESTARTS + 1):
        kill_applier(cluster, "a")
        wait_for(lambda n=restarts: len(applier_pids(cluster, "a")) == n + 1, 30, "an applier")
    kill_applier(cluster, "a")  # one more within the window: the site gives up
    assert site.wait(30) == 1  # a failure while running: a supervisor restarts the site
    log = site.log_path.read_text()
    last = f"the {APPLIER_MAX_RESTARTS + 1}th time"
    assert f"error: the applier of site a exited (killed by SIGKILL), {last}" in log
    assert "Traceback" not in log, site.log_tail(40)
    assert "ExceptionGroup" not in log, site.log_tail(40)
