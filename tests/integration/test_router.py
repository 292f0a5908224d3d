"""The live router over real TCP: routes by client subnet (source addresses 127.0.0.x) and
routing key, names the serving site in a header, keeps users where they are, refuses writes to
a read-only unit naming the home site, evacuates a killed upstream within interval x failures
+ 1 s and brings its users back after recovery, and counts per site, region and unit."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from multiactive import aio
from multiactive.local.edge import NginxServer
from multiactive.model.topology import Address, load_topology
from multiactive.procs import die_with_parent, free_port
from multiactive.routing.app import SiteApp
from multiactive.routing.config import RoutingConfig, routing_config
from multiactive.routing.messages import POLICY_KEY, Change, encode_change
from multiactive.routing.policy import Policy, PolicyState, set_site_state, shift
from multiactive.routing.router import Router
from multiactive.routing.service import RoutingService
from multiactive.state.memory import MemoryState
from multiactive.state.ops import Entry

pytestmark = pytest.mark.routing

INTERVAL_S = 0.5
FAILURES = 2
SITES = ("bj-unicom", "bj-telecom", "gz")


def topology_text(apps: dict[str, Address]) -> str:
    sites = "".join(
        f'[[sites]]\nname = "{s}"\nlisten = "127.0.0.1:{free_port()}"\n\n' for s in SITES
    )
    upstreams = "".join(f'{s} = ["{apps[s]}"]\n' for s in SITES)
    return (
        sites
        + f"""
[routing]
trusted_proxies = ["127.0.0.1/32"]

[routing.health]
interval_s = {INTERVAL_S}
failures = {FAILURES}
rise = 1
timeout_s = 0.4

[routing.upstreams]
{upstreams}
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

