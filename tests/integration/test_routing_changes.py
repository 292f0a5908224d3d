"""Routing policy changes travel the mesh as journaled messages: every site holds the new
policy within a round trip, a cut site catches up when it heals, and the record names who,
when, before and after, and a change from an outdated revision is refused; a live router in front of
one site follows the policy that site holds."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner

from multiactive.cli.main import cli
from multiactive.client import Client
from multiactive.errors import RoutingRefused
from multiactive.local.cluster import LocalCluster
from multiactive.model.topology import Address, load_topology
from multiactive.procs import free_port
from multiactive.routing.app import SiteApp
from multiactive.routing.config import routing_config
from multiactive.routing.guard import WriteGuard
from multiactive.routing.policy import Policy, PolicyState
from multiactive.routing.router import Router
from tests.integration.conftest import ClusterFactory, chromium, wait_for
from tests.integration.test_router import wait_for as await_condition

pytestmark = pytest.mark.routing

APPS = {site: Address("127.0.0.1", free_port()) for site in ("a", "b", "c")}
ROUTING = (
    """
[routing]
[routing.upstreams]
"""
    + "".join(f'{site} = ["{address}"]\n' for site, address in APPS.items())
    + """
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
)


def route(cluster: LocalCluster, *args: str) -> Any:
    result = CliRunner().invoke(
        cli, ["route", *args, "--topology", str(cluster.topology_path), "--json"],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def revision(cluster: LocalCluster, site: str) -> int:
    return int(cluster.get(site, "/routing")["policy"]["revision"])


async def _routed(router: Router, users: list[str]) -> dict[str, str]:
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    ) as session:
        sites = {}
        for user in users:
            async with session.get(f"http://{router.address}/", headers={"X-User-Id": user}) as r:
                sites[user] = r.headers["X-Served-By"]
        return sites


def router_follows_the_site(cluster: LocalCluster) -> None:
    """A live router in front of site a routes by the policy a holds, and sees the shift."""

    async def main() -> None:
        config = routing_config(load_topology(cluster.topology_path))
        apps = [SiteApp(site, address) for site, address in APPS.items()]
        for app in apps:
            await app.start()
        router = Router("a", config, cluster.processes["a"].admin, policy_poll_s=0.1)
        await router.start(Address("127.0.0.1", free_port()))
        stop = asyncio.Event()
        task = asyncio.create_task(router.run(stop))
        try:
            users = [f"user-{n}" for n in range(300)]
            before = await _routed(router, users)
            route(cluster, "shift", "--from", "a", "--to", "c", "--percent", "30",
                  "--region", "north", "--site", "b", "--who", "ops@test")  # fmt: skip

            async def seen() -> bool:  # published at b, seen by a's router
                return router.feed.policy.revision == 1

            await await_condition(seen, 5, "a's router to see revision 1")
            after = await _routed(router, users)
            moved = {u for u in users if after[u] != before[u]}
            assert moved == {u for u in users if 4000 <= router.feed.policy.bucket_of(u) < 7000}
            assert all((before[u], after[u]) == ("a", "c") for u in moved)
        finally:
            stop.set()
            await task
            for app in apps:
                await app.stop()

    asyncio.run(main())


def writes_go_home(cluster: LocalCluster) -> None:
    """A guarded client publishes at the user's home site; after set-mode read-only its write
    is refused naming the home site; a client at another site is told where to go."""
    topology = load_topology(cluster.topology_path)
    config = routing_config(topology)

    def held() -> Policy:
        return Policy(config, PolicyState.from_json(cluster.get("a", "/routing")["policy"]))

    user = next(f"w{n}" for n in range(1000) if held().route_key("north", f"w{n}").site == "a")

    async def main() -> None:
        async with Client.for_user(topology, held(), user, region="north") as client:
            assert client.site == "a"
            await client.publish("kv.set", f"{user}:1", b"v")
        guard = WriteGuard(held(), user, "north")
        async with Client(cluster.client_address("c"), guard=guard) as elsewhere:
            with pytest.raises(RoutingRefused, match="go to site a, not c"):
                await elsewhere.publish("kv.set", f"{user}:2", b"v")
        unit = held().route_key("north", user).unit
        stale = WriteGuard(held(), user, "north")  # made before the change below
        route(cluster, "set-mode", unit, "read-only", "--site", "a")
        async with Client(cluster.client_address("a"), guard=stale) as old:
            refusals: list[RoutingRefused] = []

            async def site_refuses() -> bool:  # the site's own gate, not the client's guard
                try:
                    await old.publish("kv.set", f"{user}:stale", b"v")
                except RoutingRefused as exc:
                    refusals.append(exc)
                return bool(refusals)

            await await_condition(site_refuses, 5, "site a to refuse the stale client's write")
            assert refusals[0].home_site == "a"
            assert f"unit {unit} is read-only" in str(refusals[0])
            assert "site a refuses writes" in str(refusals[0])
        async with Client(
            cluster.client_address("a"), guard=WriteGuard(held(), user, "north")
        ) as c:
            with pytest.raises(RoutingRefused, match=f"unit {unit} is read-only") as caught:
                await c.publish("kv.set", f"{user}:3", b"v")
            assert caught.value.home_site == "a"

    asyncio.run(main())


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


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

    include = cluster.root / "edge.conf"  # the edge's include, re-exported on every change
    watcher = subprocess.Popen(
        [sys.executable, "-m", "multiactive", "route", "export", "nginx", "--topology",
         str(cluster.topology_path), "--site", "c", "--out", str(include), "--watch"],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: "policy revision 0" in _read(include), 30, "the first export")
        router_follows_the_site(cluster)
        wait_for(lambda: "policy revision 1" in _read(include), 10, "the re-export")
        assert '"north:s4000" ma_c;' in _read(include)
    finally:
        watcher.terminate()
        watcher.wait(10)
    wait_for(lambda: all(revision(cluster, s) == 1 for s in cluster.sites), 10, "revision 1")
    held = cluster.get("b", "/routing")
    assert held["policy"]["assignments"]["north"] == [[0, 4000, "a"], [4000, 7000, "c"],
                                                      [7000, 10000, "b"]]  # fmt: skip
    change = held["changes"][0]
    assert (change["kind"], change["site"], change["revision"]) == ("shift", "b", 1)
    assert change["who"] == "ops@test"
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

    writes_go_home(cluster)

    browser = chromium(tmp_path)  # the dashboard shows the policy and its changes
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
