"""`multiactive demo`: three sites on this machine; writes everywhere; a convergence report."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import click
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from multiactive import aio
from multiactive.demo import DemoOptions, DemoResult, Snapshot, run_demo
from multiactive.local.redis import redis_server_path
from multiactive.records import OriginTotals, SiteStatus


@click.command()
@click.option(
    "--duration",
    default=20.0,
    type=click.FloatRange(min=0.5),
    help="Seconds of writes at all sites.",
)
@click.option(
    "--rate",
    default=3000.0,
    type=click.FloatRange(min=1),
    help="Writes per second, all sites together.",
)
@click.option(
    "--keys",
    default=500,
    type=click.IntRange(min=1),
    help="Size of the shared key space; small means many conflicting writes.",
)
@click.option(
    "--backend",
    default="sqlite",
    type=click.Choice(["sqlite", "memory", "redis"]),
    help="Journal and state backend of every site (redis: one redis-server per site).",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Keep the sites' data and logs here instead of a temporary folder.",
)
@click.option(
    "--database",
    default="embedded",
    type=click.Choice(["embedded", "mariadb"]),
    help="mariadb: writer mode on 3 real mariadbd, the writer failed over mid-run "
    "(docs/database.md); --rate and --duration apply, default 1000 writes/s for 20 s.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON, no live view.")
def demo(
    duration: float,
    rate: float,
    keys: int,
    backend: str,
    data_dir: Path | None,
    database: str,
    as_json: bool,
) -> None:
    """Run three sites (bj-unicom, bj-telecom, gz) on this machine and show them converge.

    Exits 0 only when every site applied every write and all state digests are equal (with
    --database mariadb: every acknowledged write once in every database, checksums equal).
    """
    if database == "mariadb":
        _db_demo(duration, min(rate, 1000.0), data_dir, as_json)
        return
    if backend == "redis":
        redis_server_path()  # a clear error, naming the Debian package, before anything runs
    options = DemoOptions(duration, rate, keys, backend, data_dir)
    console = Console(stderr=as_json)
    if as_json:
        result = aio.run(run_demo(options, lambda snap: _phase_line(console, snap)))
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        console.print(
            f"[bold]multiactive demo[/]: 3 sites, {rate:.0f} writes/s for {duration:.0f} s "
            f"over {keys} shared keys, {backend} backends"
        )
        with Live(console=console, refresh_per_second=4, transient=False) as live:
            result = aio.run(run_demo(options, lambda snap: live.update(_progress(snap))))
        _report(console, result)
    sys.exit(0 if result.converged else 1)


_last_phase: list[str] = []


def _phase_line(console: Console, snap: Snapshot) -> None:
    if not _last_phase or _last_phase[-1] != snap.phase:
        _last_phase.append(snap.phase)
        console.print(f"{snap.elapsed_s:6.1f}s  {snap.phase}")


def _progress(snap: Snapshot) -> Group:
    table = Table(
        title=f"{snap.phase} — {snap.elapsed_s:.1f} s", title_justify="left", box=box.SIMPLE_HEAD
    )
    table.add_column("site", no_wrap=True)
    table.add_column("acked", justify="right", no_wrap=True)
    sites = list(snap.statuses)
    for origin in sites:
        table.add_column(origin, justify="right", no_wrap=True)
    table.add_column("p50/p99", justify="right", no_wrap=True)
    table.caption = "per origin: received/applied here (canaries included); apply latency in ms"
    for site, status in snap.statuses.items():
        counts = snap.workload.counts.get(site)
        origins = {} if status is None else status.origins
        cells = [_pair(origins.get(o)) for o in sites]
        p50 = 0.0 if status is None else status.processor.latency_ms_p50 or 0
        p99 = 0.0 if status is None else status.processor.latency_ms_p99 or 0
        latency = f"{p50:.0f}/{p99:.0f}"
        table.add_row(site, f"{counts.acked:,}" if counts else "-", *cells, latency)
    return Group(table, _links_line(snap.statuses))


def _pair(totals: OriginTotals | None) -> str:
    return "-" if totals is None else f"{totals.head:,}/{totals.applied:,}"


def _links_line(statuses: dict[str, SiteStatus | None]) -> Text:
    states: dict[str, str] = {}
    for status in statuses.values():
        for link in () if status is None else status.links:
            if link.side == "receiver":
                states[link.name] = link.state
    line = Text("links: ")
    colour = {"streaming": "green", "connecting": "yellow"}
    for name, state in sorted(states.items()):
        line.append(f"{name} {state}  ", style=colour.get(state, "red"))
    return line


def _report(console: Console, result: DemoResult) -> None:
    console.print()
    table = Table(title="convergence report", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("site", no_wrap=True)
    for origin in result.sites:
        table.add_column(origin, justify="right", no_wrap=True)
    table.add_column("state digest", no_wrap=True)
    table.caption = (
        "per origin: messages received/applied at each site; these count the sites' canaries "
        "too (one message per partition every canary_interval_s, type ma.canary), so they "
        "exceed the acknowledged writes below"
    )
    for site, origins in result.sites.items():
        cells = [_pair(origins.get(o)) for o in result.sites]
        table.add_row(site, *cells, result.digests.get(site, "?")[:12])
    console.print(table)
    acked = sum(result.acked.values())
    console.print(
        f"acknowledged writes: {acked:,} in {result.write_s:.1f} s; "
        f"every site applied everything {result.catch_up_s:.1f} s after the last write"
    )
    if result.cut:
        cut = result.cut
        console.print(
            f"{cut['site']} was cut off for {cut['cut_for_s']:.1f} s while every site "
            f"kept writing; {cut['backlog_at_heal']:,} messages were owed at the heal, "
            f"received everywhere {cut['catch_up_after_heal_s']:.1f} s later"
        )
    if result.converged:
        console.print("[bold green]converged[/]: every site applied every write; digests are equal")
    else:
        for problem in result.problems:
            console.print(f"[bold red]not converged[/]: {problem}")
        console.print(f"logs and data: {result.data_dir}")


def _db_demo(duration: float, rate: float, data_dir: Path | None, as_json: bool) -> None:
    from multiactive.cli.db import post_writer
    from multiactive.local.dbdemo import run_db_demo
    from multiactive.local.mariadb import mariadb_program

    for program in ("mariadbd", "mariadb-install-db", "mariadb", "mariadb-dump"):
        mariadb_program(program)  # a clear error naming the Debian packages
    say = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    with tempfile.TemporaryDirectory(prefix="multiactive-dbdemo-") as tmp:
        root = data_dir or Path(tmp)
        result = run_db_demo(root, duration, rate, post_writer, say)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        click.echo(f"{result.acknowledged} writes acknowledged; failover {result.failover_s:.2f} s")
        for name, figures in result.databases.items():
            click.echo(
                f"  {name:<11} rows {figures['rows']:>7}  request ids {figures['distinct']:>7}  "
                f"checksum {figures['checksum']}"
            )
        moved = "failed over" if result.failed_over else "NOT failed over"
        click.echo(f"writer {moved}: primary {result.primary or 'none'}, epoch {result.epoch}, "
                   f"rows written by {', '.join(result.writers) or 'nobody'}")  # fmt: skip
        click.echo("equal everywhere, each write once" if result.ok else "NOT EQUAL")
    sys.exit(0 if result.ok else 1)
