"""`multiactive demo`: placeholder replaced below."""

from __future__ import annotations

import click


@click.command()
def demo() -> None:
    """Run three sites on this machine and show them converge."""
