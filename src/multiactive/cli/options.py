"""Options that many commands share, in a module that imports nothing heavy (a site process
imports it on start-up)."""

from __future__ import annotations

from pathlib import Path

import click

TOPOLOGY_ENV = "MULTIACTIVE_TOPOLOGY"
topology_option = click.option(
    "--topology", "topology_path", required=True, type=click.Path(path_type=Path),
    envvar=TOPOLOGY_ENV, show_envvar=True,
    help=f"The topology file shared by all sites (or set {TOPOLOGY_ENV}).",
)  # fmt: skip
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
