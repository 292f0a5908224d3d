"""Redis servers SIGKILLed and restarted again and again under steady publishes: what
the client was told refused is absent at every site, every write whose outcome was unknown
resolves by a retry with the same id to exactly one application, and the site never exits."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import urllib.error
import urllib.request

from multiactive.client import Ack, Client
from multiactive.errors import OutcomeUnknown, RejectedError
from multiactive.local.cluster import LocalCluster

from .conftest import ClusterFactory, assert_applied_exactly_once, stream_heads, wait_for

KILLS = 8
DOWN_S = 0.3
UP_S = 0.7
WRITERS = 16
RETRY_DEADLINE_S = 30.0


def ready(cluster: LocalCluster, site: str) -> tuple[int, str]:
    """The HTTP status and body of the site's /ready."""
    url = f"http://{cluster.processes[site].admin}/ready"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def ready_status(cluster: LocalCluster, site: str) -> int:
    return ready(cluster, site)[0]


class Outcomes:
    def __init__(self) -> None:
        self.acked: dict[str, Ack] = {}
        self.refused: set[str] = set()
        self.unknown: set[str] = set()
        self.resolved: set[str] = set()
        self.codes: set[str] = set()  # refusal codes seen


async def write(client: Client, outcomes: Outcomes, ids: itertools.count[int], stop: asyncio.Event):
    while not stop.is_set():
        n = next(ids)
        id_ = f"w{n}"
        try:
            outcomes.acked[id_] = await client.publish("kv.set", f"k{n}", b"v", id=id_)
        except RejectedError as exc:
            outcomes.refused.add(id_)
            outcomes.codes.add(exc.code)
            await asyncio.sleep(0.01)
        except OutcomeUnknown:
            outcomes.unknown.add(id_)


async def resolve(client: Client, outcomes: Outcomes) -> None:
    """Publish every unknown write again with its id until the site answers it."""
    deadline = time.monotonic() + RETRY_DEADLINE_S
    for id_ in sorted(outcomes.unknown):
        while True:
            assert time.monotonic() < deadline, f"{id_} did not resolve"
            try:
                ack = await client.publish("kv.set", f"k{id_[1:]}", b"v", id=id_)
            except (RejectedError, OutcomeUnknown):
                await asyncio.sleep(0.05)
                continue
            outcomes.acked[id_] = ack
            outcomes.resolved.add(id_)
            break


def kill_redis_repeatedly(cluster: LocalCluster) -> list[int]:
    """SIGKILL a redis-server KILLS times, the publishing site's (a) and, every third time,
    the receiver's (b: its collector's appends fail mid-stream); a's readiness while its
    server is down."""
    seen = []
    for n in range(KILLS):
        site = "b" if n % 3 == 2 else "a"
        server = cluster.redis[site]
        time.sleep(UP_S)
        server.kill()
        time.sleep(DOWN_S / 2)
        if site == "a":
            seen.append(ready_status(cluster, site))
        time.sleep(DOWN_S / 2)
        server.start()
    return seen


async def publish_until(cluster: LocalCluster, outcomes: Outcomes, done: threading.Event) -> None:
    ids, stop = itertools.count(), asyncio.Event()
    # refusals raise at once (the test checks what a client told "refused" sees); unknown
    # outcomes are sent again with their ids by the client itself until its deadline
    async with Client(cluster.client_address("a"), retry_unavailable=False) as client:
        writers = [asyncio.create_task(write(client, outcomes, ids, stop)) for _ in range(WRITERS)]
        await asyncio.to_thread(done.wait)
        stop.set()
        await asyncio.gather(*writers)
        await resolve(client, outcomes)


def under_load(cluster: LocalCluster) -> tuple[Outcomes, list[int]]:
    """Writers in a thread of their own; the kills from this one (a redis-server started
    from a short-lived thread would die with it: PR_SET_PDEATHSIG follows the thread)."""
    outcomes, done = Outcomes(), threading.Event()
    failed: list[BaseException] = []

    def writers() -> None:
        try:
            asyncio.run(publish_until(cluster, outcomes, done))
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=writers)
    thread.start()
    try:
        seen = kill_redis_repeatedly(cluster)
        time.sleep(UP_S)
    finally:
        done.set()
        thread.join(RETRY_DEADLINE_S + 30)
    if failed:
        raise failed[0]
    return outcomes, seen


def test_redis_killed_under_load_refused_is_absent_unknown_resolves_once(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(sites=("a", "b"), backend="redis")
    cluster.start()

    outcomes, seen_while_down = under_load(cluster)

    for name in cluster.sites:
        assert cluster.processes[name].alive, cluster.processes[name].log_tail()
        assert cluster.processes[name].starts == 1
    assert outcomes.codes == {"unavailable"}
    assert outcomes.refused, "no publish was refused while redis-server was down"
    assert 503 in seen_while_down, seen_while_down
    wait_for(lambda: ready_status(cluster, "a") == 200, 20, f"a ready: {ready(cluster, 'a')}")
    cluster.wait_converged(30)
    acked = set(outcomes.acked)
    assert outcomes.unknown <= acked  # every unknown resolved by its retry
    assert not outcomes.refused & acked
    for name in cluster.sites:
        keys = {entry["key"] for entry in cluster.get(name, "/state/entries?limit=1000000")}
        assert not {f"k{i[1:]}" for i in outcomes.refused} & keys, name  # refused: absent
        assert {f"k{i[1:]}" for i in acked} <= keys, name
        # every acknowledged write journaled once: the stream holds exactly the acked ids
        assert sum(stream_heads(cluster, name, "a").values()) == len(acked), name
    assert_applied_exactly_once(cluster)
    for name, process in cluster.processes.items():
        assert process.alive, process.log_tail()
        assert "Traceback" not in process.log_path.read_text(), (name, process.log_tail(60))
    print(
        f"acked {len(acked)}, refused {len(outcomes.refused)}, unknown {len(outcomes.unknown)}"
        f" (resolved {len(outcomes.resolved)}), ready while down {seen_while_down}"
    )


def test_a_site_started_while_its_redis_is_down_waits_for_it_then_serves(
    make_cluster: ClusterFactory,
) -> None:
    """A site started while its redis-server is down does not exit: it warns
    `store_unavailable` and tries again, and once the server is up it (and its applier)
    start and serve writes, which replicate."""
    cluster = make_cluster(sites=("a", "b"), backend="redis")
    cluster.start()
    cluster.kill("a")
    cluster.redis["a"].kill()
    site = cluster.processes["a"]
    site.start()  # the site alone: its Redis stays down
    wait_for(
        lambda: "store_unavailable" in site.log_path.read_text(), 30, "a store_unavailable line"
    )
    assert site.alive, site.log_tail()
    cluster.redis["a"].start()
    cluster.wait_ready("a")

    async def publish() -> Ack:
        async with Client(cluster.client_address("a")) as client:
            return await client.publish("kv.set", "after", b"v", id="after-1")

    ack = asyncio.run(publish())
    cluster.wait_converged(30)
    assert cluster.get("b", "/state/entries?limit=10")[0]["key"] == "after", ack
    assert site.alive, site.log_tail()
    assert site.starts == 2
