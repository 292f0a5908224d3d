"""The `multiactive` command: parse options, build the configuration, call the library."""

from __future__ import annotations

import importlib
import sys

import click

from multiactive import __version__
from multiactive.errors import MultiactiveError

# Each command's module is imported when the command runs (or help lists it): a site process
# (`site run`, `site apply`) does not import the checker, the router, the demo or the
# certificate tools, and starts that much sooner.
COMMANDS: dict[str, str] = {
    "site": "multiactive.cli.site:site",
    "demo": "multiactive.cli.demo:demo",
    "check": "multiactive.cli.check:check",
    "wan": "multiactive.cli.wan:wan",
    "status": "multiactive.cli.inspect:status",
    "lag": "multiactive.cli.inspect:lag",
    "trace": "multiactive.cli.inspect:trace",
    "reconcile": "multiactive.cli.repair:reconcile",
    "deadletters": "multiactive.cli.repair:deadletters",
    "replay": "multiactive.cli.repair:replay",
    "db": "multiactive.cli.db:db",
    "certs": "multiactive.cli.certs:certs",
    "route": "multiactive.cli.route:route",
    "router": "multiactive.cli.router:router",
    "validate": "multiactive.cli.validate:validate",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported by name on first use (`COMMANDS`)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return super().get_command(ctx, cmd_name)
        module, _, name = COMMANDS[cmd_name].partition(":")
        command = getattr(importlib.import_module(module), name)
        assert isinstance(command, click.Command)
        return command


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
)
@click.version_option(__version__, prog_name="multiactive")
def cli() -> None:
    """Multi-site active-active replication: every site writable, every write everywhere."""


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
