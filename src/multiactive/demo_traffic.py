"""The traffic demo: the live router in front of three sites, users from two regions, a 30 %
shift mid-run and a drain, and proof that only the users in the shifted ranges moved.

Three sites (`bj-unicom`, `bj-telecom`, `gz`) run as processes on loopback, each with a small
built-in application server (`routing.app`); a live router stands in front of `bj-unicom` and
follows the policy that site holds. Users of region `north` come from 127.0.0.2 (weights
bj-unicom 50, bj-telecom 50), users of `south` from 127.0.0.3 (gz 100). Every phase, every user
sends requests through the router, and the demo records which site served each of them:

1. before: as the weights say;
2. shifted: 30 % of north moved from bj-unicom to gz, published through bj-telecom (so it
   reaches the router's site through the mesh): exactly the users in the shifted ranges move;
3. drained: gz drained: every user gz served moves to a stand-in, no one else moves.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from multiactive.errors import ClusterError
from multiactive.local.cluster import LocalCluster
from multiactive.model.topology import Address, load_topology
from multiactive.procs import free_port
from multiactive.routing.app import SiteApp
from multiactive.routing.changes import make_change
from multiactive.routing.config import routing_config
from multiactive.routing.policy import Policy, PolicyState, moved
from multiactive.routing.router import Router

SITES = ("bj-unicom", "bj-telecom", "gz")
REGIONS = {"north": "127.0.0.2", "south": "127.0.0.3"}
SHIFT = {"from": "bj-unicom", "to": "gz", "percent": 30.0, "region": "north"}
POLICY_WAIT_S = 15.0


@dataclass
class Phase:
    name: str
    sites: dict[str, dict[str, str]]  # region -> user -> site
    revision: int

    def counts(self) -> dict[str, dict[str, int]]:
        found: dict[str, dict[str, int]] = {}
        for region, users in self.sites.items():
            for site in users.values():
                found.setdefault(region, {}).setdefault(site, 0)
                found[region][site] += 1
        return found


@dataclass
class TrafficResult:
    phases: list[Phase] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    moved: dict[str, int] = field(default_factory=dict)  # phase -> users that changed site

    def to_json(self) -> dict[str, Any]:
        return {
            "phases": [
                {"name": p.name, "revision": p.revision, "counts": p.counts()} for p in self.phases
            ],
            "moved": self.moved,
            "problems": self.problems,
        }


def routing_text(apps: dict[str, Address]) -> str:
    upstreams = "".join(f'{site} = ["{address}"]\n' for site, address in apps.items())
    return f"""
[routing]
[routing.health]
interval_s = 0.5
timeout_s = 0.3
[routing.upstreams]
{upstreams}
[[routing.regions]]
name = "north"
cidrs = ["127.0.0.2/32"]
weights = {{ bj-unicom = 50, bj-telecom = 50 }}

[[routing.regions]]
name = "south"
cidrs = ["127.0.0.3/32"]
weights = {{ gz = 100 }}

[[routing.units]]
name = "u0"
ranges = [[0, 5000]]

