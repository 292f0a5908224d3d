"""`multiactive router run`: the live HTTP router in front of every site's app servers."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import click

from multiactive import aio, logs
from multiactive.model.topology import Address, load_topology, parse_address
from multiactive.routing.config import routing_config
from multiactive.routing.router import DEFAULT_POLICY_POLL_S, Router
from multiactive.security.tokens import ADMIN_TOKEN_ENV


@click.group()
def router() -> None:
    """The live router (routing policy, health checks, stickiness): see docs/routing.md."""


@router.command("run")
@click.option("--topology", "topology_path", required=True, type=click.Path(path_type=Path),
              envvar="MULTIACTIVE_TOPOLOGY", show_envvar=True,
              help="The topology file shared by all sites (with a [routing] section).")  # fmt: skip
@click.option("--site", "site_name", required=True,
              help="The site this router stands in front of (it follows its policy).")  # fmt: skip
@click.option("--listen", default=None, help="host:port to serve on (default: "
              "routing.routers.SITE in the topology).")  # fmt: skip
@click.option("--policy-poll", default=DEFAULT_POLICY_POLL_S, type=click.FloatRange(min=0.05),
              help="Seconds between reads of the site's policy (GET /routing).")  # fmt: skip
@click.option("--log-level", default="INFO",
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              help="Lowest log level written to stderr.")  # fmt: skip
def run_router(
    topology_path: Path, site_name: str, listen: str | None, policy_poll: float, log_level: str
) -> None:
    """Route HTTP requests to the sites' upstreams until SIGTERM or SIGINT."""
    logs.configure(log_level, site=site_name)
    topology = load_topology(topology_path)
    config = routing_config(topology)
    site = topology.site(site_name)
    address = parse_address(listen, "--listen") if listen else config.router_address(site_name)
    token = os.environ.get(ADMIN_TOKEN_ENV)  # for a site with [tls] admin_read = "token"
    router = Router(site_name, config, site.admin, policy_poll_s=policy_poll, admin_token=token)
    aio.run(_serve(router, address))


async def _serve(router: Router, listen: Address) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await router.start(listen)
    await router.run(stop)
