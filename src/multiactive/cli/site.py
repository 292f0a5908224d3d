"""`multiactive site run`: one site's process."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from multiactive import aio, logs
from multiactive.cli.options import topology_option
from multiactive.errors import ConfigError, MultiactiveError
from multiactive.model.topology import Topology, load_topology
from multiactive.replication.handlers import HandlerRegistry
from multiactive.site.applier import (
    APPLIER_LOCK_WAIT_S,
    APPLIER_NICENESS,
    ApplierLaunch,
    serve_applier,
)
from multiactive.site.lock import DataDirLock

if TYPE_CHECKING:
    from multiactive.routing.service import RoutingService
    from multiactive.site.node import SiteNode

log = logs.get_logger("site")


@click.group()
def site() -> None:
    """Run and inspect site processes."""


@site.command("run")
@topology_option
@click.option("--site", "site_name", required=True, help="Which site of the topology this is.")
@click.option(
    "--handlers",
    multiple=True,
    metavar="MODULE",
    help="Import MODULE and call its setup(registry); repeatable.",
)
@click.option(
    "--log-level",
    default="INFO",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Lowest log level written to stderr.",
)
def run_site(
    topology_path: Path, site_name: str, handlers: tuple[str, ...], log_level: str
) -> None:
    """Run one site until SIGTERM or SIGINT, then drain and stop cleanly."""
    # Imported here, not at the top: the applier (`site apply`) needs none of the site's
    # network side (aiohttp, the admin API, routing) and starts sooner without it.
    from multiactive.site.node import SiteNode

    topology, registry = _prepare(topology_path, site_name, handlers, log_level)
    applier = ApplierLaunch(topology_path, handlers, log_level)
    with DataDirLock(topology.site(site_name).data_dir, "site"):
        node = SiteNode(topology, site_name, registry, applier)
        try:
            aio.run(_serve(node))
        except BaseExceptionGroup as group:
            _fail(_cause(group, site_name))
        except MultiactiveError as exc:
            _fail(exc)


def _fail(error: BaseException) -> NoReturn:
    """Exit status 2 for a configuration the site cannot run with (restarting will not
    help), 1 for a failure while running (a supervisor restarts the site)."""
    if isinstance(error, ConfigError) or not isinstance(error, MultiactiveError):
        raise error
    click.echo(f"error: {error}", err=True)
    sys.exit(1)


def _cause(group: BaseExceptionGroup[BaseException], site: str) -> BaseException:
    """The error that ended the site, out of its task group: our own error is reported in one
    line (`error: ...`, exit status 2); anything else keeps its traceback."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(reversed(exc.exceptions))
        else:
            leaves.append(exc)
    ours = [exc for exc in leaves if isinstance(exc, MultiactiveError)]
    if ours and len(ours) == len(leaves):
        log.error("site_failed", site=site, error=type(ours[0]).__name__, reason=ours[0])
        return ours[0]
    return group


@site.command("apply", hidden=True)
@click.option("--topology", "topology_path", required=True, type=click.Path(path_type=Path))
@click.option("--site", "site_name", required=True)
@click.option("--handlers", multiple=True, metavar="MODULE")
@click.option("--log-level", default="INFO")
@click.option("--channel-fd", required=True, type=int, help="The site's end of the channel.")
def apply_site(
    topology_path: Path, site_name: str, handlers: tuple[str, ...], log_level: str, channel_fd: int
) -> None:
    """Internal: the applier process that `site run` starts (see multiactive.site.applier)."""
    topology, registry = _prepare(topology_path, site_name, handlers, log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the site, which stops us
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.nice(APPLIER_NICENESS)
    _tune_gc()  # decoding a round's rows makes ~2 containers a message: the same reason
    lock = DataDirLock(topology.site(site_name).data_dir, "applier")
    lock.acquire(wait_s=APPLIER_LOCK_WAIT_S)  # the applier of a killed site may be exiting
    try:
        aio.run(serve_applier(topology, site_name, registry, channel_fd))
    finally:
        lock.release()


def _prepare(
    topology_path: Path, site_name: str, handlers: tuple[str, ...], log_level: str
) -> tuple[Topology, HandlerRegistry]:
    """Logging, the topology and the handler modules, as a site and its applier both need."""
    logs.configure(log_level, site=site_name)
    topology = load_topology(topology_path)
    registry = HandlerRegistry()
    for module in handlers:
        registry.load(module)
    return topology, registry


# A site allocates a few short-lived containers per message (drafts, rows, results) while it
# holds many long-lived ones (cached batches, pending requests); with CPython's default
# thresholds the cyclic collector runs every 700 allocations and keeps re-walking the
# long-lived ones: 20-25 % of ingress throughput on our machines (docs/benchmarks.md).
# The site's own data structures hold no reference cycles that need collecting quickly.
# Its applier decodes every batch it applies into rows (a list and a headers dict each):
# collected as often, that was 0.4-0.6 us of its 2.4-2.8 us of CPU per message outside the
# state commit (`benchmarks/apply.py`).
GC_THRESHOLDS = (100_000, 50, 100)


def _tune_gc() -> None:
    """Collect less often, and never walk what the site built at start-up again."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def routing_service(node: SiteNode) -> RoutingService | None:
    """The routing endpoints of a site's admin API, when its topology has [routing]."""
    if node.topology.routing is None:
        return None
    from multiactive.routing.config import routing_config
    from multiactive.routing.service import RoutingService

    config = routing_config(node.topology)
    return RoutingService(
        node.name, config, node.state, lambda drafts: node.ingress.submit(drafts, internal=True)
    )


async def _serve(node: SiteNode) -> None:
    from multiactive.admin.http import AdminServer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, node.reload_tls)
    await node.start()
    _tune_gc()
    admin = None
    if node.config.admin is not None:
        admin = AdminServer(
            node.name, node.topology, node.journal, node.state, node.processor, node.reconciler,
            node.inspector, tls=node.tls, control=node.publish_internal,
            routing=routing_service(node), reads=node.reads,
        )  # fmt: skip
    try:
        if admin is not None:
            await admin.start()
        await node.run(stop)
    finally:
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.stop()
