"""`multiactive reconcile`, `deadletters` and `replay`: find what failed, and repair it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from rich import box
from rich.console import Console
from rich.table import Table

from multiactive.cli.options import json_option, topology_option
from multiactive.errors import ConfigError
from multiactive.model.record import decode, encode
from multiactive.model.topology import SiteConfig, Topology, load_topology
from multiactive.records import DeadLetter, ReconcileReport, ReplayResult
from multiactive.security.tokens import admin_headers

T = TypeVar("T")

site_option = click.option("--site", "site_names", multiple=True,
                           help="Only this site (repeatable); default: every site.")  # fmt: skip


def _call(site: SiteConfig, method: str, path: str, body: Any = None) -> Any:
    if site.admin is None:
        raise ConfigError(f"site {site.name} has no admin address (sites[].admin)")
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{site.admin}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    for name, value in admin_headers().items():  # [tls]: mutating endpoints need a token
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.load(response)
    except (OSError, urllib.error.URLError, ValueError):
        return None
    return _NO_RUN if answer is None else answer


def _record(kind: type[T], answer: Any) -> T | None:
    """A site's answer as its record, or None when the site did not answer (or had none)."""
    return None if answer is None or answer == _NO_RUN else decode(kind, answer)


def _sites(topology: Topology, names: tuple[str, ...]) -> list[SiteConfig]:
    return [topology.site(n) for n in names] if names else list(topology.sites)


@click.command()
@topology_option
@site_option
@click.option(
    "--last",
    is_flag=True,
    help="Show each site's last periodic run (with its age) instead of running one.",
)
@click.option("--now", is_flag=True, hidden=True, help="Run one now (the default).")
@json_option
def reconcile(topology_path: Path, site_names: tuple[str, ...], last: bool, now: bool,
              as_json: bool) -> None:  # fmt: skip
    """Run a reconciliation at each site now and show what it found: holes re-fetched, streams
    behind, dead letters re-driven, and the problems that hold now. Exit code 0 no problems,
    1 problems or dead letters, 2 when no site answers."""
    topology = load_topology(topology_path)
    chosen = _sites(topology, site_names)
    answers = {s.name: _call(s, "GET" if last else "POST", "/reconcile") for s in chosen}
    reports = {n: _record(ReconcileReport, a) for n, a in answers.items()}
    code = _reconcile_code(reports)
    if as_json:
        click.echo(json.dumps({n: r and r.to_json() for n, r in reports.items()}, indent=2))
        raise SystemExit(code)
    console = Console()
    table = Table(box=box.SIMPLE_HEAD, title="reconcile", title_justify="left")
    for column in ("site", "ran", "ms", "streams", "holes", "re-fetched", "behind",
                   "dead letters", "re-driven", "fixed", "given up"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("site", "ran") else "right")
    problems = []
    for name, r in reports.items():
        if r is None:
            interval = topology.replication.reconcile_interval_s
            table.add_row(name, "[red]unreachable[/]" if answers[name] is None else
                          f"[yellow]no run yet (every {interval:g} s)[/]")  # fmt: skip
            continue
        table.add_row(
            name, _ran(r.started_ms), f"{r.duration_ms:.1f}", str(r.streams),
            str(r.holes_found), str(r.messages_refetched), str(len(r.behind)),
            str(r.dead_letters), str(r.redriven), str(r.redrive_succeeded), str(r.given_up),
        )  # fmt: skip
        problems += [f"{name}: {p}" for p in r.problems]
        if r.dead_letters:
            problems.append(f"{name}: {r.dead_letters} dead letters (multiactive deadletters)")
    console.print(table)
    for problem in problems:
        console.print(f"[red]problem[/] {problem}")
    if code == 0:
        console.print("[green]no problems[/]")
    raise SystemExit(code)


_NO_RUN = "no run"  # a sentinel: GET /reconcile answered null (no periodic run yet)


