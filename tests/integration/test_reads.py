"""The read path on real MariaDB and real site processes: a replica delayed with MASTER_DELAY
serves a stale cache fill, and the site's reloader repairs it as soon as the replica has
passed the write (and not before); pending reloads survive a restart of the site; with the
site's database stopped, cached keys are served, misses raise DatabaseUnavailable, and the
site reports itself degraded."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from multiactive.client import Client
from multiactive.errors import DatabaseUnavailable
from multiactive.local.cluster import LocalCluster
from multiactive.model.topology import load_topology
from multiactive.reads import Cache, Cached, open_cache
from multiactive.replication.handlers import HandlerRegistry
from tests.integration import read_handlers
from tests.integration.conftest import DB_SITES, ClusterFactory, chromium, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.mariadb]

WRITER, REPLICA = "bj-unicom", "gz"
DELAY_S = 2
KEY = "item:1"


def read_cluster(make_cluster: ClusterFactory, mariadb: Any) -> LocalCluster:
    mariadb.servers[WRITER].sql(f"USE app; {read_handlers.CREATE_TABLE}")
    mariadb.wait_replicated()
    database = mariadb.writer_database("bj-unicom")
    reads = {"reload_poll_s": 0.05, "db_probe_interval_s": 0.2}
    cluster = make_cluster(
        DB_SITES, handlers=["read_handlers"], settings={"database": database, "reads": reads}
    )
    cluster.start()
    return cluster


def app_cache(cluster: LocalCluster, site: str) -> Cache:
    """The cache as an application in `site`'s datacenter opens it (the same loaders)."""
    registry = HandlerRegistry()
    read_handlers.setup(registry)
    return open_cache(load_topology(cluster.topology_path), site, loaders=registry.loaders)


def save(cluster: LocalCluster, key: str, value: bytes) -> None:
    async def run() -> None:
        async with Client(cluster.client_address(WRITER)) as client:
            await client.publish(read_handlers.SAVE_TYPE, key, value)

    asyncio.run(run())


def row_at(mariadb: Any, site: str, key: str) -> str | None:
    found = mariadb.servers[site].sql(f"SELECT v FROM app.read_items WHERE k = '{key}'")
    return found[0][0] if found else None


def delay_replica(mariadb: Any, seconds: int) -> None:
    mariadb.servers[REPLICA].sql(
        f"STOP SLAVE; CHANGE MASTER TO MASTER_DELAY={seconds}; START SLAVE"
    )


Check = Callable[[Cached | None], Awaitable[None]]


async def poll(
    cache: Cache,
    key: str,
    until: Callable[[Cached | None], bool],
    timeout_s: float,
    each: Check | None = None,
) -> float:
    """Read `key` from the cache until `until` holds; the seconds it took."""
    started = time.monotonic()
    while True:
        held = await cache.get(key)
        if until(held):
            return time.monotonic() - started
        if each is not None:
            await each(held)
        assert time.monotonic() - started < timeout_s, f"{key} still {held} after {timeout_s} s"
        await asyncio.sleep(0.02)


def test_a_stale_fill_from_a_delayed_replica_is_reloaded_once_the_replica_passed_the_write(
    make_cluster: ClusterFactory, mariadb: Any
) -> None:
    """MASTER_DELAY=2 at gz: the fill reads v1 while the writer holds v2; the site reloads
    the key within delay + 1 s of the write, and never while the replica still lacks it."""
    cluster = read_cluster(make_cluster, mariadb)
    save(cluster, KEY, b"v1")
    wait_for(lambda: row_at(mariadb, WRITER, KEY) == "v1", 10, "v1 at the writer")
    mariadb.wait_replicated()
    delay_replica(mariadb, DELAY_S)
    save(cluster, KEY, b"v2")
    wait_for(lambda: row_at(mariadb, WRITER, KEY) == "v2", 10, "v2 at the writer")
    written = time.monotonic()

    async def run() -> None:
        async with app_cache(cluster, REPLICA) as cache:
            filled = await cache.get_or_load(KEY)
            assert filled is not None
            assert (filled.value, filled.filled) == (b"v1", True), "the fill was not stale"

            async def never_early(held: Cached | None) -> None:
                if row_at(mariadb, REPLICA, KEY) == "v1":
                    assert held is not None
                    assert held.value == b"v1", "reloaded before the replica had the write"

            await poll(cache, KEY, lambda h: h is not None and h.value == b"v2",
                       DELAY_S + 3, never_early)  # fmt: skip
        took = time.monotonic() - written
        assert took <= DELAY_S + 1, f"repaired {took:.2f} s after the write"

    asyncio.run(run())
    reads = cluster.status(REPLICA).reads
    assert reads is not None
    assert reads.loaders == ("item:",)
    assert (reads.reloads.reloads, reads.reloads.repaired, reads.reloads.pending) == (1, 1, 0)
    assert reads.reloads.at_deadline == 0
    assert reads.database.reachable is True


