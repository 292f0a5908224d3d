"""The client against real site processes: it survives its site's SIGKILLs by resending with
the same ids (each write applied exactly once everywhere), and a causal token carries one
client's writes over to another site so that the later write wins."""

from __future__ import annotations

import asyncio
import base64
from concurrent.futures import ThreadPoolExecutor

from multiactive import failpoints
from multiactive.client import Ack, Client
from multiactive.local.cluster import LocalCluster

from .conftest import ClusterFactory, assert_applied_exactly_once, stream_heads, wait_for

WRITES = 10_000
RATE_PER_S = 4_000
KILLS_AT = (2_000, 4_500, 7_000)  # sent counts after which the site is SIGKILLed
PAIRS = 1_000
WINDOW = 100


class _Progress:
    """What the publishing thread has done, read by the main thread."""

    sent = 0
    sessions = 0


async def _stream(client: Client, progress: _Progress, acks: list[Ack]) -> None:
    """WRITES counter increments on distinct keys, at most RATE_PER_S, WINDOW unanswered at a
    time (so the stream stalls while the site is down instead of running ahead)."""
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def writer() -> None:
        while progress.sent < WRITES:
            i = progress.sent
            progress.sent += 1
            if (ahead_s := i / RATE_PER_S - (loop.time() - start)) > 0:
                await asyncio.sleep(ahead_s)
            acks.append(await client.publish("counter.add", f"c{i}", b"1"))

    await asyncio.gather(*(writer() for _ in range(WINDOW)))


def _kill_three_times(cluster: LocalCluster, progress: _Progress) -> None:
    """SIGKILL and restart `a` at each of KILLS_AT, each time once the client is back. (From
    the main thread: a site process dies with the thread that started it.)"""
    for number, threshold in enumerate(KILLS_AT, start=1):
        wait_for(
            lambda: progress.sent >= threshold and progress.sessions >= number,  # noqa: B023
            60,
            f"{threshold} writes sent over {number} sessions",
        )
        cluster.kill("a")
        cluster.restart("a")


def test_a_client_survives_three_sigkills_of_its_site_and_every_write_applies_once(
    make_cluster: ClusterFactory,
) -> None:
    """10 000 publishes while the client's site is SIGKILLed and restarted three times: every
    publish is acknowledged (the client reconnects and resends with the same id), a's journal
    holds exactly 10 000 messages, and every counter is 1 at every site."""
    cluster = make_cluster(("a", "b"))
    cluster.start()
    progress = _Progress()
    acks: list[Ack] = []

    async def publisher() -> None:
        async with Client(cluster.client_address("a"), deadline_s=60.0) as client:
            task = asyncio.create_task(_stream(client, progress, acks))
            while not task.done():
                progress.sessions = client.sessions
                await asyncio.sleep(0.005)
            await task

    with ThreadPoolExecutor(1) as pool:
        publishing = pool.submit(asyncio.run, publisher())
        _kill_three_times(cluster, progress)
        publishing.result(timeout=120)
    assert len(acks) == WRITES
    assert progress.sessions == len(KILLS_AT) + 1
    cluster.wait_converged(60)
    for site in cluster.sites:
        assert sum(stream_heads(cluster, site, "a").values()) == WRITES, site
        counters = cluster.get(site, "/state/snapshot", timeout_s=30)["counters"]
        assert counters == {f"c{i}": 1 for i in range(WRITES)}, site
    assert_applied_exactly_once(cluster)


async def _pairs(first: Client, second: Client) -> None:
    """Each pair: `first` writes a key at its site, then `second` (following first's token)
    overwrites it at the other at once; 50 pairs at a time."""
    room = asyncio.Semaphore(50)

    async def pair(i: int) -> None:
        async with room:
            await first.publish("kv.set", f"p{i}", b"first")
            second.follow(first.causal_token)
            await second.publish("kv.set", f"p{i}", b"second")

    await asyncio.gather(*(pair(i) for i in range(PAIRS)))


def test_a_causal_token_makes_the_second_write_win_at_every_site(
    make_cluster: ClusterFactory,
) -> None:
    """1 000 pairs: a write at b, then at once the same key at a with b's client's token. The
    second write wins at every site in every pair (without the token, a's clock would often
    give it a version below b's: a's clock runs 50 ms behind, as a datacenter's may)."""
    cluster = make_cluster(("a", "b"))
    proc = cluster.processes["a"]
    proc.env = {**proc.env, failpoints.ENV_VAR: failpoints.CLOCK_BEHIND}
    cluster.start()

    async def main() -> None:
        async with (
            Client(cluster.client_address("b")) as at_b,
            Client(cluster.client_address("a")) as at_a,
        ):
            await _pairs(at_b, at_a)

    asyncio.run(main())
    cluster.wait_converged(60)
    second = base64.b64encode(b"second").decode()
    for site in cluster.sites:
        values = {e["key"]: e["value"] for e in cluster.get(site, "/state/snapshot")["entries"]}
        lost = [key for key in (f"p{i}" for i in range(PAIRS)) if values.get(key) != second]
        assert not lost, f"{site}: the first write won for {len(lost)} pairs, e.g. {lost[:5]}"
