"""One process per data dir: an exclusive lock on a file in it, holding the holder's pid.

Two `site run` processes on one data dir would both append to the same journal and the second
would crash the first (`UNIQUE constraint failed`). So `site run` takes `site.lock` in its
data dir before it opens anything, and its applier takes `applier.lock`: a second process is
refused with the pid that holds the lock. The lock is `flock(LOCK_EX | LOCK_NB)` on an open
file, so the kernel drops it when its holder exits, however it exits (SIGKILL included): a
stale file never blocks a restart. The file is kept; only the lock on it counts.

    with DataDirLock(data_dir, "site"):      # DataDirLocked if another process holds it
        ...
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from multiactive.errors import DataDirLocked

POLL_S = 0.05


class DataDirLock:
    """`<data_dir>/<role>.lock`, held exclusively from `acquire()` until `release()`."""

    def __init__(self, data_dir: Path, role: str = "site") -> None:
        self.data_dir = Path(data_dir)
        self.role = role
        self.path = self.data_dir / f"{role}.lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, wait_s: float = 0.0) -> None:
        """Take the lock, trying again for up to `wait_s` (an old holder that is exiting);
        `DataDirLocked` naming the holder's pid if it stays taken."""
        deadline = time.monotonic() + wait_s
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            while not _try_lock(fd):
                if time.monotonic() >= deadline:
                    raise DataDirLocked(self._refusal(fd))
                time.sleep(POLL_S)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _refusal(self, fd: int) -> str:
        pid = holder_pid(fd)
        who = f"process {pid}" if pid is not None else "another process"
        return (
            f"data dir {self.data_dir} is in use: {who} holds {self.path}; one {self.role} "
            "process per data dir (sites[].data_dir must differ between sites; stop the other "
            "process first)"
        )

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the file drops the flock
            self._fd = None

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def holder_pid(fd: int) -> int | None:
    """The pid the holder wrote into the lock file, if it has written it yet."""
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None
