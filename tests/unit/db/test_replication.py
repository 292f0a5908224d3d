"""GTID arithmetic of the db commands, and the checks that refuse a bad failover target or
an unreachable database before anything changes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from multiactive.db.config import database_settings, parse_database_url
from multiactive.db.failover import _check_replica, switchover
from multiactive.db.mariadb import MariaDatabase
from multiactive.db.replication import ServerState, behind, errant, parse_gtids
from multiactive.errors import ConfigError, DatabaseError
from multiactive.model.topology import parse_topology
from multiactive.procs import free_port


def test_gtid_positions_compare_per_domain_and_errant_ones_per_server() -> None:
    primary = parse_gtids("0-1-100,0-3-120")
    replica = parse_gtids("0-1-100,0-3-110,0-2-5")
    assert behind(primary, replica) == 10
    assert behind(replica, primary) == 0
    assert errant(replica, primary) == ["0-2-5"]  # server 2 wrote what the primary lacks
    assert errant(primary, primary) == []


def state(site: str, **fields: object) -> ServerState:
    return ServerState(site, True, **fields)  # type: ignore[arg-type]


def test_a_target_that_is_not_a_replica_errant_or_too_far_behind_is_refused() -> None:
    lead = state("bj", gtid_binlog_state="0-1-500")
    with pytest.raises(DatabaseError, match="--to gz: its database is not a replica"):
        _check_replica(state("gz"), lead, 10)
    with pytest.raises(DatabaseError, match="--to gz: its binlog holds errant GTIDs 0-3-2"):
        _check_replica(state("gz", replica_of="h:1", gtid_binlog_state="0-1-400,0-3-2"), lead, 10)
    with pytest.raises(
        DatabaseError, match=r"--to gz: 100 transactions behind bj \(--max-lag 10\)"
    ):
        _check_replica(
            state("gz", replica_of="h:1", gtid_binlog_state="0-1-400", gtid_current_pos="0-1-400"),
            lead,
            10,
        )
    with pytest.raises(DatabaseError, match="--to gz: its database does not answer"):
        _check_replica(ServerState("gz", False, error="refused"), lead, 10)


def test_a_switchover_to_a_site_that_does_not_exist_names_the_option() -> None:
    topology = parse_topology(
        {
            "sites": [
                {"name": "bj", "listen": "127.0.0.1:1"},
                {"name": "gz", "listen": "127.0.0.1:2"},
            ],
            "database": {
                "mode": "writer",
                "writer": "bj",
                "sites": {"bj": {"url": "mysql://u@h/app"}, "gz": {"url": "mysql://u@h/app"}},
            },
        },
        source="topo.toml",
    )

    async def announce(role: object) -> None:
        raise AssertionError("nothing may be announced")

    with pytest.raises(ConfigError, match=r"--to sh: not a site; topo\.toml defines: bj, gz"):
        asyncio.run(switchover(database_settings(topology), "sh", announce))


def test_a_database_url_that_does_not_answer_is_an_error_naming_the_setting() -> None:
    url = parse_database_url(f"mysql://ma:pw@127.0.0.1:{free_port()}/app", "x", Path())
    database = MariaDatabase(url, "topo.toml: database.sites.gz.url")
    with pytest.raises(
        DatabaseError, match=r"topo\.toml: database\.sites\.gz\.url .*:\*\*\*@"
    ) as info:
        asyncio.run(database.open())
    assert info.value.transient


def test_the_db_commands_are_registered_with_their_options() -> None:
    from click.testing import CliRunner

    from multiactive.cli.main import cli

    runner = CliRunner()
    listed = runner.invoke(cli, ["db", "--help"])
    assert listed.exit_code == 0
    for command in ("status", "switchover", "failover", "rejoin"):
        assert command in listed.output
    failover = runner.invoke(cli, ["db", "failover", "--help"])
    assert "--to" in failover.output
    assert "--dry-run" in failover.output