def test_reloads_pending_when_the_site_restarts_run_after_it_once_the_delay_is_lifted(
    make_cluster: ClusterFactory, mariadb: Any
) -> None:
    """A stale fill queued while gz's site process is down (MASTER_DELAY=600) is still
    queued when it starts again; lifting the delay repairs it in seconds, not the 600 s of
    reload_after_s."""
    cluster = read_cluster(make_cluster, mariadb)
    save(cluster, KEY, b"v1")
    wait_for(lambda: row_at(mariadb, WRITER, KEY) == "v1", 10, "v1 at the writer")
    mariadb.wait_replicated()
    delay_replica(mariadb, 600)
    save(cluster, KEY, b"v2")
    wait_for(lambda: row_at(mariadb, WRITER, KEY) == "v2", 10, "v2 at the writer")
    assert cluster.terminate(REPLICA) == 0

    async def fill() -> None:
        async with app_cache(cluster, REPLICA) as cache:
            filled = await cache.get_or_load(KEY)
            assert filled is not None
            assert filled.value == b"v1"

    asyncio.run(fill())
    cluster.restart(REPLICA)

    def pending() -> int:
        reads = cluster.status(REPLICA).reads
        return -1 if reads is None or reads.reloads.rounds == 0 else reads.reloads.pending

    wait_for(lambda: pending() == 1, 10, "the restarted site to find the pending reload")
    lifted = time.monotonic()
    delay_replica(mariadb, 0)

    async def repaired() -> None:
        async with app_cache(cluster, REPLICA) as cache:
            await poll(cache, KEY, lambda h: h is not None and h.value == b"v2", 10)

    asyncio.run(repaired())
    assert time.monotonic() - lifted < 10
    wait_for(lambda: pending() == 0, 5, "the queue to empty")
    reads = cluster.status(REPLICA).reads
    assert reads is not None
    assert (reads.reloads.repaired, reads.reloads.at_deadline) == (1, 0)


def assert_dashboard_shows_degraded(cluster: LocalCluster, tmp_path: Path) -> None:
    """The dashboard page in headless Chromium: gz's state is "degraded" and listed as a
    problem."""
    browser = chromium(tmp_path)
    try:
        browser.get(f"http://{cluster.processes[WRITER].admin}/dashboard")
        script = (
            "const row = [...document.querySelectorAll('#sites tbody tr')]"
            ".find((r) => r.children[0].textContent === arguments[0]);"
            "const problems = [...document.querySelectorAll('#problems a')]"
            ".map((a) => a.dataset.problem + ' ' + a.textContent);"
            "return [row ? row.children[1].textContent : '', problems.join('|')];"
        )
        seen: list[str] = ["", ""]

        def shown() -> bool:
            seen[:] = browser.execute_script(script, REPLICA)
            return seen[0] == "degraded" and "degraded gz is degraded" in seen[1]

        wait_for(shown, 20, f"the dashboard to show gz degraded (saw {seen})")
    finally:
        browser.quit()


def test_with_the_database_stopped_cached_reads_work_misses_fail_and_the_site_is_degraded(
    make_cluster: ClusterFactory, mariadb: Any, tmp_path: Path
) -> None:
    """gz's mariadbd stopped: a cached key is served, a miss raises DatabaseUnavailable,
    /status, the dashboard (in Chromium) and `multiactive status` (exit 1) say degraded;
    the database back, the site reports it healthy again."""
    cluster = read_cluster(make_cluster, mariadb)
    save(cluster, KEY, b"v1")
    wait_for(lambda: row_at(mariadb, WRITER, KEY) == "v1", 10, "v1 at the writer")
    mariadb.wait_replicated()

    def reachable() -> bool | None:
        reads = cluster.status(REPLICA).reads
        return None if reads is None else reads.database.reachable

    async def cached_then_stopped() -> None:
        async with app_cache(cluster, REPLICA) as cache:
            assert await cache.get_or_load(KEY) is not None
            mariadb.servers[REPLICA].kill()
            held = await cache.get_or_load(KEY)
            assert held is not None
            assert held.value == b"v1"
            with pytest.raises(DatabaseUnavailable, match="item:2"):
                await cache.get_or_load("item:2")

    asyncio.run(cached_then_stopped())
    wait_for(lambda: reachable() is False, 10, "gz to report its database unreachable")
    sites = cluster.get(WRITER, "/cluster/status")["sites"]
    assert sites[REPLICA]["reads"]["database"]["reachable"] is False  # the dashboard's source
    done = subprocess.run(
        [sys.executable, "-m", "multiactive", "status", "--topology", str(cluster.topology_path),
         "--json"], capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert any("gz is degraded" in p for p in json.loads(done.stdout)["problems"])
    assert_dashboard_shows_degraded(cluster, tmp_path)
    mariadb.servers[REPLICA].start(read_only=True)
    wait_for(lambda: reachable() is True, 10, "gz to report its database back")
