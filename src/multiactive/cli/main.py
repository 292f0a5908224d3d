"""The `multiactive` command: parse options, build the configuration, call the library."""

from __future__ import annotations

import sys

import click

from multiactive import __version__
from multiactive.cli.certs import certs
from multiactive.cli.check import check
from multiactive.cli.db import db
from multiactive.cli.demo import demo
from multiactive.cli.inspect import lag, status, trace
from multiactive.cli.repair import deadletters, reconcile, replay
from multiactive.cli.route import route
from multiactive.cli.router import router
from multiactive.cli.site import site
from multiactive.cli.validate import validate
from multiactive.cli.wan import wan
from multiactive.errors import MultiactiveError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="multiactive")
def cli() -> None:
    """Multi-site active-active replication: every site writable, every write everywhere."""


cli.add_command(site)
cli.add_command(demo)
cli.add_command(check)
cli.add_command(wan)
cli.add_command(status)
cli.add_command(lag)
cli.add_command(trace)
cli.add_command(reconcile)
cli.add_command(deadletters)
cli.add_command(replay)
cli.add_command(db)
cli.add_command(certs)
cli.add_command(route)
cli.add_command(router)
cli.add_command(validate)


def main() -> None:
    try:
        cli(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except MultiactiveError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
