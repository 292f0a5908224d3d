"""Routing policy changes travel the mesh as journaled messages: every site holds the new
policy within a round trip, a cut site catches up when it heals, and the record names who,
when, before and after, and a change from an outdated revision is refused."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from multiactive.cli.main import cli
from multiactive.local.cluster import LocalCluster
from tests.integration.conftest import ClusterFactory, wait_for
from tests.integration.test_admin import _chromium

ROUTING = """
[routing]
[[routing.regions]]
name = "north"
cidrs = ["127.0.0.2/32"]
weights = { a = 70, b = 30 }

[[routing.regions]]
name = "south"
cidrs = ["127.0.0.3/32"]
weights = { c = 100 }

[[routing.units]]
name = "u0"
ranges = [[0, 5000]]

[[routing.units]]
name = "u1"
ranges = [[5000, 10000]]
"""


def route(cluster: LocalCluster, *args: str) -> Any:
    result = CliRunner().invoke(
        cli, ["route", *args, "--topology", str(cluster.topology_path), "--json"],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def revision(cluster: LocalCluster, site: str) -> int:
    return int(cluster.get(site, "/routing")["policy"]["revision"])


@pytest.fixture
def cluster(make_cluster: ClusterFactory) -> LocalCluster:
    cluster = make_cluster(("a", "b", "c"), wan={}, routing=ROUTING)
    cluster.start()
    return cluster


def test_a_change_reaches_every_site_and_a_cut_site_catches_up(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    dry = route(cluster, "shift", "--from", "a", "--to", "c", "--percent", "30",
                "--region", "north", "--dry-run", "--site", "a")  # fmt: skip
    assert dry["region_share"] == {"north": 0.3, "south": 0.0}
    assert dry["units"] == {"u0": 1000, "u1": 2000}
    assert all(revision(cluster, s) == 0 for s in cluster.sites)  # a dry run changes nothing

    answer = route(cluster, "shift", "--from", "a", "--to", "c", "--percent", "30",
                   "--region", "north", "--site", "a", "--who", "ops@test")  # fmt: skip
    assert answer["change"]["who"] == "ops@test"
    wait_for(lambda: all(revision(cluster, s) == 1 for s in cluster.sites), 10, "revision 1")
    held = cluster.get("b", "/routing")
    assert held["policy"]["assignments"]["north"] == [[0, 4000, "a"], [4000, 7000, "c"],
                                                      [7000, 10000, "b"]]  # fmt: skip
    change = held["changes"][0]
    assert (change["kind"], change["site"], change["revision"]) == ("shift", "a", 1)
    assert change["before"]["assignments"]["north"] == [[0, 7000, "a"], [7000, 10000, "b"]]

    cluster.isolate("c")
    route(cluster, "drain", "b", "--site", "a")
    wait_for(lambda: revision(cluster, "b") == 2, 10, "b to hold revision 2")
    assert revision(cluster, "c") == 1  # cut off: it cannot know yet
    cluster.rejoin("c")
    wait_for(lambda: revision(cluster, "c") == 2, 20, "c to catch up on heal")
    shown = route(cluster, "show", "--site", "c")
    assert shown["policy"]["site_states"]["b"] == "draining"
    assert [c["kind"] for c in shown["changes"]] == ["drain", "shift"]

    stale = {"policy": held["policy"], "change": change, "base_revision": 0}
    request = urllib.request.Request(
        f"http://{cluster.processes['b'].admin}/routing/change",
        data=json.dumps(stale).encode(), headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as caught:  # made from an outdated revision
        urllib.request.urlopen(request, timeout=5)
    assert caught.value.code == 409
    assert "holds policy revision 2" in caught.value.read().decode()

    browser = _chromium(tmp_path)  # the dashboard shows the policy and its changes
    try:
        browser.get(f"http://{cluster.processes['a'].admin}/dashboard")
        script = (
            "const row = document.querySelector(`#changes tr[data-revision='2']`);"
            "const share = document.querySelector("
            "`#routing tr[data-region='north'][data-site='c']`);"
            "return row && share ? row.textContent + '|' + share.textContent : '';"
        )
        wait_for(lambda: bool(browser.execute_script(script)), 20, "the dashboard's traffic")
        text = str(browser.execute_script(script))
        assert "ops@test" not in text.split("|")[0]  # r2 was the drain, by the default author
        assert "drain site=b" in text
        assert "30.00" in text.split("|")[1]
    finally:
        browser.quit()
