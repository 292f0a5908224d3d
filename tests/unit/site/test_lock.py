"""The data-dir lock: exclusive, names its holder's pid, dropped when the holder exits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from multiactive.errors import DataDirLocked
from multiactive.site.lock import DataDirLock

HOLD = """
import sys, time
from pathlib import Path
from multiactive.site.lock import DataDirLock
lock = DataDirLock(Path(sys.argv[1]), "site")
lock.acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_lock_is_refused_naming_the_holder(tmp_path: Path) -> None:
    """Two holders of one data dir: the second gets DataDirLocked with the first's pid."""
    with DataDirLock(tmp_path / "site-a", "site") as first:
        assert first.held
        assert (tmp_path / "site-a" / "site.lock").read_text().strip() == str(os.getpid())
        with pytest.raises(DataDirLocked, match=rf"process {os.getpid()} holds"):
            DataDirLock(tmp_path / "site-a", "site").acquire()
    with DataDirLock(tmp_path / "site-a", "site"):
        pass  # released: taken again


def test_roles_lock_separately(tmp_path: Path) -> None:
    """The site and its applier each hold a lock of their own in the same data dir."""
    with (
        DataDirLock(tmp_path, "site"),
        DataDirLock(tmp_path, "applier"),
        pytest.raises(DataDirLocked, match=r"applier\.lock"),
    ):
        DataDirLock(tmp_path, "applier").acquire()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    """SIGKILL of the holder: the kernel drops the flock, the file left behind blocks nothing."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DataDirLocked, match=rf"process {holder.pid} holds"):
            DataDirLock(tmp_path, "site").acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = DataDirLock(tmp_path, "site")
    lock.acquire(wait_s=5.0)
    lock.release()
