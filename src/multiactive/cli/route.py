"""`multiactive route`: show and change the routing policy, and export it for the real edge.

With `[tls]`, set MULTIACTIVE_ADMIN_TOKEN to an admin token: changes need one.

Every change is computed here from the policy a site holds (pure, `routing.changes`), shown
with its impact, and, without `--dry-run`, published through that site as an
`ma.route.policy` message that every other site applies within a round trip.
"""

from __future__ import annotations

import getpass
import json
import os
import shlex
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table

from multiactive.cli.options import json_option, topology_option
from multiactive.errors import ConfigError
from multiactive.model.topology import SiteConfig, Topology, load_topology, parse_address
from multiactive.routing.changes import make_change
from multiactive.routing.config import MODES, RoutingConfig, routing_config
from multiactive.routing.export import bind_config, nginx_config
from multiactive.routing.hashing import UNIT_SPACE
from multiactive.routing.messages import Change
from multiactive.routing.policy import Impact, Policy, PolicyState
from multiactive.security.tokens import ADMIN_TOKEN_ENV

HTTP_TIMEOUT_S = 15.0

site_option = click.option(
    "--site", "site_name", default=None,
    help="The site whose admin API to read and publish through (default: the first that "
    "answers, in topology order).",
)  # fmt: skip
dry_run_option = click.option(
    "--dry-run", is_flag=True, help="Show which units and what share of users would move; "
    "change nothing.",
)  # fmt: skip
who_option = click.option(
    "--who", default=None, help="Who makes the change, for the record (default: user@host)."
)


@click.group()
def route() -> None:
    """The routing policy: show it, shift users between sites, drain sites, set unit modes."""


def _request(site: SiteConfig, path: str, body: Any = None) -> Any:
    if site.admin is None:
        raise click.ClickException(f"site {site.name} has no admin address (sites[].admin)")
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    token = os.environ.get(ADMIN_TOKEN_ENV)
    if token:  # [tls]: changes (and, with admin_read = "token", reads) need an admin token
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"http://{site.admin}{path}", data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace").strip()
        raise click.ClickException(f"site {site.name}: HTTP {exc.code}: {detail}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise click.ClickException(
            f"site {site.name} ({site.admin}) does not answer: {exc}"
        ) from exc


def _held(topology: Topology, site_name: str | None) -> tuple[SiteConfig, dict[str, Any]]:
    """The site to talk to and its GET /routing answer."""
    sites = [topology.site(site_name)] if site_name else list(topology.sites)
    failures = []
    for site in sites:
        try:
            return site, _request(site, "/routing")
        except click.ClickException as exc:
            failures.append(exc.message)
    raise click.ClickException("; ".join(failures))


def _load(
    topology_path: Path, site_name: str | None
) -> tuple[Topology, RoutingConfig, SiteConfig, Policy, list[Change]]:
    topology = load_topology(topology_path)
    config = routing_config(topology)
    site, answer = _held(topology, site_name)
    policy = Policy(config, PolicyState.from_json(answer["policy"]))
    changes = [Change.from_json(c) for c in answer["changes"]]
    return topology, config, site, policy, changes


@route.command("show")
@topology_option
@site_option
@json_option
def show(topology_path: Path, site_name: str | None, as_json: bool) -> None:
    """The policy a site holds: each region's sites and shares, site states, unit modes and
    the latest changes."""
    _, _, site, policy, changes = _load(topology_path, site_name)
    if as_json:
        body = {"site": site.name, "policy": policy.state.to_json(),
                "changes": [c.to_json() for c in changes]}  # fmt: skip
        click.echo(json.dumps(body, indent=2))
        return
    console = Console()
    console.print(f"policy revision {policy.revision}, as held by site {site.name}")
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("region", "site", "share %", "buckets", "state"):
        table.add_column(column)
    for region in policy.config.regions:
        for name, size in _shares(policy, region.name):
            state = policy.state.site_states.get(name, "?")
            table.add_row(region.name, name, f"{size * 100 / UNIT_SPACE:.2f}",
                          _spans_text(policy, region.name, name), state)  # fmt: skip
    console.print(table)
    modes = ", ".join(f"{u.name}={policy.state.unit_modes.get(u.name, u.mode)}"
                      for u in policy.config.units)  # fmt: skip
    console.print(f"units: {modes}")
    for change in changes[:10]:
        console.print(_change_line(change))


def _shares(policy: Policy, region: str) -> list[tuple[str, int]]:
    sizes: dict[str, int] = {}
    for start, end, site in policy.state.assignments[region]:
        sizes[site] = sizes.get(site, 0) + end - start
    return sorted(sizes.items(), key=lambda item: -item[1])


