"""Per-stream order at every receiver, and concurrent writes to one key converging."""

from __future__ import annotations

import asyncio
import base64
from collections import defaultdict
from pathlib import Path

import pytest

from multiactive.client import Client
from multiactive.model.topology import Address

from .conftest import MODES, ClusterFactory, assert_applied_exactly_once, assert_same_digest


async def _append_many(address: Address, count: int, keys: int) -> None:
    async with Client(address) as client:
        for start in range(0, count, 250):
            await asyncio.gather(
                *(client.publish("test.append", f"k{i % keys}") for i in range(start, start + 250))
            )


@pytest.mark.parametrize("mode", MODES)
def test_every_receiver_applies_each_stream_in_seq_order(
    make_cluster: ClusterFactory, mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user handler sees each (origin, partition) stream as 1, 2, 3, ... with no gap, in
    every site, for writes made at all sites concurrently."""
    out = tmp_path / "applied"
    out.mkdir()
    monkeypatch.setenv("MULTIACTIVE_TEST_OUT", str(out))
    cluster = make_cluster(("a", "b", "c"), default_mode=mode, handlers=["order_handlers"])
    cluster.start()

    async def write() -> None:
        await asyncio.gather(
            *(_append_many(cluster.client_address(s), 3000, 50) for s in cluster.sites)
        )

    asyncio.run(write())
    cluster.wait_converged(60)
    assert_applied_exactly_once(cluster)
    for site in cluster.sites:
        seqs: dict[tuple[str, int], list[int]] = defaultdict(list)
        for line in (out / f"{site}.log").read_text().splitlines():
            origin, partition, seq, _ = line.split()
            seqs[(origin, int(partition))].append(int(seq))
        assert {origin for origin, _ in seqs} == set(cluster.sites)
        for stream, applied in seqs.items():
            assert applied == list(range(1, len(applied) + 1)), (site, stream)
        assert sum(len(v) for v in seqs.values()) == 3 * 3000


def test_concurrent_writes_to_one_key_converge_everywhere(make_cluster: ClusterFactory) -> None:
    """Sites writing the same keys at the same time end with the same winner in every site."""
    cluster = make_cluster(("a", "b", "c"))
    cluster.start()

    async def write(site: str) -> None:
        async with Client(cluster.client_address(site)) as client:
            for round_ in range(20):
                await asyncio.gather(
                    client.publish("kv.set", "shared", f"{site}-{round_}".encode()),
                    *(
                        client.publish("kv.set", f"hot{i}", f"{site}-{round_}".encode())
                        for i in range(50)
                    ),
                    client.publish("kv.del", "hot0") if round_ == 10 else asyncio.sleep(0),
                )

    async def all_sites() -> None:
        await asyncio.gather(*(write(site) for site in cluster.sites))

    asyncio.run(all_sites())
    cluster.wait_converged(30)
    assert_same_digest(cluster)
    winners = {site: cluster.get(site, "/state/kv/shared") for site in cluster.sites}
    assert len({(w["value"], w["version"], w["origin"]) for w in winners.values()}) == 1, winners
    entries = {s: cluster.get(s, "/state/entries") for s in cluster.sites}
    assert entries["a"] == entries["b"] == entries["c"]
    assert len(entries["a"]) == 51


def test_counters_and_capped_sets_converge_across_sites(make_cluster: ClusterFactory) -> None:
    """counter.add totals are exact everywhere (each message counted once); zset.add/rem
    converge to the same newest-N view in every site; payloads are checked at ingress."""
    cluster = make_cluster(("a", "b", "c"), settings={"limits": {"zset_cap": 5}})
    cluster.start()

    async def write(site: str, offset: int) -> None:
        async with Client(cluster.client_address(site)) as client:
            await asyncio.gather(
                *(client.publish("counter.add", "likes", str(n).encode()) for n in range(1, 101)),
                *(client.publish("zset.add", "timeline", f"post-{offset + i}".encode())
                  for i in range(10)),
            )  # fmt: skip
            await client.publish("zset.rem", "timeline", f"post-{offset + 9}".encode())

    async def everywhere() -> None:
        await asyncio.gather(*(write(s, 100 * n) for n, s in enumerate(cluster.sites)))

    asyncio.run(everywhere())
    cluster.wait_converged(30)
    assert_same_digest(cluster)
    for site in cluster.sites:
        assert cluster.get(site, "/state/counter/likes")["value"] == 3 * 5050
    views = [cluster.get(s, "/state/zset/timeline")["members"] for s in cluster.sites]
    assert views[0] == views[1] == views[2]
    assert len(views[0]) == 5
    removed = {f"post-{100 * n + 9}" for n in range(3)}
    shown = {base64.b64decode(m["member"]).decode() for m in views[0]}
    assert not shown & removed

    async def bad() -> None:
        async with Client(cluster.client_address("a")) as client:
            await client.publish("counter.add", "likes", b"ten")

    # The client checks a built-in payload before anything is queued (the site checks again).
    with pytest.raises(ValueError, match=r"counter\.add payload must be an ASCII integer"):
        asyncio.run(bad())
