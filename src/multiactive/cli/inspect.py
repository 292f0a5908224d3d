"""`multiactive status` and `multiactive lag`: a running topology, from every site's admin API."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table

from multiactive.cli.options import json_option, topology_option
from multiactive.errors import ConfigError, DecodeError
from multiactive.model.topology import SiteConfig, Topology, load_topology
from multiactive.records import (
    ClusterLag,
    ClusterTrace,
    Decision,
    LinkView,
    PositionTrace,
    SiteStatus,
    TraceAnswer,
    link_views,
)
from multiactive.security.tokens import admin_headers


def fetch_status(site: SiteConfig, timeout_s: float = 5.0) -> SiteStatus | None:
    """A site's /status, or None when it does not answer."""
    if site.admin is None:
        raise ConfigError(f"site {site.name} has no admin address (sites[].admin)")
    answer = _get_json(site, "/status", timeout_s)
    return None if answer is None else SiteStatus.from_json(answer)


def _statuses(topology: Topology) -> dict[str, SiteStatus | None]:
    return {site.name: fetch_status(site) for site in topology.sites}


EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1  # a site down, a link not streaming, dead letters
EXIT_UNREACHABLE = 2  # no site answered


def cluster_problems(
    topology: Topology, statuses: dict[str, SiteStatus | None], views: list[LinkView]
) -> list[str]:
    """What is wrong now, one line each: sites that do not answer, links not streaming (with
    what the origin owes), dead letters."""
    problems = []
    for name, site_status in statuses.items():
        if site_status is None:
            problems.append(f"site {name} does not answer on {topology.site(name).admin}")
        elif site_status.dead_letters:
            problems.append(
                f"site {name} holds {site_status.dead_letters} dead letters "
                "(multiactive deadletters)"
            )
        if site_status is not None and site_status.reads and site_status.reads.degraded:
            error = site_status.reads.database.error or "no answer"
            problems.append(f"site {name} is degraded: its database does not answer ({error})")
    for view in views:
        if not view.healthy:
            age = "" if view.owed_age_s is None else f", the oldest {view.owed_age_s:.1f} s old"
            problems.append(f"link {view.name} is {view.state}: {view.owed_messages:,} owed{age}")
    return problems


def exit_code(statuses: dict[str, SiteStatus | None], problems: list[str]) -> int:
    """0 healthy, 1 unhealthy, 2 when no site answered."""
    if all(s is None for s in statuses.values()):
        return EXIT_UNREACHABLE
    return EXIT_UNHEALTHY if problems else EXIT_HEALTHY


def cluster_link_views(
    topology: Topology, statuses: dict[str, SiteStatus | None]
) -> list[LinkView]:
    """Every link with both its ends merged (`records.link_views`, as the dashboard)."""
    ends = [link for st in statuses.values() if st is not None for link in st.links]
    return link_views(topology.links, ends)


def _finish(console: Console, statuses: dict[str, SiteStatus | None], problems: list[str]) -> None:
    """Print the problems and exit with the health code."""
    for problem in problems:
        console.print(f"[red]problem[/] {problem}")
    code = exit_code(statuses, problems)
    if code == EXIT_HEALTHY:
        console.print("[green]healthy[/]")
    raise SystemExit(code)


@click.command()
@topology_option
@json_option
def status(topology_path: Path, as_json: bool) -> None:
    """Every link: state (both ends merged), owed messages and their age, window, round trip,
    rate; each site's database and pending cache reloads. Exit code 0 healthy, 1 unhealthy
    (a site down, a link cut or stalled, dead letters, a site degraded because its database
    does not answer), 2 when no site answers."""
    topology = load_topology(topology_path)
    statuses = _statuses(topology)
    views = cluster_link_views(topology, statuses)
    problems = cluster_problems(topology, statuses, views)
    if as_json:
        click.echo(json.dumps({
            "links": [v.to_json() for v in views], "problems": problems,
            "sites": {n: s and s.to_json() for n, s in statuses.items()},
        }, indent=2))  # fmt: skip
        raise SystemExit(exit_code(statuses, problems))
    table = Table(box=box.SIMPLE_HEAD, title=f"cluster {topology.name}", title_justify="left")
    for column in ("link", "mode", "state", "owed", "owed age s", "window", "rtt ms", "msg/s",
                   "conn"):  # fmt: skip
        table.add_column(
            column, justify="left" if column in ("link", "mode", "state") else "right", no_wrap=True
        )
    for v in views:
        table.add_row(
            v.name, v.mode, _state(v.state), f"{v.owed_messages:,}", _num(v.owed_age_s, 1),
            _mib(v.window_bytes), _num(v.rtt_ms, 1), f"{v.messages_per_s:,.0f}", str(v.connects),
        )  # fmt: skip
    console = Console()
    console.print(table)
    for v in views:
        for error in v.errors:
            console.print(f"[dim]last error {v.name} ({error})[/]")
    _print_stuck(console, statuses)
    _print_db(console, statuses)
    _print_reads(console, statuses)
    _finish(console, statuses, problems)


