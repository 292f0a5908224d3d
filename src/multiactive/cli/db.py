"""`multiactive db status | switchover | failover | rejoin`: the database layer's commands."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table

from multiactive.cli.options import json_option, topology_option
from multiactive.clock import SYSTEM_CLOCK
from multiactive.db.auto import (
    DEFAULT_BLOCK_S,
    DEFAULT_DETECT_S,
    DEFAULT_PERIOD_S,
    Detector,
)
from multiactive.db.auto import watch as run_watch
from multiactive.db.config import database_settings
from multiactive.db.control import WriterRole
from multiactive.db.decisions import Decision
from multiactive.db.failover import (
    DEFAULT_MAX_LAG,
    DEFAULT_WAIT_S,
    Announce,
    FailoverResult,
    Report,
)
from multiactive.db.failover import failover as run_failover
from multiactive.db.failover import rejoin as run_rejoin
from multiactive.db.failover import switchover as run_switchover
from multiactive.db.replication import DbStatus, db_status
from multiactive.errors import ClusterError, ConfigError
from multiactive.logs import get_logger
from multiactive.model.topology import Topology, load_topology
from multiactive.security.tokens import admin_headers

log = get_logger("db")
DECISION_POST_TIMEOUT_S = 2.0

to_option = click.option("--to", "target", required=True, help="The site that becomes the writer.")
dry_run_option = click.option("--dry-run", is_flag=True, help="Check and print the steps only.")
max_lag_option = click.option(
    "--max-lag", default=DEFAULT_MAX_LAG, help="Refuse a target more transactions behind."
)
wait_option = click.option(
    "--wait-s", default=DEFAULT_WAIT_S, help="How long the target may take to catch up."
)


@click.group()
def db() -> None:
    """The database: writer role, replication, switchover and failover (docs/database.md)."""


@db.command()
@topology_option
@json_option
def status(topology_path: Path, as_json: bool) -> None:
    """Writer, epoch and, per site: role, GTID position, IO/SQL threads, lag, errant GTIDs."""
    settings = database_settings(load_topology(topology_path))
    answer = asyncio.run(db_status(settings))
    if as_json:
        click.echo(json.dumps(answer.to_json(), indent=2))
        return
    _print_status(answer)


@db.command()
@topology_option
@to_option
@dry_run_option
@max_lag_option
@wait_option
@json_option
def switchover(
    topology_path: Path, target: str, dry_run: bool, max_lag: int, wait_s: float, as_json: bool
) -> None:
    """Planned: the old primary goes read_only, the target catches up and is promoted."""
    _move_role(run_switchover, topology_path, target, dry_run, max_lag, wait_s, as_json)


@db.command()
@topology_option
@to_option
@dry_run_option
@max_lag_option
@wait_option
@json_option
def failover(
    topology_path: Path, target: str, dry_run: bool, max_lag: int, wait_s: float, as_json: bool
) -> None:
    """Unplanned: the primary does not answer; promote the target, fence the old writer."""
    _move_role(run_failover, topology_path, target, dry_run, max_lag, wait_s, as_json)


def _move_role(
    run: Callable[..., Coroutine[Any, Any, FailoverResult]], topology_path: Path, target: str,
    dry_run: bool, max_lag: int, wait_s: float, as_json: bool,
) -> None:  # fmt: skip
    """A switchover or a failover, its steps printed as they happen, then its result."""
    topology = load_topology(topology_path)
    moved = run(
        database_settings(topology), target, _announcer(topology),
        dry_run=dry_run, max_lag=max_lag, wait_s=wait_s, report=_reporter(as_json),
    )  # fmt: skip
    _finish(asyncio.run(moved), as_json)


@db.command()
@topology_option
@click.argument("site")
@click.option("--rebuild", is_flag=True, help="With errant GTIDs: replace its database by a "
              "dump of the primary's (needs mariadb-client).")  # fmt: skip
@json_option
def rejoin(topology_path: Path, site: str, rebuild: bool, as_json: bool) -> None:
    """Bring an old primary back: read_only, then a replica of the primary."""
    settings = database_settings(load_topology(topology_path))
    answer = run_rejoin(settings, site, rebuild=rebuild, report=_reporter(as_json))
    _finish(asyncio.run(answer), as_json)


@db.command()
@topology_option
@click.option("--auto", "act", is_flag=True, help="Fail over by itself (off: only report).")
@click.option("--period-s", default=DEFAULT_PERIOD_S, help="Seconds between looks.")
@click.option("--detect-s", default=DEFAULT_DETECT_S, help="How long the primary must be lost.")
@click.option("--block-s", default=DEFAULT_BLOCK_S, help="Anti-flap: no second failover within.")
@json_option
def watch(
    topology_path: Path, act: bool, period_s: float, detect_s: float, block_s: float,
    as_json: bool,
) -> None:  # fmt: skip
    """Watch the primary: holistic detection, and with --auto an automatic failover."""
    topology = load_topology(topology_path)

    def show(decision: Decision) -> None:
        if as_json:
            click.echo(json.dumps(decision.to_json()))
        else:
            target = f" -> {decision.target}" if decision.target else ""
            click.echo(f"{decision.action}{target}: {decision.reason}")

    async def record(decision: Decision) -> None:
        await asyncio.to_thread(post_decision, topology, decision)

    asyncio.run(
        run_watch(
            database_settings(topology),
            _announcer(topology),
            Detector(detect_s, block_s),
            SYSTEM_CLOCK,
            period_s=period_s,
            act=act,
            report=show,
            record=record,
            watcher=f"{socket.gethostname()}:{os.getpid()}",
        )
    )


def post_decision(topology: Topology, decision: Decision) -> list[str]:
    """Tell every site's admin API of a decision (`POST /db/decisions`), for its history and
    the dashboard; the sites that did not take it, each named in a WARNING (the decision
    stands: the watcher's own log has it)."""
    missed = []
    body = json.dumps(decision.to_json()).encode()
    for site in topology.sites:
        if site.admin is None:
            continue
        request = urllib.request.Request(
            f"http://{site.admin}/db/decisions", data=body, method="POST",
            headers={"Content-Type": "application/json", **admin_headers()},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=DECISION_POST_TIMEOUT_S) as response:
                response.read()
        except (OSError, urllib.error.URLError) as exc:
            log.warning("db_decision_not_told", site=site.name, error=str(exc))
            missed.append(site.name)
    return missed


def _announcer(topology: Topology) -> Announce:
    async def announce(role: WriterRole) -> None:
        await asyncio.to_thread(post_writer, topology, role)

    return announce


def post_writer(topology: Topology, role: WriterRole) -> None:
    """Journal the control message at the new writer's site (its admin API)."""
    site = topology.site(role.writer)
    if site.admin is None:
        raise ConfigError(f"site {site.name} has no admin address (sites[].admin)")
    request = urllib.request.Request(
        f"http://{site.admin}/db/writer", data=role.encode(), method="POST",
        headers=admin_headers(),  # [tls]: a failover change needs the admin token
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
    except (OSError, urllib.error.URLError) as exc:
        raise ClusterError(
            f"site {site.name} did not take the writer message at {site.admin}: {exc}; the "
            f"database is promoted: retry with POST /db/writer {role.encode().decode()}"
        ) from exc


def _reporter(as_json: bool) -> Report:
    return (lambda line: None) if as_json else click.echo


def _finish(result: FailoverResult, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    elif not result.dry_run:
        click.echo(f"{result.kind} to {result.target}: done (epoch {result.epoch})")


def _print_status(answer: DbStatus) -> None:
    console = Console()
    console.print(
        f"mode {answer.mode}  writer {answer.writer}  epoch {answer.epoch}  "
        f"primary {answer.primary or 'none answers'}"
    )
    table = Table(box=box.SIMPLE)
    for column in ("site", "role", "gtid", "io/sql", "lag tx", "lag s", "errant", "error"):
        table.add_column(column)
    for site in answer.sites:
        s = site.state
        table.add_row(
            site.site,
            site.role,
            s.gtid_current_pos,
            f"{s.io_running}/{s.sql_running}" if s.is_replica else "",
            "" if site.lag_transactions is None else str(site.lag_transactions),
            "" if s.seconds_behind is None else str(s.seconds_behind),
            ", ".join(site.errant_gtids),
            (s.error or s.last_error)[:60],
        )
    console.print(table)
