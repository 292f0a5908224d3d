"""MariaDB servers for tests, the demo and benchmarks: a primary and GTID replicas, each a real
`mariadbd` on a free loopback port with its data in a folder of ours, killed at the end and
with their parent.

    with MariaSet(tmp_path / "mariadb", ["bj-unicom", "bj-telecom", "gz"]) as dbs:
        dbs.processor_url("gz")    # mysql://ma:...@127.0.0.1:<port>/app (no READ ONLY ADMIN)
        dbs.admin_url("gz")        # mysql://admin:...@127.0.0.1:<port>/app (for db commands)
        dbs.servers["bj-unicom"].kill()

`mariadb-install-db` runs once per set (about 5 s on 2 cores); each server starts from a copy
of that pristine data folder. The first name is the primary; the others replicate from it
with `MASTER_USE_GTID = slave_pos` and run `read_only = 1`. Every server writes a ROW binlog
with `gtid_strict_mode` and `log_slave_updates` (so any of them can become the primary), and
`sync_binlog = 1` (what it committed is in its binlog after a crash).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from multiactive.errors import ClusterError, ConfigError
from multiactive.procs import die_with_parent, free_port

DEBIAN_PACKAGES = "mariadb-server mariadb-client"
READY_TIMEOUT_S = 30.0
POLL_S = 0.05
DATABASE = "app"
PROCESSOR_USER, PROCESSOR_PASSWORD = "ma", "ma-secret"  # no READ ONLY ADMIN
ADMIN_USER, ADMIN_PASSWORD = "admin", "admin-secret"  # multiactive db commands
REPL_USER, REPL_PASSWORD = "repl", "repl-secret"
SERVER_OPTIONS = (
    "--binlog-format=ROW", "--gtid-strict-mode=1", "--log-slave-updates", "--sync-binlog=1",
    "--skip-name-resolve", "--skip-slave-start", "--innodb-buffer-pool-size=32M",
    "--innodb-log-file-size=8M", "--max-connections=200", "--bind-address=127.0.0.1",
)  # fmt: skip
BOOTSTRAP = (
    f"CREATE DATABASE {DATABASE}",
    f"CREATE USER '{PROCESSOR_USER}'@'%' IDENTIFIED BY '{PROCESSOR_PASSWORD}'",
    f"GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, INDEX, DROP ON {DATABASE}.* "
    f"TO '{PROCESSOR_USER}'@'%'",
    f"CREATE USER '{ADMIN_USER}'@'%' IDENTIFIED BY '{ADMIN_PASSWORD}'",
    f"GRANT ALL PRIVILEGES ON *.* TO '{ADMIN_USER}'@'%' WITH GRANT OPTION",
    f"CREATE USER '{REPL_USER}'@'%' IDENTIFIED BY '{REPL_PASSWORD}'",
    f"GRANT REPLICATION SLAVE ON *.* TO '{REPL_USER}'@'%'",
)


def mariadb_program(name: str) -> str:
    """A MariaDB program's path, or a ConfigError naming the Debian packages to install."""
    path = shutil.which(name)
    if path is None:
        raise ConfigError(
            f"the MariaDB tests and writer mode need {name}, which is not installed; on Debian "
            f"or Ubuntu: apt-get install {DEBIAN_PACKAGES}"
        )
    return path


def install_pristine(datadir: Path) -> None:
    """`mariadb-install-db` into an empty folder (root reachable on the socket, no password)."""
    datadir.parent.mkdir(parents=True, exist_ok=True)
    log = datadir.parent / "install-db.log"
    command = [
        mariadb_program("mariadb-install-db"), "--no-defaults", f"--datadir={datadir}",
        "--auth-root-authentication-method=normal", "--skip-test-db", "--user=root",
        "--innodb-log-file-size=8M", "--innodb-buffer-pool-size=32M",
    ]  # fmt: skip
    with log.open("wb") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise ClusterError(f"mariadb-install-db failed (see {log}):\n{_tail(log)}")