def _spans_text(policy: Policy, region: str, site: str) -> str:
    spans = [f"[{a}, {b})" for a, b, s in policy.state.assignments[region] if s == site]
    return " ".join(spans)


def _change_line(change: Change) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(change.at_ms / 1000))
    args = " ".join(f"{k}={v}" for k, v in change.args.items() if v is not None)
    return f"  r{change.revision} {when}Z {change.who} at {change.site}: {change.kind} {args}"


def _print_impact(impact: Impact, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(impact.to_json(), indent=2))
        return
    if not impact.moves:
        click.echo("no user changes site")
    for move in impact.moves:
        share = (move.end - move.start) * 100 / UNIT_SPACE
        click.echo(f"  {move.region}: buckets [{move.start}, {move.end}) ({share:.2f} % of the "
                   f"region) {move.before or 'refused'} -> {move.after or 'refused'}")  # fmt: skip
    for region, share in impact.region_share.items():
        if share:
            click.echo(f"  region {region}: {share * 100:.2f} % of its users move")
    for unit, buckets in sorted(impact.units.items()):
        click.echo(f"  unit {unit}: {buckets} buckets move")


def _change(
    topology_path: Path, site_name: str | None, kind: str, args: dict[str, Any],
    who: str | None, dry_run: bool, as_json: bool,
) -> None:  # fmt: skip
    _, _, site, policy, _ = _load(topology_path, site_name)
    author = who or f"{getpass.getuser()}@{socket.gethostname()}"
    try:
        state, change, impact = make_change(policy, kind, args, author, int(time.time() * 1000))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    if dry_run:
        if not as_json:
            click.echo(f"dry run: {kind} would make revision {state.revision}:")
        _print_impact(impact, as_json)
        return
    body = {"policy": state.to_json(), "change": change.to_json(), "base_revision": policy.revision}
    answer = _request(site, "/routing/change", body)
    if as_json:
        click.echo(json.dumps({"change": answer["change"], "impact": impact.to_json()}, indent=2))
        return
    click.echo(f"revision {state.revision} published through {site.name}:")
    _print_impact(impact, as_json)


@route.command("shift")
@topology_option
@site_option
@click.option("--from", "source", required=True, help="The site users move away from.")
@click.option("--to", "target", required=True, help="The site they move to.")
@click.option("--percent", required=True, type=click.FloatRange(0, 100, min_open=True),
              help="Percent of the region's users (0.01 steps).")  # fmt: skip
@click.option("--region", default=None, help="Only this region (default: every region the "
              "--from site serves).")  # fmt: skip
@who_option
@dry_run_option
@json_option
def shift_command(
    topology_path: Path, site_name: str | None, source: str, target: str, percent: float,
    region: str | None, who: str | None, dry_run: bool, as_json: bool,
) -> None:  # fmt: skip
    """Move PERCENT % of a region's users from one site to another: the highest buckets the
    source serves; no other user changes site."""
    args = {"from": source, "to": target, "percent": percent, "region": region}
    _change(topology_path, site_name, "shift", args, who, dry_run, as_json)


def _site_command(kind: str, summary: str) -> None:
    @route.command(kind, help=summary)
    @topology_option
    @site_option
    @click.argument("site")
    @who_option
    @dry_run_option
    @json_option
    def command(
        topology_path: Path, site_name: str | None, site: str, who: str | None, dry_run: bool,
        as_json: bool,
    ) -> None:  # fmt: skip
        _change(topology_path, site_name, kind, {"site": site}, who, dry_run, as_json)


_site_command("drain", "Take every user away from SITE (each to its stand-in).")
_site_command("undrain", "Make SITE active again: its users come back.")
_site_command("down", "Mark SITE down (as drain, for a site known to be out).")


@route.command("set-mode")
@topology_option
@site_option
@click.argument("unit")
@click.argument("mode", type=click.Choice(MODES))
@who_option
@dry_run_option
@json_option
def set_mode(
    topology_path: Path, site_name: str | None, unit: str, mode: str, who: str | None,
    dry_run: bool, as_json: bool,
) -> None:  # fmt: skip
    """Set a unit's access mode: read-write, read-only (the safe first step before moving
    it) or none."""
    _change(topology_path, site_name, "set-mode", {"unit": unit, "mode": mode}, who, dry_run,
            as_json)  # fmt: skip


@route.group("export")
def export() -> None:
    """The policy as configuration for the real edge: nginx, BIND."""


from_topology_option = click.option(
    "--from-topology", is_flag=True,
    help="Export the topology's own policy (revision 0) without asking a site.",
)  # fmt: skip