[[routing.units]]
name = "u1"
ranges = [[5000, 10000]]
"""


async def run_traffic_demo(
    users: int, show: Callable[[str], None], root: Path | None = None
) -> TrafficResult:
    if root is None:
        with tempfile.TemporaryDirectory(prefix="multiactive-traffic-") as folder:
            return await _run(users, Path(folder), show)
    return await _run(users, root, show)


async def _run(users: int, root: Path, show: Callable[[str], None]) -> TrafficResult:
    apps = {site: SiteApp(site, Address("127.0.0.1", free_port())) for site in SITES}
    cluster = LocalCluster(root, SITES, partitions=4, routing=routing_text(
        {s: a.address for s, a in apps.items()}))  # fmt: skip
    with cluster:
        show("starting three sites and their application servers")
        cluster.start()
        for app in apps.values():
            await app.start()
        config = routing_config(load_topology(cluster.topology_path))
        router = Router("bj-unicom", config, cluster.processes["bj-unicom"].admin,
                        policy_poll_s=0.1)  # fmt: skip
        await router.start(Address("127.0.0.1", free_port()))
        stop = asyncio.Event()
        task = asyncio.create_task(router.run(stop))
        try:
            return await _phases(cluster, router, users, show)
        finally:
            stop.set()
            await task
            for app in apps.values():
                await app.stop()


async def _phases(
    cluster: LocalCluster, router: Router, users: int, show: Callable[[str], None]
) -> TrafficResult:
    names = {region: [f"{region}-user-{n}" for n in range(users)] for region in REGIONS}
    result = TrafficResult()
    before = await _phase("before", router, names)
    result.phases.append(before)
    show(f"before: {_summary(before)}")
    policies = [router.feed.policy]
    for name, kind, args in (("shifted", "shift", SHIFT), ("drained", "drain", {"site": "gz"})):
        revision = await _publish(cluster, "bj-telecom", kind, args)
        await _wait_revision(router, revision)
        phase = await _phase(name, router, names)
        previous = result.phases[-1]
        policies.append(router.feed.policy)
        result.problems += _check(previous, phase, policies[-2], policies[-1])
        result.moved[name] = sum(
            1 for r in REGIONS for u in names[r] if previous.sites[r][u] != phase.sites[r][u]
        )
        result.phases.append(phase)
        show(f"{name} (revision {revision}): {_summary(phase)}; {result.moved[name]} users moved")
    return result


async def _phase(name: str, router: Router, names: dict[str, list[str]]) -> Phase:
    sites: dict[str, dict[str, str]] = {}
    for region, source in REGIONS.items():
        connector = aiohttp.TCPConnector(local_addr=(source, 0), limit=32)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(user: str, session: aiohttp.ClientSession = session) -> str:
                url = f"http://{router.address}/timeline"
                async with session.get(url, headers={"X-User-Id": user}) as response:
                    body = await response.json()
                    if response.status != 200 or body["site"] != response.headers["X-Served-By"]:
                        raise ClusterError(f"{user}: HTTP {response.status} {body}")
                    return str(body["site"])

            got = await asyncio.gather(*(one(u) for u in names[region]))
            sites[region] = dict(zip(names[region], got, strict=True))
    return Phase(name, sites, router.feed.policy.revision)


def _check(previous: Phase, phase: Phase, old: Policy, new: Policy) -> list[str]:
    """Only the users in the moved ranges changed site, each as the policy says."""
    problems = []
    moves = moved(old, new)
    for region, users in phase.sites.items():
        for user, site in users.items():
            bucket = new.bucket_of(user)
            in_moved = [m for m in moves if m.region == region and m.start <= bucket < m.end]
            was = previous.sites[region][user]
            if in_moved and (was, site) != (in_moved[0].before, in_moved[0].after):
                problems.append(f"{phase.name}: {user} went {was} -> {site}, policy says "
                                f"{in_moved[0].before} -> {in_moved[0].after}")  # fmt: skip
            if not in_moved and site != was:
                problems.append(f"{phase.name}: {user} moved {was} -> {site} outside the "
                                "moved ranges")  # fmt: skip
    return problems


async def _publish(cluster: LocalCluster, site: str, kind: str, args: dict[str, Any]) -> int:
    """Compute a change from the policy `site` holds and publish it there."""
    config = routing_config(load_topology(cluster.topology_path))
    held = cluster.get(site, "/routing")
    policy = Policy(config, PolicyState.from_json(held["policy"]))
    state, change, _ = make_change(policy, kind, args, "demo", int(time.time() * 1000))
    body = {"policy": state.to_json(), "change": change.to_json(),
            "base_revision": policy.revision}  # fmt: skip
    async with aiohttp.ClientSession() as session:
        url = f"http://{cluster.processes[site].admin}/routing/change"
        async with session.post(url, data=json.dumps(body)) as response:
            if response.status != 200:
                raise ClusterError(f"{url}: HTTP {response.status}: {await response.text()}")
    return state.revision


async def _wait_revision(router: Router, revision: int) -> None:
    deadline = time.monotonic() + POLICY_WAIT_S
    while router.feed.policy.revision < revision:
        if time.monotonic() > deadline:
            raise ClusterError(f"the router did not see policy revision {revision}")
        await asyncio.sleep(0.05)


def _summary(phase: Phase) -> str:
    parts = []
    for region, counts in phase.counts().items():
        inner = ", ".join(f"{s} {n}" for s, n in sorted(counts.items()))
        parts.append(f"{region}: {inner}")
    return "; ".join(parts)
