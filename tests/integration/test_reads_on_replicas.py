"""Reads on real MariaDB replicas: the position gate says when a delayed replica has applied
what the writer had committed, and never before."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from multiactive.db.config import DatabaseSettings, SiteDatabase, parse_database_url
from multiactive.db.positions import CURRENT_MARK, UNKNOWN_MARK, MariaDbGate
from multiactive.procs import free_port
from tests.integration.conftest import DB_SITES

pytestmark = [pytest.mark.integration, pytest.mark.mariadb]

WRITER, REPLICA = "bj-unicom", "gz"
DELAY_S = 2
TABLE = "read_rows"


def settings_for(urls: dict[str, str]) -> DatabaseSettings:
    sites = {
        name: SiteDatabase(
            parse_database_url(url, f"test: database.sites.{name}.url", Path(".")),
            None,
            f"database.sites.{name}",
        )
        for name, url in urls.items()
    }
    return DatabaseSettings("writer", WRITER, sites, "test")


def delay_replica(mariadb: Any, site: str, seconds: int) -> None:
    mariadb.servers[site].sql(f"STOP SLAVE; CHANGE MASTER TO MASTER_DELAY={seconds}; START SLAVE")


def replica_row(mariadb: Any, site: str, key: str) -> str | None:
    found = mariadb.servers[site].sql(f"SELECT v FROM app.{TABLE} WHERE k = '{key}'")
    return found[0][0] if found else None


def test_the_gate_passes_a_delayed_replica_only_once_it_applied_the_writers_write(
    mariadb: Any,
) -> None:
    """A mark taken at a replica with MASTER_DELAY is not passed while the write is missing
    there, and is passed within the delay + 1 s once it arrived."""
    mariadb.servers[WRITER].sql(f"CREATE TABLE app.{TABLE} (k VARCHAR(64) PRIMARY KEY, v TEXT)")
    mariadb.wait_replicated()
    delay_replica(mariadb, REPLICA, DELAY_S)
    settings = settings_for({s: mariadb.processor_url(s) for s in DB_SITES})

    async def run() -> None:
        gate = MariaDbGate(settings, REPLICA)
        writer_gate = MariaDbGate(settings, WRITER)
        try:
            mariadb.servers[WRITER].sql(f"INSERT INTO app.{TABLE} VALUES ('k1', 'new')")
            written = time.monotonic()
            mark = await gate.mark()
            assert mark == mariadb.servers[WRITER].value("@@gtid_binlog_pos")
            assert await writer_gate.mark() == CURRENT_MARK  # the writer waits for nobody
            seen_missing = False
            while not (await gate.passed([mark]))[0]:
                seen_missing = True
                assert time.monotonic() - written < DELAY_S + 1, "not passed after delay + 1 s"
                await asyncio.sleep(0.05)
            assert seen_missing, "the gate passed before the delayed replica had the write"
            assert replica_row(mariadb, REPLICA, "k1") == "new"
            assert gate.statistics().marks == 1
            assert gate.statistics().checks >= 2
        finally:
            await gate.close()
            await writer_gate.close()

    asyncio.run(run())


def test_a_writer_that_does_not_answer_gives_the_unknown_mark(mariadb: Any) -> None:
    """With the writer unreachable, the mark says so ('?': only the upper bound reloads) and
    the failure is counted; the local replica's checks keep working."""
    urls = {s: mariadb.processor_url(s) for s in DB_SITES}
    urls[WRITER] = f"mysql://ma:x@127.0.0.1:{free_port()}/app"
    gate = MariaDbGate(settings_for(urls), REPLICA, writer=lambda: WRITER, timeout_s=0.5)

    async def run() -> None:
        try:
            mark = await gate.mark()
            assert mark == UNKNOWN_MARK
            assert await gate.passed([mark, CURRENT_MARK]) == [False, True]
            stats = gate.statistics()
            assert stats.unknown_marks == 1
            assert stats.errors == 1
            assert "bj-unicom" in (stats.last_error or "")
        finally:
            await gate.close()

    asyncio.run(run())
