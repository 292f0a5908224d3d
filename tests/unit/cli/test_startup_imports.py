"""A site's processes import only what they run: every test and every restart starts them, and
on 2 cores the imports were most of a site's start-up (CONTRIBUTING.md, "Keeping the suite
fast")."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("aiohttp", "redis", "asyncmy", "cryptography", "rich", "prometheus_client", "psycopg")


def imported(*modules: str) -> set[str]:
    """The top-level packages of HEAVY that importing `modules` in a fresh interpreter loads."""
    code = f"import sys; import {', '.join(modules)}; print(' '.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {name for name in done.stdout.split() if name in HEAVY}


def test_the_applier_imports_no_network_database_or_display_package() -> None:
    """`site apply` (the CLI and the site commands' module) loads none of HEAVY."""
    assert imported("multiactive.cli.main", "multiactive.cli.site") == set()


@pytest.mark.parametrize("module", ["multiactive.site.node", "multiactive.admin.http"])
def test_a_site_on_sqlite_imports_its_admin_api_and_nothing_it_does_not_use(module: str) -> None:
    """`site run` without [tls], Redis or MariaDB loads aiohttp and prometheus_client (its admin
    API) and nothing else of HEAVY."""
    assert imported("multiactive.cli.main", "multiactive.cli.site", module) <= {
        "aiohttp",
        "prometheus_client",
    }
