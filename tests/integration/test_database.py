"""The database layer on real MariaDB: a primary (bj-unicom) and two GTID replicas, three
real site processes in writer mode."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from multiactive.client import Client
from multiactive.local.cluster import LocalCluster
from multiactive.model.topology import Address
from tests.integration.conftest import DB_SITES, ClusterFactory, wait_for
from tests.integration.db_handlers import WRITES_TABLE

pytestmark = [pytest.mark.integration, pytest.mark.mariadb]

WRITER = "bj-unicom"
TABLES = ("writes", "ma_db_watermarks", "ma_db_fence")


def writer_cluster(make_cluster: ClusterFactory, mariadb: Any, **options: Any) -> LocalCluster:
    mariadb.servers[WRITER].sql(WRITES_TABLE)
    database = {
        "mode": "writer",
        "writer": WRITER,
        "sites": {
            site: {"url": mariadb.processor_url(site), "admin_url": mariadb.admin_url(site)}
            for site in DB_SITES
        },
    }
    cluster = make_cluster(
        DB_SITES, handlers=["db_handlers"], settings={"database": database}, **options
    )
    cluster.start()
    return cluster


async def write_rows(address: Address, count: int, tag: str) -> list[str]:
    async with Client(address) as client:
        acks = await asyncio.gather(
            *(client.publish("test.row", f"{tag}-{i}", b"x" * 64) for i in range(count))
        )
    return [ack.id for ack in acks]


def rows(server: Any) -> tuple[int, int]:
    """(rows, distinct request ids) in `writes`."""
    found = server.sql("SELECT COUNT(*), COUNT(DISTINCT request_id) FROM app.writes")
    return int(found[0][0]), int(found[0][1])


def test_writes_at_three_sites_end_in_the_writers_database_exactly_once(
    make_cluster: ClusterFactory, mariadb: Any
) -> None:
    cluster = writer_cluster(make_cluster, mariadb)
    count = 300
    ids: list[str] = []
    for site in DB_SITES:
        ids += asyncio.run(write_rows(cluster.client_address(site), count, site))
    primary = mariadb.servers[WRITER]
    wait_for(lambda: rows(primary)[0] >= 3 * count, 30, "every write in the primary")
    cluster.wait_converged(timeout_s=30)
    assert rows(primary) == (3 * count, 3 * count)  # each request id exactly once
    stored = {r[0] for r in primary.sql("SELECT request_id FROM app.writes")}
    assert stored == set(ids)
    assert {r[0] for r in primary.sql("SELECT DISTINCT writer FROM app.writes")} == {WRITER}
    mariadb.wait_replicated()
    sums = mariadb.checksums(TABLES)
    assert len(sums) == 3
    assert all(s == sums[WRITER] for s in sums.values()), sums