[[routing.units]]
name = "frozen"
ranges = [[9000, 10000]]
mode = "read-only"
"""
    )


@asynccontextmanager
async def running(tmp_path: Path) -> AsyncIterator[tuple[Router, dict[str, SiteApp]]]:
    apps = {s: SiteApp(s, Address("127.0.0.1", free_port())) for s in SITES}
    for app in apps.values():
        await app.start()
    try:
        async with live_router(tmp_path, {s: a.address for s, a in apps.items()}) as router:
            yield router, apps
    finally:
        for app in apps.values():
            await app.stop()


@asynccontextmanager
async def live_router(tmp_path: Path, upstreams: dict[str, Address]) -> AsyncIterator[Router]:
    """The bj-unicom router (the test routes by setting its policy) before `upstreams`."""
    path = tmp_path / "topology.toml"
    path.write_text(topology_text(upstreams))
    router = Router("bj-unicom", routing_config(load_topology(path)), None)
    await router.start(Address("127.0.0.1", free_port()))
    stop = asyncio.Event()
    task = asyncio.create_task(router.run(stop))
    try:
        yield router
    finally:
        stop.set()
        await task


def client(source: str) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(local_addr=(source, 0), limit=20)
    return aiohttp.ClientSession(connector=connector)


async def served_by(
    session: aiohttp.ClientSession, router: Router, user: str, method: str = "GET"
) -> tuple[int, str, str]:
    """(status, the site header, the site the app says) for one request of `user`."""
    async with session.request(
        method, f"http://{router.address}/timeline?x=1", headers={"X-User-Id": user}
    ) as response:
        body = await response.json() if response.status == 200 else {}
        return response.status, response.headers.get("X-Served-By", ""), body.get("site", "")


async def sites_of(
    session: aiohttp.ClientSession, router: Router, users: list[str]
) -> dict[str, str]:
    results = await asyncio.gather(*(served_by(session, router, u) for u in users))
    for status, header, site in results:
        assert status == 200
        assert header == site
    return {u: r[1] for u, r in zip(users, results, strict=True)}


async def wait_for(condition, timeout_s: float, what: str) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if await condition():
            return time.monotonic() - start
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


USERS = [f"user-{n}" for n in range(300)]


def test_routes_by_region_and_key_sticky_and_as_the_policy_says(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as (router, _apps), client("127.0.0.2") as north, \
                client("127.0.0.3") as south:  # fmt: skip
            policy = router.feed.policy
            got = await sites_of(north, router, USERS)
            assert got == {u: policy.route("127.0.0.2", u).site for u in USERS}
            assert set(got.values()) == {"bj-unicom", "bj-telecom"}
            assert set((await sites_of(south, router, USERS[:50])).values()) == {"gz"}
            for _ in range(2):  # sticky: the same users, the same sites
                assert await sites_of(north, router, USERS) == got

            # a 30 % shift of north to gz moves 30 % +- 1 % of north's users, no one else
            router.feed.policy = policy.with_state(shift(policy, "bj-unicom", "gz", 30, "north"))
            after = await sites_of(north, router, USERS)
            moved = [u for u in USERS if after[u] != got[u]]
            assert all((got[u], after[u]) == ("bj-unicom", "gz") for u in moved)
            expected = [u for u in USERS if 4000 <= router.feed.policy.bucket_of(u) < 7000]
            assert moved == expected
            assert abs(len(moved) / len(USERS) - 0.3) < 0.05  # 300 users: sampling error

            # draining bj-telecom moves every one of its users
            shifted = router.feed.policy
            router.feed.policy = shifted.with_state(
                set_site_state(shifted, "bj-telecom", "draining")
            )
            drained = await sites_of(north, router, USERS)
            assert "bj-telecom" not in drained.values()
            assert all(drained[u] == after[u] for u in USERS if after[u] != "bj-telecom")

            # the app saw the client address in X-Forwarded-For; metrics count per site/region/unit
            async with north.get(f"http://{router.address}/a", headers={"X-User-Id": "x"}) as r:
                assert (await r.json())["forwarded_for"] == "127.0.0.2"
            async with north.get(f"http://{router.address}/_router/metrics") as r:
                metrics = await r.text()
            assert 'region="north",router="bj-unicom",site="gz",unit="u0"' in metrics.replace(
                'reason="home",', ""
            )
            # the upstreams were reached over keep-alive connections, not one per request
            async with north.get(f"http://{router.address}/_router/status") as r:
                opened = (await r.json())["upstream_connections_opened"]
            assert 3 <= opened <= 3 * 20  # the client keeps at most 20 connections in flight

    asyncio.run(main())


def test_forwarded_for_from_a_trusted_proxy_picks_the_region(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as (router, _apps), client("127.0.0.1") as proxy, \
                client("127.0.0.2") as stranger:  # fmt: skip
            headers = {"X-User-Id": "u", "X-Forwarded-For": "127.0.0.3"}
            async with proxy.get(f"http://{router.address}/", headers=headers) as response:
                assert response.headers["X-Served-By"] == "gz"  # south, as the proxy says
            async with stranger.get(f"http://{router.address}/", headers=headers) as response:
                assert response.headers["X-Served-By"] != "gz"  # not believed from 127.0.0.2

    asyncio.run(main())


def test_requests_and_answers_pass_through_whole(tmp_path: Path) -> None:
    """Bodies (sized or chunked), the query, methods and the answer's headers reach the other
    side as sent, over the router's keep-alive upstream connections."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"x" * 50_000

    async def main() -> None:
        async with running(tmp_path) as (router, _apps), client("127.0.0.3") as south:
            url = f"http://{router.address}/post?a=1&b=%20"
            headers = {"X-User-Id": "u1"}
            for data in (b"y" * 300_000, chunks()):
                async with south.put(url, headers=headers, data=data) as response:
                    body = await response.json()
                    assert response.status == 200
                    assert response.headers.getall("Content-Type") == [
                        "application/json; charset=utf-8"
                    ]
                assert (body["method"], body["path"], body["user"]) == (
                    "PUT",
                    "/post?a=1&b=%20",
                    "u1",
                )
                assert body["bytes"] in (300_000, 200_000)
            async with south.head(url, headers=headers) as response:
                assert response.status == 200
                assert response.headers["X-Served-By"] == "gz"
            async with south.delete(url, headers=headers) as response:
                assert (await response.json())["method"] == "DELETE"

    asyncio.run(main())


