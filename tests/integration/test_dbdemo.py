"""`multiactive demo --database mariadb`: the writer failed over mid-run on real mariadbd, and
every database equal at the end; without MariaDB installed, a message naming the package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from multiactive.cli.db import post_writer
from multiactive.local.dbdemo import TARGET, WRITER, run_db_demo
from multiactive.local.mariadb import DEBIAN_PACKAGES

pytestmark = [pytest.mark.integration]


@pytest.mark.mariadb
def test_the_database_demo_fails_the_writer_over_and_reports_equal_databases(
    mariadb: Any, tmp_path: Path
) -> None:
    """The demo's run on the session's servers (a short one): the writer's mariadbd killed,
    gz promoted and writing at a higher epoch, every acknowledged write once, and the three
    databases' row counts and checksums equal."""
    lines: list[str] = []
    result = run_db_demo(tmp_path, 4.0, 300.0, post_writer, lines.append, servers=mariadb)
    assert any(line.startswith(f"killing {WRITER}'s mariadbd") for line in lines), lines
    assert result.steps, "failover printed no steps"
    assert (result.primary, result.epoch) == (TARGET, 2)
    assert result.writers == sorted([WRITER, TARGET])  # both wrote rows, before and after
    assert 0 < result.failover_s < 30
    assert set(result.databases) == set(mariadb.servers)
    figures = {(d["rows"], d["distinct"], d["checksum"]) for d in result.databases.values()}
    assert len(figures) == 1, result.databases
    ((count, distinct, _),) = figures
    assert count == distinct >= result.acknowledged > 100
    assert result.missing == 0
    assert result.ok
    assert result.to_json()["failed_over"]


def test_the_database_demo_names_the_package_when_mariadb_is_missing(tmp_path: Path) -> None:
    """With no mariadbd on PATH the demo starts nothing and says what to install."""
    empty = tmp_path / "bin"
    empty.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "multiactive", "demo", "--database", "mariadb",
         "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PATH": str(empty)},
    )  # fmt: skip
    assert done.returncode == 2, done
    assert "mariadbd, which is not installed" in done.stderr
    assert f"apt-get install {DEBIAN_PACKAGES}" in done.stderr
    assert "mariadb-server" in DEBIAN_PACKAGES
    assert not (tmp_path / "data").exists()  # nothing started