def _print_db(console: Console, statuses: dict[str, SiteStatus | None]) -> None:
    """The DB apply at each site (writer, epoch, rows, retries, fence refusals) and the
    newest failover decision a watcher told the sites of."""
    answered = {name: s for name, s in statuses.items() if s is not None and s.db is not None}
    if not answered:
        return
    table = Table(box=box.SIMPLE_HEAD, title="database", title_justify="left")
    for column in ("site", "mode", "role", "writer", "epoch", "applied", "transactions",
                   "retries", "dead letters", "fence refusals", "last error"):  # fmt: skip
        table.add_column(column, justify="right" if column[0] in "aetdf" else "left")
    decisions: list[Decision] = []
    for name, site_status in answered.items():
        db = site_status.db
        assert db is not None
        table.add_row(
            name, db.mode, "writes" if db.active else "replica", db.writer or "every site",
            str(db.epoch), f"{db.applied_messages:,}", f"{db.transactions:,}", f"{db.retries:,}",
            f"{db.parked_messages:,}", f"{db.fence_refusals:,}", (db.last_error or "")[:60],
        )  # fmt: skip
        decisions += site_status.db_decisions
    console.print(table)
    if decisions:
        d = max(decisions, key=lambda x: x.at_ms)
        when = time.strftime("%H:%M:%S", time.localtime(d.at_ms / 1000))
        target = f" -> {d.target}" if d.target else ""
        console.print(f"last failover decision {when} by {d.watcher or 'a watcher'}: "
                      f"{d.action}{target}: {d.reason}")  # fmt: skip


def _print_reads(console: Console, statuses: dict[str, SiteStatus | None]) -> None:
    """Each site's read side: its database's health and the reloads of cache fills."""
    answered = {n: s.reads for n, s in statuses.items() if s is not None and s.reads is not None}
    if not answered:
        return
    table = Table(box=box.SIMPLE_HEAD, title="reads", title_justify="left")
    for column in ("site", "database", "pending reloads", "oldest s", "reloads", "repaired",
                   "at deadline", "failures", "loaders"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("site", "database", "loaders")
                         else "right")  # fmt: skip
    now_ms = time.time() * 1000
    for name, reads in answered.items():
        r, up = reads.reloads, reads.database.reachable
        health = "?" if up is None else "[green]ok[/]" if up else "[red]degraded[/]"
        table.add_row(
            name, health, f"{r.pending:,}", _num(r.oldest_age_s(now_ms), 1), f"{r.reloads:,}",
            f"{r.repaired:,}", f"{r.at_deadline:,}", f"{r.failures:,}",
            " ".join(reads.loaders) or "-",
        )  # fmt: skip
    console.print(table)


def _print_stuck(console: Console, statuses: dict[str, SiteStatus | None]) -> None:
    """Handlers running for over a second, each holding its stream, named by message."""
    for name, site_status in statuses.items():
        for r in () if site_status is None else site_status.processor.stuck_handlers:
            console.print(
                f"[yellow]stuck handler[/] at {name}: {r.type} id {r.id} ({r.origin}/"
                f"{r.partition}@{r.seq}) running {r.running_s:.1f} s, attempt {r.attempt}, "
                f"timeout {r.timeout_s:g} s"
            )


def cluster_lags(statuses: dict[str, SiteStatus | None]) -> list[ClusterLag]:
    """Per (site, origin): the cluster's best knowledge of how far the site is behind.

    A site alone knows an origin's heads only from that origin's heartbeats, which stop when
    the link is cut. Here the origin's own heads and its sender-side view of the link (oldest
    unacknowledged message) are used whenever the origin answers.
    """
    own = {name: _heads_of(st, name) for name, st in statuses.items() if st is not None}
    senders = {
        (link.origin, link.receiver): link
        for st in statuses.values()
        if st is not None
        for link in st.links
        if link.side == "sender"
    }
    rows = []
    for site, site_status in statuses.items():
        if site_status is None:
            continue
        for origin, totals in site_status.origins.items():
            origin_head = max(totals.origin_head, sum(own.get(origin, {}).values()))
            lag_s = totals.lag_s
            sender = senders.get((origin, site))
            if sender is not None and sender.oldest_unreceived_age_s is not None:
                lag_s = max(lag_s or 0.0, sender.oldest_unreceived_age_s)
            rows.append(
                ClusterLag(site, origin, origin_head, totals.head, totals.applied,
                           origin_head - totals.applied, lag_s)
            )  # fmt: skip
    return rows


def _heads_of(status: SiteStatus, origin: str) -> dict[int, int]:
    return {s.partition: s.head for s in status.streams if s.origin == origin}