def test_a_write_to_a_read_only_unit_is_refused_naming_the_home_site(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as (router, _apps), client("127.0.0.2") as north:
            policy: Policy = router.feed.policy
            user = next(u for u in USERS if policy.route("127.0.0.2", u).unit == "frozen")
            home = policy.route("127.0.0.2", user).home
            assert (await served_by(north, router, user, "GET"))[0] == 200
            async with north.post(
                f"http://{router.address}/post", headers={"X-User-Id": user}, data=b"hi"
            ) as response:
                assert response.status == 403
                assert response.headers["X-Home-Site"] == home
                assert f"its home site is {home}" in await response.text()

    asyncio.run(main())


def test_a_killed_upstream_is_evacuated_in_time_and_restored(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as (router, apps), client("127.0.0.2") as north:
            users = USERS[:200]
            before = await sites_of(north, router, users)
            telecom = [u for u in users if before[u] == "bj-telecom"][:20]  # a cheap probe
            await apps["bj-telecom"].stop()

            async def evacuated() -> bool:
                got = await asyncio.gather(*(served_by(north, router, u) for u in telecom))
                return all(status == 200 and site == "bj-unicom" for status, _, site in got)

            took = await wait_for(evacuated, INTERVAL_S * FAILURES + 1.0, "the evacuation")
            assert took <= INTERVAL_S * FAILURES + 1.0
            others = [u for u in users if before[u] != "bj-telecom"]
            assert all(s == before[u] for u, s in (await sites_of(north, router, others)).items())

            await apps["bj-telecom"].start()  # the same address: it recovers

            async def restored() -> bool:
                got = await asyncio.gather(*(served_by(north, router, u) for u in telecom))
                return all(site == "bj-telecom" for _, _, site in got)

            await wait_for(restored, INTERVAL_S * 1 + 1.0, "users back on bj-telecom")  # rise 1
            assert await sites_of(north, router, users) == before

    asyncio.run(main())


# -- at scale: 10 000 users, 100 000 requests, over many keep-alive connections ----------------

SCALE_USERS = [f"u{n}" for n in range(10_000)]
ROUNDS = 10  # 10 x 10 000 = 100 000 requests that must each land on the user's site
CONNECTIONS = 48
UPSTREAMS = """server {{
    listen {address};
    access_log off;
    keepalive_requests 1000000;
    location / {{ return 200 "{site}"; }}
}}
"""


class Connections:
    """Raw keep-alive HTTP/1.1 connections from one source address to the router: the load
    costs the test little, so the router's own cost shows."""

    def __init__(self, router: Address, source: str, count: int) -> None:
        self._router = router
        self._source = source
        self._count = count
        self._streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def __aenter__(self) -> Connections:
        for _ in range(self._count):
            self._streams.append(await asyncio.open_connection(
                self._router.host, self._router.port, local_addr=(self._source, 0)
            ))  # fmt: skip
        return self

    async def __aexit__(self, *exc: object) -> None:
        for _, writer in self._streams:
            writer.close()

    async def sites(self, users: list[str]) -> dict[str, str]:
        """{user: the site that served one GET of theirs}, every connection busy."""
        pending = iter(users)
        found: dict[str, str] = {}

        async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for user in pending:
                found[user] = await one_get(reader, writer, user)

        await asyncio.gather(*(worker(r, w) for r, w in self._streams))
        return found


async def one_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, user: str) -> str:
    """One GET as `user`: the site named by the router's header, checked against the body
    (what the upstream that answered says it is)."""
    writer.write(b"GET /timeline HTTP/1.1\r\nHost: router\r\nX-User-Id: %s\r\n\r\n" % user.encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    fields = dict(line.split(b": ", 1) for line in head.lower().split(b"\r\n")[1:] if b": " in line)
    body = await reader.readexactly(int(fields[b"content-length"]))
    site = fields[b"x-served-by"].decode()
    assert body.decode() == site
    return site


class PolicySite:
    """What a router process follows: a site's `GET /routing` (the real RoutingService over the
    in-memory state twin); `publish` writes a policy into that state as the processor would."""

    def __init__(self, config: RoutingConfig, address: Address) -> None:
        self.state = MemoryState()
        self.address = address
        self._service = RoutingService("bj-unicom", config, self.state, self._refuse)
        self._runner: web.AppRunner | None = None

    async def _refuse(self, drafts: Sequence[Any]) -> list[Any]:
        raise AssertionError("the test publishes policies by writing the site's state")

    async def __aenter__(self) -> PolicySite:
        app = web.Application()
        app.add_routes(self._service.routes())
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.address.host, self.address.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def publish(self, state: PolicyState) -> None:
        change = Change(state.revision, "test", {}, "test", 0, {}, {})
        await self.state.put([Entry(POLICY_KEY, encode_change(state, change), state.revision, "t")])


@contextmanager
def router_process(topology: Path, listen: Address) -> Iterator[Address]:
    """`multiactive router run` for bj-unicom, polling its site's policy every 50 ms."""
    command = [
        sys.executable, "-m", "multiactive", "router", "run", "--topology", str(topology),
        "--site", "bj-unicom", "--listen", str(listen), "--policy-poll", "0.05",
        "--log-level", "WARNING",
    ]  # fmt: skip
    process = subprocess.Popen(command, preexec_fn=die_with_parent)
    try:
        yield listen
    finally:
        process.terminate()
        process.wait(10)


async def router_status(session: aiohttp.ClientSession, router: Address) -> dict[str, Any]:
    async with session.get(f"http://{router}/_router/status") as response:
        status: dict[str, Any] = await response.json()
        return status


async def follows(session: aiohttp.ClientSession, router: Address, revision: int) -> None:
    async def caught_up() -> bool:
        try:
            return (await router_status(session, router))["revision"] == revision
        except aiohttp.ClientError:
            return False  # not listening yet

    await wait_for(caught_up, 20.0, f"the router to route by policy revision {revision}")


def test_ten_thousand_users_keep_their_site_a_shift_moves_its_share_a_drain_all(
    tmp_path: Path,
) -> None:
    """Through a router process: 10 000 users x 10 rounds (100 000 requests) keep their sites;
    a 30 % shift of north moves 30 % +- 1 % of its users and no one else; draining bj-telecom
    moves all of its users and no one else."""
    upstreams = {s: Address("127.0.0.1", free_port()) for s in SITES}
    include = "".join(UPSTREAMS.format(address=a, site=s) for s, a in upstreams.items())
    admin, listen = Address("127.0.0.1", free_port()), Address("127.0.0.1", free_port())
    path = tmp_path / "topology.toml"
    path.write_text(topology_text(upstreams).replace(
        '[[sites]]\nname = "bj-unicom"\n', f'[[sites]]\nname = "bj-unicom"\nadmin = "{admin}"\n'
    ))  # fmt: skip
    config = routing_config(load_topology(path))

    async def main() -> None:
        async with PolicySite(config, admin) as site, aiohttp.ClientSession() as session:
            await follows(session, listen, 0)
            policy = Policy(config)
            async with Connections(listen, "127.0.0.2", CONNECTIONS) as north:
                first = await north.sites(SCALE_USERS)
                assert first == {u: policy.route("127.0.0.2", u).site for u in SCALE_USERS}
                for n in range(1, ROUNDS):  # sticky, in another order each round
                    order = SCALE_USERS[n * 1000 :] + SCALE_USERS[: n * 1000]
                    assert await north.sites(order) == first

                shifted = policy.with_state(shift(policy, "bj-unicom", "gz", 30, "north"))
                await site.publish(shifted.state)
                await follows(session, listen, 1)
                after = await north.sites(SCALE_USERS)
                moved = {u for u in SCALE_USERS if after[u] != first[u]}
                assert all((first[u], after[u]) == ("bj-unicom", "gz") for u in moved)
                assert moved == {u for u in SCALE_USERS if 4000 <= policy.bucket_of(u) < 7000}
                assert abs(len(moved) / len(SCALE_USERS) - 0.30) <= 0.01

                await site.publish(set_site_state(shifted, "bj-telecom", "draining"))
                await follows(session, listen, 2)
                drained = await north.sites(SCALE_USERS)
            telecom = {u for u in SCALE_USERS if after[u] == "bj-telecom"}
            assert telecom
            assert all(drained[u] != "bj-telecom" for u in telecom)
            assert all(drained[u] == after[u] for u in SCALE_USERS if u not in telecom)
            served = (await router_status(session, listen))["served"]
            assert sum(served.values()) == (ROUNDS + 2) * len(SCALE_USERS)

    with NginxServer(tmp_path / "upstreams", include, upstreams["gz"]), router_process(
        path, listen
    ):  # fmt: skip
        aio.run(main())