def _policy_for_export(topology_path: Path, site_name: str | None, offline: bool) -> Policy:
    if offline:
        return Policy(routing_config(load_topology(topology_path)))
    return _load(topology_path, site_name)[3]


def _write(path: Path, text: str) -> None:
    """Replace a file in one step (an edge reloading mid-write must not read half of it)."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)


@export.command("nginx")
@topology_option
@site_option
@from_topology_option
@click.option("--listen", default="127.0.0.1:8080", help="The address the server block listens on.")
@click.option("--out", "out", default=None, type=click.Path(path_type=Path),
              help="Write the include here (default: standard output).")  # fmt: skip
@click.option("--watch", is_flag=True, help="Keep running: re-export after every policy change "
              "(needs --out).")  # fmt: skip
@click.option("--reload-command", default=None,
              help='Run after every re-export, e.g. "nginx -s reload".')  # fmt: skip
def export_nginx(
    topology_path: Path, site_name: str | None, from_topology: bool, listen: str,
    out: Path | None, watch: bool, reload_command: str | None,
) -> None:  # fmt: skip
    """An nginx include (inside http {}): geo, maps, split_clients, upstreams and a server."""
    address = parse_address(listen, "--listen")

    def render(policy: Policy) -> str:
        try:
            return nginx_config(policy, address).text
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from exc

    policy = _policy_for_export(topology_path, site_name, from_topology)
    if out is None:
        if watch:
            raise click.UsageError("--watch needs --out FILE")
        click.echo(render(policy), nl=False)
        return
    _write(out, render(policy))
    click.echo(f"wrote {out} (policy revision {policy.revision})", err=True)
    if watch:
        _watch(topology_path, site_name, policy, lambda p: _write(out, render(p)), reload_command)


@export.command("bind")
@topology_option
@site_option
@from_topology_option
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="The folder for named.conf and one zone file per region.")  # fmt: skip
@click.option("--listen", default="127.0.0.1:53", help="Where named listens (listen-on).")
@click.option("--watch", is_flag=True, help="Keep running: re-export after every policy change.")
@click.option(
    "--reload-command", default=None, help='Run after every re-export, e.g. "rndc reload".'
)
def export_bind(
    topology_path: Path, site_name: str | None, from_topology: bool, out: Path, listen: str,
    watch: bool, reload_command: str | None,
) -> None:  # fmt: skip
    """BIND views: named.conf (match-clients per region) and a zone file per view."""
    address = parse_address(listen, "--listen")
    out.mkdir(parents=True, exist_ok=True)

    def write(policy: Policy) -> None:
        try:
            result = bind_config(policy, str(out.resolve()), address)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from exc
        for name, text in result.zones.items():
            _write(out / name, text)
        _write(out / "named.conf", result.named_conf)

    policy = _policy_for_export(topology_path, site_name, from_topology)
    write(policy)
    click.echo(f"wrote {out}/named.conf and {len(policy.config.regions)} zones "
               f"(policy revision {policy.revision})", err=True)  # fmt: skip
    if watch:
        _watch(topology_path, site_name, policy, write, reload_command)


WATCH_POLL_S = 1.0


def _watch(
    topology_path: Path, site_name: str | None, policy: Policy,
    write: Callable[[Policy], None], reload_command: str | None,
) -> None:  # fmt: skip
    """Re-export whenever the site's policy changes, until interrupted."""
    current = policy.state
    while True:
        time.sleep(WATCH_POLL_S)
        try:
            fresh = _load(topology_path, site_name)[3]
        except click.ClickException as exc:
            click.echo(f"cannot read the policy: {exc.message}", err=True)
            continue
        if fresh.state == current:
            continue
        write(fresh)
        current = fresh.state
        click.echo(f"re-exported policy revision {fresh.revision}", err=True)
        if reload_command:
            result = subprocess.run(shlex.split(reload_command), check=False)
            if result.returncode != 0:
                click.echo(f"{reload_command!r} exited with {result.returncode}", err=True)


@route.command("demo")
@click.option("--users", default=1000, type=click.IntRange(min=10), help="Users per region.")
@json_option
def demo(users: int, as_json: bool) -> None:
    """The live router in front of three local sites: users from two regions (127.0.0.2 and
    127.0.0.3), a 30 % shift and a drain mid-run; reports per-site traffic and who moved."""
    from multiactive import aio
    from multiactive.demo_traffic import run_traffic_demo

    result = aio.run(run_traffic_demo(users, lambda line: None if as_json else click.echo(line)))
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    elif result.problems:
        for problem in result.problems[:20]:
            click.echo(f"PROBLEM {problem}")
    else:
        click.echo("only the users in the shifted ranges moved in each phase, as the policy says")
    if result.problems:
        raise SystemExit(1)
