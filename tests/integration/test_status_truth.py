"""Truthful status: during a cut, `status`, `lag`, `trace` and the dashboard's JSON source
(`/cluster/status`) show the same owed count, the sender's own; exit codes tell scripts what
holds (0 healthy, 1 unhealthy, 2 unreachable)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from multiactive.local.cluster import LocalCluster

from .conftest import ClusterFactory, publish, wait_for

OWED = 240


def _cli(cluster: LocalCluster, *args: str) -> tuple[int, Any]:
    """(exit code, parsed --json output) of a CLI command."""
    result = subprocess.run(
        [sys.executable, "-m", "multiactive", *args, "--json",
         "--topology", str(cluster.topology_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return result.returncode, json.loads(result.stdout) if result.stdout.strip() else None


def _status_link(cluster: LocalCluster, name: str) -> tuple[int, dict[str, Any]]:
    code, answer = _cli(cluster, "status")
    return code, next(v for v in answer["links"] if v["name"] == name)


def _dashboard_link(cluster: LocalCluster, site: str, name: str) -> dict[str, Any]:
    answer = cluster.get(site, "/cluster/status")
    return next(v for v in answer["link_views"] if v["name"] == name)  # type: ignore[no-any-return]


def test_a_cut_link_shows_the_same_owed_count_everywhere(make_cluster: ClusterFactory) -> None:
    """a->b cut with 240 messages written at a after the cut: status, lag, trace and the
    dashboard's source all say 240 owed (and an age over a second), status and lag exit 1;
    healed, status exits 0; with b down 1 (naming b), with both down 2."""
    cluster = make_cluster(wan={}, settings={"replication": {"heartbeat_interval_s": 0.2}})
    cluster.start()
    publish(cluster.client_address("a"), 50, lambda i: f"warm{i}")
    cluster.wait_converged(30)
    cluster.cut("a", "b", "reset")
    acks = publish(cluster.client_address("a"), OWED, lambda i: f"k{i}")

    def settled() -> bool:
        shown = _dashboard_link(cluster, "a", "a->b")
        return shown["state"] == "cut" and (shown["owed_age_s"] or 0) > 1.0

    wait_for(settled, 20, "the dashboard's source to show a->b cut for over a second")
    code, view = _status_link(cluster, "a->b")
    assert code == 1
    assert (view["state"], view["owed_messages"]) == ("cut", OWED)
    assert view["owed_age_s"] >= 1.0
    lag_code, rows = _cli(cluster, "lag")
    row = next(r for r in rows if (r["site"], r["origin"]) == ("b", "a"))
    assert lag_code == 1
    assert row["lag_messages"] == OWED
    assert row["lag_s"] >= 1.0
    trace_code, trace = _cli(cluster, "trace", acks[-1].id)
    assert trace_code == 0
    assert not trace["sites"]["b"]["received"]
    assert trace["links"]["b"]["owed_messages"] == OWED
    assert f"{OWED} owed" in trace["sites"]["b"]["why"]
    for site in cluster.sites:  # the dashboard reads /cluster/status of the site it is on
        shown = _dashboard_link(cluster, site, "a->b")
        assert (shown["state"], shown["owed_messages"]) == ("cut", OWED), site
        assert shown["owed_age_s"] >= 1.0
    cluster.heal("a", "b")
    cluster.wait_converged(30)
    wait_for(lambda: _dashboard_link(cluster, "a", "a->b")["state"] == "streaming", 20, "the heal")
    assert _cli(cluster, "status")[0] == 0

    # a site down makes the cluster unhealthy (1, naming the site); none answering is 2
    cluster.kill("b")
    code, answer = _cli(cluster, "status")
    assert code == 1
    assert any("site b does not answer" in p for p in answer["problems"])
    assert _cli(cluster, "lag")[0] == 1
    cluster.kill("a")
    assert _cli(cluster, "status")[0] == 2
    assert _cli(cluster, "lag")[0] == 2
