"""The exports checked by the real tools: the nginx include passes `nginx -t`, and a real nginx
sends requests from 127.0.0.2 / 127.0.0.3 with user ids to the site the policy says (the same
buckets as the live router: split_clients' MurmurHash2), refuses writes to a read-only unit;
the BIND export passes `named-checkconf -z` and `named-checkzone`, and a real named answers
`dig -b 127.0.0.x` with each region's sites."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from multiactive.local.edge import NamedServer, NginxServer, run_tool
from multiactive.model.topology import Address, load_topology
from multiactive.procs import free_port
from multiactive.routing.app import SiteApp
from multiactive.routing.config import routing_config
from multiactive.routing.export import bind_config, nginx_config
from multiactive.routing.policy import Policy, set_unit_mode, shift

pytestmark = pytest.mark.routing

SITES = ("bj-unicom", "bj-telecom", "gz")
USERS = [f"user-{n}" for n in range(400)]


def write_topology(tmp_path: Path, apps: dict[str, Address]) -> Path:
    sites = "".join(
        f'[[sites]]\nname = "{s}"\nlisten = "127.0.0.1:{free_port()}"\n\n' for s in SITES
    )
    upstreams = "".join(f'{s} = ["{a}"]\n' for s, a in apps.items())
    path = tmp_path / "topology.toml"
    path.write_text(
        sites
        + f"""
[routing]
[routing.upstreams]
{upstreams}
[routing.dns]
zone = "svc.example."
name = "www"
addresses = {{ bj-unicom = "10.0.0.1", bj-telecom = "10.0.0.2", gz = "10.0.0.3" }}

[[routing.regions]]
name = "north"
cidrs = ["127.0.0.2/32"]
weights = {{ bj-unicom = 70, bj-telecom = 30 }}

[[routing.regions]]
name = "south"
cidrs = ["127.0.0.3/32"]
weights = {{ gz = 100 }}

[[routing.units]]
name = "u0"
ranges = [[0, 9000]]
users = ["vip"]

[[routing.units]]
name = "u1"
ranges = [[9000, 10000]]
"""
    )
    return path


def policy_of(path: Path) -> Policy:
    policy = Policy(routing_config(load_topology(path)))
    policy = policy.with_state(shift(policy, "bj-unicom", "gz", 30, "north"))
    return policy.with_state(set_unit_mode(policy, "u1", "read-only"))


async def get_sites(address: Address, source: str, users: list[str]) -> dict[str, tuple[str, str]]:
    connector = aiohttp.TCPConnector(local_addr=(source, 0), limit=16)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(user: str) -> tuple[str, str]:
            async with session.get(f"http://{address}/t", headers={"X-User-Id": user}) as r:
                body = await r.json()
                return r.headers["X-Served-By"], body["site"]

        return dict(zip(users, await asyncio.gather(*(one(u) for u in users)), strict=True))


def test_nginx_serves_as_the_policy_says(tmp_path: Path) -> None:
    apps = {s: Address("127.0.0.1", free_port()) for s in SITES}
    policy = policy_of(write_topology(tmp_path, apps))
    listen = Address("127.0.0.1", free_port())
    include = nginx_config(policy, listen).text

    async def main() -> None:
        servers = [SiteApp(s, a) for s, a in apps.items()]
        for server in servers:
            await server.start()
        try:
            with NginxServer(tmp_path / "nginx", include, listen):
                for source, region in (("127.0.0.2", "north"), ("127.0.0.3", "south")):
                    got = await get_sites(listen, source, [*USERS, "vip"])
                    for user, (header, site) in got.items():
                        expected = policy.route_key(region, user).site
                        assert (header, site) == (expected, expected), (user, region)
                north = await get_sites(listen, "127.0.0.2", USERS)
                assert {s for s, _ in north.values()} == {"bj-unicom", "bj-telecom", "gz"}
                await refuses_read_only_writes(listen, policy)
        finally:
            for server in servers:
                await server.stop()

    asyncio.run(main())


async def curl(*args: str) -> str:
    """curl from a source address, as an operator checks an edge by hand (without blocking
    the loop that serves the upstream apps)."""
    process = await asyncio.create_subprocess_exec(
        "curl", "-s", "--max-time", "10", "--interface", "127.0.0.2", *args,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await process.communicate()
    return out.decode()


async def refuses_read_only_writes(listen: Address, policy: Policy) -> None:
    user = next(u for u in USERS if policy.route_key("north", u).unit == "u1")
    home = policy.route_key("north", user).home
    output = await curl("-i", "-X", "POST", "-H", f"X-User-Id: {user}", f"http://{listen}/post")
    assert output.startswith("HTTP/1.1 403")
    assert f"X-Home-Site: {home}" in output
    reads = await curl("-o", "/dev/null", "-w", "%{http_code}", "-H", f"X-User-Id: {user}",
                       f"http://{listen}/read")  # fmt: skip
    assert reads == "200"


def test_bind_views_answer_each_region(tmp_path: Path) -> None:
    apps = {s: Address("127.0.0.1", free_port()) for s in SITES}
    policy = policy_of(write_topology(tmp_path, apps))
    root = tmp_path / "bind"
    root.mkdir()
    listen = Address("127.0.0.1", free_port())
    export = bind_config(policy, str(root), listen)
    (root / "named.conf").write_text(export.named_conf)
    for name, text in export.zones.items():
        (root / name).write_text(text)
        run_tool("named-checkzone", "svc.example.", str(root / name))
    with NamedServer(root, listen):
        for source, expected in (
            ("127.0.0.2", ["10.0.0.1", "10.0.0.3", "10.0.0.2"]),  # north: 40 % / 30 % / 30 %
            ("127.0.0.3", ["10.0.0.3"]),
            ("127.0.0.1", ["10.0.0.1", "10.0.0.3", "10.0.0.2"]),  # default region: north
        ):
            answer = run_tool("dig", "+short", "-b", source, "-p", str(listen.port),
                              f"@{listen.host}", "www.svc.example", "A")  # fmt: skip
            assert sorted(answer.split()) == sorted(expected), source
