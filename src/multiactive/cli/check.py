"""`multiactive check`: the chaos convergence checker, one or more seeds, with live progress."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import click
from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table

from multiactive import aio, failpoints
from multiactive.chaos.checker import ChaosOptions, ChaosProgress, ChaosReport, run_chaos
from multiactive.local.cluster import REDIS_BACKENDS

DEFAULTS = ChaosOptions()
REDIS_KILL_WEIGHT = 0.3  # on Redis: how often a fault kills a redis-server (a cluster node)


@click.command()
@click.option("--seed", default=1, type=int, help="The first seed; a run's writes and faults "
              "all follow from its seed, so a failing seed can be run again.")  # fmt: skip
@click.option(
    "--seeds",
    default=1,
    type=click.IntRange(min=1),
    help="How many seeds to run, one after another: seed, seed+1, ...",
)
@click.option(
    "--duration",
    default=20.0,
    type=click.FloatRange(min=0.5),
    help="Seconds of writes and faults per seed.",
)
@click.option(
    "--rate",
    default=DEFAULTS.rate,
    type=click.FloatRange(min=1),
    help="Planned writes per second, all sites together.",
)
@click.option(
    "--backend",
    default="sqlite",
    type=click.Choice(["sqlite", "memory", "redis", "redis-cluster"]),
    help="Journal and state backend of every site (memory does not survive SIGKILL, so the "
    "check reports its acknowledged writes lost). With redis every site has its own "
    "redis-server, and the faults SIGKILL those too; with redis-cluster its own Redis "
    "Cluster of three masters, one node of which the faults SIGKILL.",
)
@click.option(
    "--failpoint",
    "failpoint_names",
    multiple=True,
    type=click.Choice(sorted(failpoints.KNOWN)),
    help="Testing aid: switch a deliberate fault on in the sites (multiactive.failpoints); "
    "the check must then fail. Repeatable.",
)
@click.option(
    "--keep", is_flag=True, help="Keep every seed's data and logs (a failing seed's are kept)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the reports as JSON, no live view.")
def check(
    seed: int,
    seeds: int,
    duration: float,
    rate: float,
    backend: str,
    failpoint_names: tuple[str, ...],
    keep: bool,
    as_json: bool,
) -> None:
    """Chaos convergence check: three sites take random writes of every built-in operation
    while links are cut and healed and sites (and, on Redis, their redis-servers or
    cluster nodes) are SIGKILLed and restarted; then every site's
    state must be identical, equal a sequential model of the journaled writes, and hold
    every acknowledged write, each applied exactly once.

    Exits 0 only if every seed passes.
    """
    console = Console(stderr=as_json)
    root = Path(tempfile.mkdtemp(prefix="multiactive-check-"))
    reports = []
    for number in range(seed, seed + seeds):
        options = ChaosOptions(
            seed=number, duration_s=duration, rate=rate, backend=backend,
            failpoints=failpoint_names,
            p_redis_kill=REDIS_KILL_WEIGHT if backend in REDIS_BACKENDS else 0.0,
        )  # fmt: skip
        report = _run_seed(console, options, root / f"seed-{number}", as_json)
        if report.ok and not keep:
            shutil.rmtree(report.data_dir, ignore_errors=True)
        reports.append(report)
    if not any(root.iterdir()):
        root.rmdir()
    if as_json:
        passed = all(r.ok for r in reports)
        click.echo(json.dumps({"ok": passed, "seeds": [r.to_json() for r in reports]}, indent=2))
    else:
        _summary(console, reports, root, keep)
    sys.exit(0 if all(r.ok for r in reports) else 1)


def _run_seed(console: Console, options: ChaosOptions, root: Path, as_json: bool) -> ChaosReport:
    if as_json:
        phases: list[str] = []
        report: ChaosReport = aio.run(
            run_chaos(options, root, lambda p: _phase_line(console, phases, p))
        )
        return report
    with Live(console=console, refresh_per_second=4, transient=True) as live:
        report = aio.run(run_chaos(options, root, lambda p: live.update(_progress(p))))
    _seed_report(console, report)
    return report


def _phase_line(console: Console, phases: list[str], progress: ChaosProgress) -> None:
    if not phases or phases[-1] != progress.phase:
        phases.append(progress.phase)
        console.print(f"seed {progress.seed} {progress.elapsed_s:6.1f}s  {progress.phase}")


def _progress(p: ChaosProgress) -> Table:
    table = Table(
        title=f"seed {p.seed}: {p.phase} — {p.elapsed_s:.1f} s",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for column in ("acked", "failed", "kills", "cuts", "isolations"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("down now", no_wrap=True)
    table.add_column("cut now")
    table.add_row(
        f"{p.acked:,}", f"{p.failed:,}", str(p.kills), str(p.cuts), str(p.isolations),
        ", ".join(p.down) or "-", ", ".join(p.cut_links) or "-",
    )  # fmt: skip
    return table


def _seed_report(console: Console, report: ChaosReport) -> None:
    verdict = "[bold green]ok[/]" if report.ok else "[bold red]FAILED[/]"
    console.print(
        f"seed {report.seed}: {verdict} — {report.acked:,} acked, "
        f"{report.failed + report.unsent:,} failed, {report.journaled:,} journaled; "
        f"{report.kills} kills, {report.redis_kills} redis-server kills, {report.cuts} cuts, "
        f"{report.isolations} isolations, {report.refused:,} refused; "
        f"converged {report.converge_s:.1f} s after healing ({report.total_s:.0f} s in all)"
    )
    for problem in report.problems:
        console.print(f"  [red]problem[/]: {problem}", markup=True, highlight=False)
    if not report.ok:
        console.print(f"  data and logs: {report.data_dir}")


def _summary(console: Console, reports: list[ChaosReport], root: Path, keep: bool) -> None:
    failed = [r.seed for r in reports if not r.ok]
    if failed:
        console.print(
            f"[bold red]{len(failed)} of {len(reports)} seeds failed[/]: "
            f"{', '.join(map(str, failed))}; data and logs under {root}"
        )
    else:
        kept = f"; data and logs under {root}" if keep else ""
        console.print(f"[bold green]all {len(reports)} seeds passed[/]{kept}")
