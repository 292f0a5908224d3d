"""`multiactive validate`: check a topology file before any site runs on it.

    multiactive validate --topology T [--site S ...] [--handlers MODULE ...]

Checks, each problem one line naming the setting:

- the file parses (every field, as `site run` would read it);
- addresses: no two sites share a `listen` or an `admin` address, no site's `admin` is any
  site's `listen`, no `[[links]] address` is a site's `admin` or the dialing site's own
  `listen` (it would dial itself);
- data: no two sites share a `data_dir` holding files (sqlite journal or state, sqlite
  audit), nor a `redis_url` (the first site to open a Redis claims it);
- backends of the chosen sites (default: every site) reachable from here: the data_dir can be
  created and written, each Redis answers PING, a PostgreSQL audit store accepts a connection;
- handler modules (`--handlers`) import and have a `setup(registry)`.

Exit code 0 when all hold, 1 when a problem was found.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import click

from multiactive.cli.options import topology_option
from multiactive.errors import ConfigError, StoreError
from multiactive.model.topology import Address, SiteConfig, Topology, load_topology
from multiactive.replication.handlers import HandlerRegistry

PING_TIMEOUT_S = 2.0  # PostgreSQL connect timeout
LOOPBACK_NAMES = {"localhost": "127.0.0.1", "::1": "127.0.0.1"}


def _same(a: Address, b: Address) -> bool:
    """Two addresses that one machine cannot give to two listeners (localhost = 127.0.0.1)."""
    return a.port == b.port and LOOPBACK_NAMES.get(a.host, a.host) == LOOPBACK_NAMES.get(
        b.host, b.host
    )


def address_problems(topology: Topology) -> list[str]:
    """Colliding addresses: listen and admin between sites, admin against listen, links."""
    ends: list[tuple[str, str, Address]] = []  # (setting, site, address)
    for index, site in enumerate(topology.sites):
        ends.append((f"sites[{index}].listen", site.name, site.listen))
        if site.admin is not None:
            ends.append((f"sites[{index}].admin", site.name, site.admin))
    problems = [
        f"{first} ({a}) and {second} ({b}) are both {address}"
        + ("" if a != b else ": a site needs two ports")
        for i, (first, a, address) in enumerate(ends)
        for second, b, other in ends[i + 1 :]
        if _same(address, other)
    ]
    return problems + _link_problems(topology, ends)


def _link_problems(topology: Topology, ends: list[tuple[str, str, Address]]) -> list[str]:
    problems = []
    for link in topology.links:
        if link.address is None:
            continue
        dialer = link.origin if link.mode == "push" else link.receiver
        for setting, site, address in ends:
            if not _same(link.address, address):
                continue
            if setting.endswith(".admin"):
                problems.append(
                    f"link {link.name}: address {link.address} is {setting} of {site} (its HTTP "
                    "admin API), not a wire-protocol port"
                )
            elif site == dialer:
                problems.append(
                    f"link {link.name}: address {link.address} is {setting}, the dialing site "
                    f"{dialer}'s own: it would dial itself"
                )
    return problems


def _uses_files(topology: Topology, site: SiteConfig) -> bool:
    return "sqlite" in (site.journal, site.state) or topology.audit.store == "sqlite"


def data_problems(topology: Topology) -> list[str]:
    """Two sites sharing a data_dir with files in it, or one Redis."""
    problems = []
    sites = list(enumerate(topology.sites))
    for i, (index, site) in enumerate(sites):
        for other_index, other in sites[i + 1 :]:
            both_files = _uses_files(topology, site) and _uses_files(topology, other)
            if both_files and site.data_dir.resolve() == other.data_dir.resolve():
                problems.append(
                    f"sites[{index}].data_dir and sites[{other_index}].data_dir ({site.name}, "
                    f"{other.name}) are both {site.data_dir}: each site needs its own"
                )
            if site.redis_url is not None and site.redis_url == other.redis_url:
                problems.append(
                    f"sites[{index}].redis_url and sites[{other_index}].redis_url ({site.name}, "
                    f"{other.name}) are both {site.redis_url}: each site needs its own Redis "
                    "(or database)"
                )
    return problems


def backend_problems(topology: Topology, sites: Iterable[SiteConfig]) -> list[str]:
    """What the chosen sites need and cannot reach from here."""
    problems = []
    for site in sites:
        index = topology.sites.index(site)
        if _uses_files(topology, site):
            problems += _data_dir_problem(site, index)
        if site.redis_url is not None:
            problems += _redis_problem(site, index)
    if topology.audit.store == "postgresql":
        problems += _postgres_problem(topology.audit.dsn)
    return problems


def _data_dir_problem(site: SiteConfig, index: int) -> list[str]:
    try:
        site.data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=site.data_dir, prefix=".validate-"):
            pass
    except OSError as exc:
        return [f"sites[{index}].data_dir ({site.name}): {site.data_dir} is not writable: "
                f"{exc.strerror or exc}"]  # fmt: skip
    return []


def _redis_problem(site: SiteConfig, index: int) -> list[str]:
    from multiactive.redisdb import RedisDb  # the redis client, only when a site uses Redis

    assert site.redis_url is not None

    async def ping() -> None:
        db = await RedisDb.connect(site.redis_url or "", f"sites[{index}].redis_url")
        await db.close()

    try:
        asyncio.run(ping())
    except StoreError as exc:
        return [f"{site.name}: {exc}"]
    return []


def _postgres_problem(dsn: str) -> list[str]:
    try:
        import psycopg
    except ImportError:
        return ["audit.store = \"postgresql\" needs psycopg: pip install 'multiactive[postgres]'"]
    try:
        psycopg.connect(dsn, connect_timeout=int(PING_TIMEOUT_S)).close()
    except Exception as exc:  # any failure to connect is the problem to report
        return [f"audit.dsn: cannot connect: {exc}"]
    return []


def handler_problems(modules: Iterable[str]) -> list[str]:
    problems = []
    for module in modules:
        try:
            HandlerRegistry().load(module)
        except ConfigError as exc:
            path = os.environ.get("PYTHONPATH", "")
            problems.append(f"{exc} (PYTHONPATH={path!r}; a module is found on PYTHONPATH)")
    return problems


def validate_topology(
    path: Path, site_names: tuple[str, ...] = (), handlers: tuple[str, ...] = ()
) -> tuple[Topology | None, list[str]]:
    """The topology (None if it does not parse) and every problem found."""
    try:
        topology = load_topology(path)
        chosen = [topology.site(n) for n in site_names] if site_names else list(topology.sites)
    except ConfigError as exc:
        return None, [str(exc)]
    problems = address_problems(topology) + data_problems(topology)
    problems += backend_problems(topology, chosen)
    return topology, problems + handler_problems(handlers)


@click.command()
@topology_option
@click.option("--site", "site_names", multiple=True,
              help="Check this site's backends (repeatable); default: every site's.")  # fmt: skip
@click.option("--handlers", multiple=True, metavar="MODULE",
              help="Check that MODULE imports and has setup(registry); repeatable.")  # fmt: skip
def validate(topology_path: Path, site_names: tuple[str, ...], handlers: tuple[str, ...]) -> None:
    """Check a topology before running it: colliding addresses, shared data dirs, backends
    reachable, handlers importable. Exit code 0 valid, 1 a problem found."""
    topology, problems = validate_topology(topology_path, site_names, handlers)
    for problem in problems:
        click.echo(f"problem: {problem}")
    if problems:
        raise SystemExit(1)
    assert topology is not None
    click.echo(
        f"{topology_path}: valid ({len(topology.sites)} sites, {len(topology.links)} links, "
        f"{topology.partitions} partitions)"
    )
