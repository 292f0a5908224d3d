"""A throwaway PostgreSQL server for tests: initdb in a temporary folder, a free port, trust
authentication on loopback, stopped and deleted at the end.

    with PostgresServer() as pg:
        dsn = pg.dsn   # postgresql://postgres@127.0.0.1:PORT/postgres

PostgreSQL refuses to run as root; when the tests run as root the server runs as the
`postgres` user (created by the Debian package) in a folder of its own under the system
temporary directory (a test's tmp_path is not traversable by another user).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from multiactive.errors import ClusterError
from multiactive.procs import free_port

START_TIMEOUT_S = 60.0


def postgres_bin() -> Path | None:
    """The folder of the newest installed PostgreSQL server binaries (Debian layout)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class PostgresServer:
    def __init__(self) -> None:
        bindir = postgres_bin()
        if bindir is None:
            raise ClusterError(
                "PostgreSQL server binaries not found; install the Debian package: "
                "apt-get install postgresql"
            )
        self._bin = bindir
        self.root = Path(tempfile.mkdtemp(prefix="multiactive-pg-"))
        self.port = free_port()
        self._as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        data = self.root / "data"
        if self._as_user:
            shutil.chown(self.root, "postgres", "postgres")
        self._run([str(self._bin / "initdb"), "-D", str(data), "-U", "postgres",
                   "--auth=trust", "--no-sync", "-E", "UTF8"])  # fmt: skip
        log = (self.root / "server.log").open("ab")
        self._process = subprocess.Popen(
            [*self._as_user, str(self._bin / "postgres"), "-D", str(data), "-p", str(self.port),
             "-k", str(self.root), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        self._wait_ready()

    def _run(self, command: list[str]) -> None:
        result = subprocess.run([*self._as_user, *command], capture_output=True, text=True)
        if result.returncode != 0:
            raise ClusterError(f"{' '.join(command)} failed: {result.stderr or result.stdout}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                log = (self.root / "server.log").read_text(errors="replace")
                raise ClusterError(f"PostgreSQL exited while starting:\n{log[-2000:]}")
            ready = subprocess.run(
                [str(self._bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise ClusterError(f"PostgreSQL not ready within {START_TIMEOUT_S} s")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(20)
        self._process = None
        shutil.rmtree(self.root, ignore_errors=True)