@click.command()
@topology_option
@json_option
def lag(topology_path: Path, as_json: bool) -> None:
    """Per site and origin: what the origin holds, what arrived, what is applied, how far
    behind. Exit code as for `status`: 0 healthy, 1 unhealthy, 2 no site answers."""
    topology = load_topology(topology_path)
    statuses = _statuses(topology)
    rows = cluster_lags(statuses)
    problems = cluster_problems(topology, statuses, cluster_link_views(topology, statuses))
    if as_json:
        click.echo(json.dumps([row.to_json() for row in rows], indent=2))
        raise SystemExit(exit_code(statuses, problems))
    table = Table(box=box.SIMPLE_HEAD, title=f"cluster {topology.name}", title_justify="left")
    for column in ("site", "origin", "origin head", "received", "applied", "lag msgs", "lag s"):
        table.add_column(
            column, justify="left" if column in ("site", "origin") else "right", no_wrap=True
        )
    for row in rows:
        table.add_row(
            row.site, row.origin, f"{row.origin_head:,}", f"{row.received:,}",
            f"{row.applied:,}", f"{row.lag_messages:,}", _num(row.lag_s, 2),
        )  # fmt: skip
    console = Console()
    console.print(table)
    _finish(console, statuses, problems)


def _state(state: str) -> str:
    colour = {"streaming": "green", "connecting": "yellow", "stalled": "red", "cut": "red"}
    return f"[{colour.get(state, 'white')}]{state}[/]"


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _mib(value: int) -> str:
    return f"{value / (1 << 20):.1f}M"


def _get_json(site: SiteConfig, path: str, timeout_s: float = 5.0) -> Any:
    if site.admin is None:
        return None
    try:
        # [tls] admin_read = "token": read-only endpoints need the admin token too
        request = urllib.request.Request(f"http://{site.admin}{path}", headers=admin_headers())
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            return json.load(resp)
    except (OSError, urllib.error.URLError, ValueError):
        return None


def trace_request(topology: Topology, request_id: str) -> ClusterTrace:
    """Find a request id at its origin, then ask every site where that message stands."""
    answer: TraceAnswer | None = None
    for site in topology.sites:
        found = _get_json(site, f"/trace/{urllib.parse.quote(request_id, safe='')}")
        if found is not None and found.get("found"):
            answer = TraceAnswer.from_json(found)
            break
    if answer is None or answer.position is None:
        return ClusterTrace(request_id, False)
    origin, partition, seq = answer.position
    query = f"/trace/position?origin={origin}&partition={partition}&seq={seq}"
    sites = {site.name: _trace_at(site, query) for site in topology.sites}
    statuses = {site.name: fetch_status(site) for site in topology.sites}
    views = {v.receiver: v for v in cluster_link_views(topology, statuses) if v.origin == origin}
    for name, here in sites.items():
        view = views.get(name)
        if here is not None and not here.received and view is not None:
            sites[name] = replace(here, why=_not_received(view))
    return ClusterTrace(request_id, True, origin, answer.message, sites, views)


def _not_received(view: LinkView) -> str:
    """Why a site lacks the message, in the link's figures (the same as `status` shows)."""
    age = "" if view.owed_age_s is None else f", the oldest {view.owed_age_s:.1f} s old"
    errors = f"; last error {'; '.join(view.errors)}" if view.errors else ""
    return (
        f"not received: link {view.name} is {view.state}, {view.owed_messages:,} owed{age}{errors}"
    )


def _trace_at(site: SiteConfig, query: str) -> PositionTrace | None:
    found = _get_json(site, query)
    try:
        return None if found is None else PositionTrace.from_json(found)
    except DecodeError:
        return None


@click.command()
@click.argument("request_id")
@topology_option
@json_option
def trace(request_id: str, topology_path: Path, as_json: bool) -> None:
    """Where the write with REQUEST_ID is in every site: received, applied, or why not."""
    topology = load_topology(topology_path)
    result = trace_request(topology, request_id)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    console = Console()
    if not result.found or result.message is None:
        console.print(f"[red]{request_id}[/]: no site knows this request id (ids are indexed "
                      "at their origin; is the origin up, or was the id trimmed?)")  # fmt: skip
        raise SystemExit(1)
    m = result.message
    where = f"partition {m.partition}, seq {m.seq}, version {m.version}"
    console.print(f"{request_id}: {m.type} {m.key!r} accepted at {result.origin} ({where})")
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("site", "received", "applied", "detail"):
        table.add_column(column, no_wrap=column != "detail")
    for name, here in result.sites.items():
        if here is None:
            table.add_row(name, "?", "?", "[red]site unreachable[/]")
            continue
        times = {r.stage: r.at_ms for r in here.audit or ()}
        received = _yes(here.received) + _at(times.get("received") or times.get("accepted"))
        applied = _yes(here.applied) + _at(times.get("applied"))
        table.add_row(name, received, applied, here.why)
    console.print(table)


def _at(ms: int | None) -> str:
    """` at 10:00:00.123` from the audit trail, when it has the stage."""
    if ms is None:
        return ""
    return f" at {datetime.fromtimestamp(ms / 1000).strftime('%H:%M:%S.%f')[:-3]}"


def _yes(flag: bool) -> str:
    return "[green]yes[/]" if flag else "[red]no[/]"