def _ran(started_ms: int) -> str:
    at = datetime.fromtimestamp(started_ms / 1000)
    age_s = max(0.0, datetime.now().timestamp() - started_ms / 1000)
    return f"{at.strftime('%H:%M:%S')} ({age_s:.0f} s ago)"


def _reconcile_code(reports: dict[str, ReconcileReport | None]) -> int:
    """0 no problems, 1 problems or dead letters anywhere, 2 when no site answered."""
    answered = [r for r in reports.values() if r is not None]
    if not answered:
        return 2
    return 1 if any(r.problems or r.dead_letters for r in answered) else 0


@click.command()
@topology_option
@site_option
@json_option
def deadletters(topology_path: Path, site_names: tuple[str, ...], as_json: bool) -> None:
    """Messages parked after their handler kept failing, per site, with their errors."""
    topology = load_topology(topology_path)
    letters = {
        s.name: _record(list[DeadLetter], _call(s, "GET", "/deadletters"))
        for s in _sites(topology, site_names)
    }
    if as_json:
        click.echo(json.dumps({n: encode(held) for n, held in letters.items()}, indent=2))
        return
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("site", "id", "type", "key", "origin/partition/seq", "attempts", "error"):
        table.add_column(column, no_wrap=column != "error")
    for name, held in letters.items():
        for d in held or []:
            where = f"{d.origin}/{d.partition}/{d.seq}"
            table.add_row(name, d.id, d.type, d.key, where, str(d.attempts), d.error)
    Console().print(table)


@click.command()
@topology_option
@site_option
@click.option("--id", "ids", multiple=True, help="Replay the dead letter with this request id.")
@click.option("--type", "type_", help="Replay dead letters of this message type.")
@click.option("--since", type=click.DateTime(), help="Parked at or after (local time).")
@click.option("--until", type=click.DateTime(), help="Parked at or before (local time).")
@json_option
def replay(topology_path: Path, site_names: tuple[str, ...], ids: tuple[str, ...],
           type_: str | None, since: datetime | None, until: datetime | None,
           as_json: bool) -> None:  # fmt: skip
    """Re-apply dead letters (after their handler was fixed); the ones that succeed are
    dropped. Exit code 0 when all matched ones were re-applied, 1 when one still fails (or
    nothing matched, or a site did not answer), 2 when no site answers."""
    topology = load_topology(topology_path)
    body: dict[str, Any] = {"ids": list(ids)}
    if type_:
        body["type"] = type_
    if since:
        body["since_ms"] = int(since.timestamp() * 1000)
    if until:
        body["until_ms"] = int(until.timestamp() * 1000)
    if not (ids or type_ or since or until):
        raise click.UsageError("choose what to replay: --id, --type, --since or --until")
    results = {
        s.name: _record(ReplayResult, _call(s, "POST", "/deadletters/replay", body))
        for s in _sites(topology, site_names)
    }
    code = _replay_code(results)
    if as_json:
        click.echo(json.dumps({n: r and r.to_json() for n, r in results.items()}, indent=2))
        raise SystemExit(code)
    console = Console()
    for name, result in results.items():
        if result is None:
            console.print(f"{name}: [red]unreachable[/]")
            continue
        console.print(f"{name}: replayed {result.replayed}, succeeded {result.succeeded}")
        for failure in result.failed:
            console.print(f"  [red]still failing[/] {failure.id}: {failure.error}")
    if code == 1 and not any(r.failed for r in results.values() if r is not None):
        console.print("[red]no dead letter matched[/] (multiactive deadletters lists them)")
    raise SystemExit(code)


def _replay_code(results: dict[str, ReplayResult | None]) -> int:
    """0 when every matched dead letter was re-applied, 1 when one still fails, a site did
    not answer or nothing matched, 2 when no site answered."""
    answered = [r for r in results.values() if r is not None]
    if not answered:
        return 2
    failed = any(r.failed for r in answered) or len(answered) < len(results)
    return 1 if failed or not any(r.replayed for r in answered) else 0
