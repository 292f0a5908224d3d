"""The database layer on real MariaDB: a primary (bj-unicom) and two GTID replicas, three
real site processes in writer mode."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from multiactive.cli.db import post_decision, post_writer
from multiactive.client import Client
from multiactive.clock import SYSTEM_CLOCK
from multiactive.db.apply import DbApply
from multiactive.db.auto import Detector, watch
from multiactive.db.config import database_settings, parse_database_url
from multiactive.db.control import WriterRole
from multiactive.db.decisions import Decision
from multiactive.db.failover import failover, rejoin, switchover
from multiactive.db.mariadb import MariaDatabase
from multiactive.db.rowlog import CREATE_TABLE, ROW_TYPE, TABLE, save_row
from multiactive.errors import DatabaseError
from multiactive.journal import MemoryJournal
from multiactive.local.cluster import LocalCluster
from multiactive.local.rowload import FirstWrite, RowLoad, row_ids, rows
from multiactive.model.message import StreamId
from multiactive.model.topology import Address, ReplicationSettings, load_topology, parse_topology
from tests.integration.conftest import DB_SITES, ClusterFactory, wait_for
from tests.unit.replication.test_processor import feed, msg

pytestmark = [pytest.mark.integration, pytest.mark.mariadb]

WRITER = "bj-unicom"
TABLES = (TABLE, "ma_db_watermarks", "ma_db_fence")


def writer_cluster(make_cluster: ClusterFactory, mariadb: Any, **options: Any) -> LocalCluster:
    mariadb.servers[WRITER].sql(f"USE app; {CREATE_TABLE}")
    database = mariadb.writer_database("bj-unicom")
    cluster = make_cluster(
        DB_SITES, handlers=["multiactive.db.rowlog"], settings={"database": database}, **options
    )
    cluster.start()
    return cluster


async def publish_rows(address: Address, count: int, tag: str) -> list[str]:
    async with Client(address) as client:
        acks = await asyncio.gather(
            *(client.publish(ROW_TYPE, f"{tag}-{i}", b"x" * 64) for i in range(count))
        )
    return [ack.id for ack in acks]


def test_bad_input_on_real_mariadb_is_refused_and_changes_nothing(mariadb: Any) -> None:
    """An account holding READ ONLY ADMIN is refused for the processors; a switchover to a
    replica too far behind is refused with the primary still writable."""
    admin = parse_database_url(mariadb.admin_url("gz"), "url", Path())
    with pytest.raises(DatabaseError, match=r"holds .*(READ ONLY ADMIN|ALL PRIVILEGES)"):
        asyncio.run(MariaDatabase(admin, "database.sites.gz.url").open())
    primary, gz = mariadb.servers[WRITER], mariadb.servers["gz"]
    gz.sql("STOP SLAVE SQL_THREAD")
    primary.sql("CREATE TABLE app.lagging (n INT); INSERT INTO app.lagging VALUES (1), (2)")
    settings = database_settings(
        parse_topology(
            {
                "sites": [
                    {"name": s, "listen": f"127.0.0.1:{i + 1}"} for i, s in enumerate(DB_SITES)
                ],
                "database": {
                    "mode": "writer",
                    "writer": WRITER,
                    "sites": {s: {"url": mariadb.admin_url(s)} for s in DB_SITES},
                },
            }
        )
    )

    async def announce(role: WriterRole) -> None:
        raise AssertionError("nothing may be announced")

    with pytest.raises(DatabaseError, match=r"--to gz: 2 transactions behind bj-unicom"):
        asyncio.run(switchover(settings, "gz", announce, max_lag=1))
    with pytest.raises(DatabaseError, match=r"--to bj-unicom: it is already the primary"):
        asyncio.run(switchover(settings, WRITER, announce))
    gz.sql("START SLAVE SQL_THREAD")
    mariadb.wait_replicated()
    dry = asyncio.run(switchover(settings, "gz", announce, dry_run=True))
    assert dry.steps
    assert all(step.startswith("would: ") for _, step in dry.steps)
    assert gz.sql("SHOW SLAVE STATUS")  # a dry run changes nothing: still a replica
    assert primary.value("@@read_only") == "0"  # nothing changed
    assert gz.value("@@read_only") == "1"


def writes_at_three_sites_end_in_the_writers_database_exactly_once(
    cluster: LocalCluster, mariadb: Any
) -> list[str]:
    """300 writes at each site: each request id is once in bj-unicom's database, written by
    bj-unicom, and every replica's tables match the primary's (CHECKSUM TABLE)."""
    count = 300
    ids: list[str] = []
    for site in DB_SITES:
        ids += asyncio.run(publish_rows(cluster.client_address(site), count, site))
    primary = mariadb.servers[WRITER]
    wait_for(lambda: rows(primary)[0] >= 3 * count, 30, "every write in the primary")
    assert rows(primary) == (3 * count, 3 * count)  # each request id exactly once
    stored = row_ids(primary)
    assert stored == set(ids)
    assert {r[0] for r in primary.sql(f"SELECT DISTINCT writer FROM app.{TABLE}")} == {WRITER}
    mariadb.wait_replicated()
    sums = mariadb.checksums(TABLES)
    assert len(sums) == 3
    assert all(s == sums[WRITER] for s in sums.values()), sums
    return ids


def assert_exactly_once(server: Any, acked: list[str]) -> None:
    wait_for(lambda: rows(server)[0] >= len(acked), 60, f"{len(acked)} rows at the new primary")
    assert rows(server) == (len(acked), len(acked))  # nothing lost, nothing twice
    assert row_ids(server) == set(acked)


def settings_of(cluster: LocalCluster) -> Any:
    return database_settings(load_topology(cluster.topology_path))


def announcer(cluster: LocalCluster) -> Any:
    topology = load_topology(cluster.topology_path)

    async def announce(role: WriterRole) -> None:
        await asyncio.to_thread(post_writer, topology, role)

    return announce


def test_writes_at_three_sites_end_once_in_the_writer_and_a_switchover_under_load_loses_none(
    make_cluster: ClusterFactory, mariadb: Any
) -> None:
    """(One cluster for two acceptance items: a cluster start costs ~10 s on a busy machine.)
    Writes at three sites land once in the writer's database, replicas match; then a planned
    switchover to gz under load: 0 lost, 0 applied twice, the DB write pause measured."""
    cluster = writer_cluster(make_cluster, mariadb)
    before = writes_at_three_sites_end_in_the_writers_database_exactly_once(cluster, mariadb)
    target = mariadb.servers["gz"]
    with RowLoad(cluster, DB_SITES) as load:
        wait_for(lambda: rows(mariadb.servers[WRITER])[0] > len(before) + 150, 30, "writes flowing")
        first = FirstWrite(target, writer="gz")
        result = asyncio.run(switchover(settings_of(cluster), "gz", announcer(cluster)))
        assert result.read_only_at_s is not None
        pause_ms = (first.wait() - result.read_only_at_s) * 1000
        after = len(load.acked) + 200
        wait_for(lambda: len(load.acked) > after, 30, "load after the switchover")
    print(f"switchover pause {pause_ms:.0f} ms; {len(load.acked)} writes")
    assert_exactly_once(target, before + load.acked)
    status = subprocess.run(
        [sys.executable, "-m", "multiactive", "db", "status", "--json",
         "--topology", str(cluster.topology_path)],
        capture_output=True, check=True, text=True,
    )  # fmt: skip
    answer = json.loads(status.stdout)
    assert (answer["writer"], answer["epoch"], answer["primary"]) == ("gz", 2, "gz")
    roles = {s["site"]: s["role"] for s in answer["sites"]}
    assert roles == {"gz": "primary", "bj-unicom": "replica", "bj-telecom": "replica"}
    mariadb.wait_replicated()
    sums = mariadb.checksums(TABLES)
    assert all(s == sums["gz"] for s in sums.values()), sums
    the_db_apply_and_the_watchers_decisions_are_in_status(cluster)


def the_db_apply_and_the_watchers_decisions_are_in_status(cluster: LocalCluster) -> None:
    """After the switchover: `multiactive status` shows each site's DB apply (gz writes at
    epoch 2, the others do not) and a watcher's decision, told to every site's admin API
    (what `multiactive db watch` does), is kept there (`/db/decisions`, `/status`)."""
    topology = load_topology(cluster.topology_path)
    asyncio.run(watch(settings_of(cluster), announcer(cluster), Detector(), SYSTEM_CLOCK,
                      rounds=1, watcher="test:1", record=_told(topology)))  # fmt: skip
    for site in DB_SITES:
        kept = cluster.get(site, "/db/decisions")
        assert [(d["action"], d["watcher"]) for d in kept["decisions"]] == [("healthy", "test:1")]
        assert kept["decisions"][0]["at_ms"] > 0

    def status() -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, "-m", "multiactive", "status", "--json",
             "--topology", str(cluster.topology_path)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        answer: dict[str, Any] = json.loads(out.stdout)
        return answer

    def gz_counted() -> bool:
        db = (status()["sites"]["gz"] or {}).get("db") or {}
        return db.get("applied_messages", 0) > 0 and db.get("transactions", 0) > 0

    wait_for(gz_counted, 15, "gz's DB apply figures in status")  # reported every second
    sites = status()["sites"]
    dbs = {name: sites[name]["db"] for name in DB_SITES}
    assert {n: (d["writer"], d["epoch"], d["active"]) for n, d in dbs.items()} == {
        "gz": ("gz", 2, True), "bj-unicom": ("gz", 2, False), "bj-telecom": ("gz", 2, False)
    }  # fmt: skip
    assert dbs["bj-unicom"]["applied_messages"] > 0  # what it wrote while it held the role
    assert sites["gz"]["db_decisions"][0]["action"] == "healthy"
    text = subprocess.run(
        [sys.executable, "-m", "multiactive", "status", "--topology", str(cluster.topology_path)],
        capture_output=True, text=True, timeout=30,
    ).stdout  # fmt: skip
    assert "database" in text
    assert "last failover decision" in text
    assert "test:1" in text


def _told(topology: Any) -> Any:
    async def record(decision: Decision) -> None:
        assert await asyncio.to_thread(post_decision, topology, decision) == []

    return record


def test_an_unplanned_failover_applies_what_the_dead_primary_never_shipped_exactly_once(
    make_cluster: ClusterFactory, mariadb: Any
) -> None:
    cluster = writer_cluster(make_cluster, mariadb)
    old, new = mariadb.servers[WRITER], mariadb.servers["gz"]
    with RowLoad(cluster, DB_SITES) as load:
        wait_for(lambda: rows(old)[0] > 150, 30, "writes flowing")
        # The long-haul link to the replicas lags: what the primary commits from now on is
        # not shipped before it dies.
        for name in ("gz", "bj-telecom"):
            mariadb.servers[name].sql("STOP SLAVE IO_THREAD")
        shipped = rows(new)[0]
        wait_for(lambda: rows(old)[0] > shipped + 100, 30, "unshipped commits at the primary")
        first = FirstWrite(new, writer="gz")
        killed_at = time.monotonic()
        old.kill()
        result = asyncio.run(failover(settings_of(cluster), "gz", announcer(cluster)))
        failover_s = first.wait() - killed_at
        after = len(load.acked) + 200
        wait_for(lambda: len(load.acked) > after, 30, "load after the failover")
    print(f"failover {failover_s:.2f} s; {len(load.acked)} writes; steps {result.steps}")
    assert_exactly_once(new, load.acked)
    # The old primary comes back: `rejoin` makes it read_only and finds the transactions it
    # committed and never shipped (errant GTIDs) -- their messages are in gz once, from gz's
    # own journal.
    old.start(read_only=False)
    back = asyncio.run(rejoin(settings_of(cluster), WRITER))
    assert back.errant_gtids, "the old primary had committed transactions it never shipped"
    assert old.value("@@read_only") == "1"
    old_rows, _ = rows(old)
    assert old_rows > shipped  # it holds commits that gz never received from it
    # The old writer cannot write: its transactions are refused by epoch at the new primary,
    # and by read_only at its old primary.
    assert_old_writer_refused(cluster, mariadb)
    # `rejoin --rebuild`: the old primary drops what it never shipped, takes a dump of gz and
    # replicates from it; every table then matches at the three servers.
    rebuilt = asyncio.run(rejoin(settings_of(cluster), WRITER, rebuild=True))
    assert any("replicates from gz" in step for _, step in rebuilt.steps), rebuilt.steps
    mariadb.wait_replicated()
    sums = mariadb.checksums(TABLES)
    assert len(sums) == 3
    assert all(s == sums["gz"] for s in sums.values()), sums


def assert_old_writer_refused(cluster: LocalCluster, mariadb: Any) -> None:
    """A DB apply that still holds epoch 1 at bj-unicom tries one transaction at the new
    primary (refused: the fence says gz, epoch 2) and at its old primary (read_only)."""

    async def attempt(url: str) -> str:
        journal = MemoryJournal(WRITER)
        await journal.open()
        await feed(journal, StreamId("late", 0), msg("late", ROW_TYPE))
        database = MariaDatabase(parse_database_url(url, "url", Path()), "database.sites.x.url")
        await database.open()
        apply = DbApply(
            WRITER, "writer", database, {ROW_TYPE: save_row}.get, journal,
            ReplicationSettings(), SYSTEM_CLOCK, WRITER,
        )  # fmt: skip
        assert not await apply.step()
        await apply.close()
        return apply.last_error or ""

    at_new = asyncio.run(attempt(mariadb.processor_url("gz")))
    assert "fence names writer 'gz' at epoch 2" in at_new
    assert "refused" in at_new
    at_old = asyncio.run(attempt(mariadb.processor_url(WRITER)))
    assert "read-only" in at_old


def test_an_unplanned_failover_with_the_writer_site_killed_too_loses_no_acknowledged_write(
    make_cluster: ClusterFactory, mariadb: Any
) -> None:
    """SIGKILL of bj-unicom's mariadbd and of its site processes under load; `failover --to
    gz`; when the bj-unicom site comes back (its database still dead) it ships what it had
    acknowledged and not yet shipped, and gz applies every acknowledged write exactly once."""
    cluster = writer_cluster(make_cluster, mariadb)
    old, new = mariadb.servers[WRITER], mariadb.servers["gz"]
    with RowLoad(cluster, DB_SITES) as load:
        wait_for(lambda: rows(old)[0] > 150, 30, "writes flowing")
        first = FirstWrite(new, writer="gz")
        old.kill()
        cluster.kill(WRITER)
        asyncio.run(failover(settings_of(cluster), "gz", announcer(cluster)))
        first.wait()
        cluster.restart(WRITER)  # its database is still down: the site runs all the same
        after = len(load.acked) + 200
        wait_for(lambda: len(load.acked) > after, 30, "load after the failover")
    acked = set(load.acked)

    def stored() -> set[str]:
        return row_ids(new)

    # A write journaled at bj-unicom whose answer was lost in the kill may be there too.
    wait_for(lambda: acked <= stored(), 60, "every acknowledged write at the new primary")
    total, distinct = rows(new)
    assert total == distinct  # none applied twice