@dataclass
class MariaServer:
    """One mariadbd process on its own data folder."""

    root: Path
    server_id: int
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def socket(self) -> Path:
        return self.root / "mysqld.sock"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def url(self, user: str, password: str) -> str:
        return f"mysql://{user}:{password}@127.0.0.1:{self.port}/{DATABASE}"

    def command(self, read_only: bool) -> list[str]:
        return [
            mariadb_program("mariadbd"), "--no-defaults", "--user=root",
            f"--datadir={self.datadir}", f"--socket={self.socket}", f"--port={self.port}",
            f"--server-id={self.server_id}", f"--log-bin={self.datadir / 'binlog'}",
            f"--log-error={self.root / 'error.log'}", f"--pid-file={self.root / 'mysqld.pid'}",
            f"--read-only={int(read_only)}", *SERVER_OPTIONS,
        ]  # fmt: skip

    def launch(self, read_only: bool = False) -> None:
        """Start (or start again on the same data); `wait_ready` waits for it."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command(read_only),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )

    def start(self, read_only: bool = False) -> None:
        self.launch(read_only)
        self.wait_ready()

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive:
                raise ClusterError(f"mariadbd in {self.root} exited:\n{self.log_tail()}")
            if self.socket.exists() and self._answers():
                return
            time.sleep(POLL_S)
        raise ClusterError(f"mariadbd in {self.root} is not ready:\n{self.log_tail()}")

    def _answers(self) -> bool:
        try:
            self.sql("SELECT 1")
        except ClusterError:
            return False
        return True

    def sql(self, statements: str) -> list[list[str]]:
        """Run SQL as root on the socket; the rows of the last statement, as text."""
        command = [
            mariadb_program("mariadb"), "--no-defaults", f"--socket={self.socket}",
            "--user=root", "--batch", "--skip-column-names", "--execute", statements,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, check=False, timeout=60)
        if done.returncode != 0:
            raise ClusterError(
                f"mariadb on {self.socket}: {statements[:200]!r} failed: "
                f"{done.stderr.decode(errors='replace').strip()}"
            )
        lines = done.stdout.decode(errors="replace").splitlines()
        return [line.split("\t") for line in lines]

    def value(self, expression: str) -> str:
        rows = self.sql(f"SELECT {expression}")
        return rows[0][0] if rows and rows[0] else ""

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """SIGKILL by default: the server writes nothing more, ships nothing more."""
        if self.process is not None:
            if self.alive:
                self.process.send_signal(sig)
            self.process.wait()

    def log_tail(self, lines: int = 20) -> str:
        return _tail(self.root / "error.log", lines)


@dataclass
class MariaSet:
    """A primary (the first name) and GTID replicas of it, one server per site."""

    root: Path
    names: Sequence[str]
    servers: dict[str, MariaServer] = field(init=False, default_factory=dict)

    @property
    def pristine(self) -> Path:
        return self.root / "pristine"

    def processor_url(self, name: str) -> str:
        return self.servers[name].url(PROCESSOR_USER, PROCESSOR_PASSWORD)

    def admin_url(self, name: str) -> str:
        return self.servers[name].url(ADMIN_USER, ADMIN_PASSWORD)

    def writer_database(self, writer: str) -> dict[str, Any]:
        """A topology's [database] over these servers: writer mode, every site's URLs."""
        return {
            "mode": "writer", "writer": writer,
            "replication_user": REPL_USER, "replication_password": REPL_PASSWORD,
            "sites": {s: {"url": self.processor_url(s), "admin_url": self.admin_url(s)}
                      for s in self.names},
        }  # fmt: skip

    def start(self) -> None:
        """Fresh data at every server (a copy of the pristine folder), the primary first
        bootstrapped (database, accounts), the replicas pointed at it."""
        if not (self.pristine / "mysql").is_dir():
            shutil.rmtree(self.pristine, ignore_errors=True)
            install_pristine(self.pristine)
        for index, name in enumerate(self.names, start=1):
            server = self.servers.get(name) or MariaServer(self.root / name, index)
            self.servers[name] = server
            shutil.rmtree(server.root, ignore_errors=True)
            shutil.copytree(self.pristine, server.datadir)
            server.launch(read_only=index > 1)
        for server in self.servers.values():
            server.wait_ready()
        primary = self.servers[self.names[0]]
        primary.sql(";\n".join(BOOTSTRAP))
        for name in self.names[1:]:
            replicate(self.servers[name], primary)
        self.wait_replicated()

    def reset(self) -> None:
        """Back to a fresh primary and replicas (after a test moved or killed them)."""
        self.kill()
        self.start()

    def wait_replicated(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until every live replica has applied everything the primary's binlog holds."""
        primary = self.primary()
        position = primary.value("@@gtid_binlog_pos")
        for server in self.servers.values():
            if server is primary or not server.alive:
                continue
            done = server.value(f"MASTER_GTID_WAIT('{position}', {timeout_s})")
            if done != "0":
                raise ClusterError(
                    f"replica {server.root.name} did not reach {position} in {timeout_s} s: "
                    f"{server.sql('SHOW SLAVE STATUS')}"
                )

    def primary(self) -> MariaServer:
        """The live server that is not a replica."""
        for server in self.servers.values():
            if (
                server.alive
                and server.value("@@read_only") == "0"
                and not server.sql("SHOW SLAVE STATUS")
            ):
                return server
        raise ClusterError(f"no live primary among {', '.join(self.servers)}")

    def checksums(self, tables: Sequence[str]) -> dict[str, dict[str, str]]:
        """CHECKSUM TABLE of each table at each live server."""
        listed = ", ".join(f"{DATABASE}.{t}" for t in tables)
        return {
            name: {row[0]: row[1] for row in server.sql(f"CHECKSUM TABLE {listed}")}
            for name, server in self.servers.items()
            if server.alive
        }

    def kill(self) -> None:
        for server in self.servers.values():
            server.kill()

    def __enter__(self) -> MariaSet:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()


def replicate(replica: MariaServer, primary: MariaServer) -> None:
    """Point `replica` at `primary` by GTID (from the replica's own position) and start it."""
    replica.sql(
        "STOP SLAVE; "
        f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={primary.port}, "
        f"MASTER_USER='{REPL_USER}', MASTER_PASSWORD='{REPL_PASSWORD}', "
        "MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1; "
        "SET GLOBAL read_only=1; START SLAVE"
    )


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
