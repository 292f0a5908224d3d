"""A real nginx and a real BIND `named` for tests and the demo: on free ports, files in a folder
of ours, killed at the end and with their parent (like `local/redis.py`).

    with NginxServer(tmp_path / "nginx", include_text) as nginx:   # `include` inside http {}
        nginx.address                                              # where its server listens
    with NamedServer(tmp_path / "named", export) as named:         # a BindExport, written out
        named.address
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from multiactive.errors import ClusterError, ConfigError
from multiactive.model.topology import Address
from multiactive.procs import die_with_parent

READY_TIMEOUT_S = 15.0
POLL_S = 0.02
PACKAGES = {"nginx": "nginx", "named": "bind9", "named-checkconf": "bind9-utils",
            "named-checkzone": "bind9-utils", "dig": "bind9-dnsutils"}  # fmt: skip


def tool(name: str) -> str:
    """A program's path, or a ConfigError naming the Debian package to install."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise ConfigError(
            f"{name} is not installed; on Debian or Ubuntu: apt-get install {PACKAGES[name]}"
        )
    return found


def run_tool(*command: str, timeout_s: float = 30.0) -> str:
    """Run a checking tool; ConfigError with its output when it fails."""
    result = subprocess.run(
        [tool(command[0]), *command[1:]], capture_output=True, text=True, timeout=timeout_s
    )
    if result.returncode != 0:
        raise ConfigError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout + result.stderr


def _wait_listening(
    address: Address, process: subprocess.Popen[bytes], what: str, log: Path
) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ClusterError(f"{what} exited with {process.returncode}:\n{_tail(log)}")
        try:
            with socket.create_connection((address.host, address.port), timeout=0.5):
                return
        except OSError:
            time.sleep(POLL_S)
    raise ClusterError(f"{what} does not listen on {address}:\n{_tail(log)}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class NginxServer:
    """nginx with one include (an exported config) inside `http {}`; `address` is where the
    include's server listens."""

    root: Path
    include: str
    address: Address
    process: subprocess.Popen[bytes] | None = None

    @property
    def conf(self) -> Path:
        return self.root / "nginx.conf"

    def write(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)
        (self.root / "multiactive.conf").write_text(self.include)
        temp = "".join(
            f"    {kind}_temp_path {self.root}/tmp/{kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        self.conf.write_text(
            f"worker_processes 1;\npid {self.root}/nginx.pid;\nerror_log {self.root}/error.log;\n"
            "events { worker_connections 1024; }\n"
            f"http {{\n    access_log off;\n{temp}    include {self.root}/multiactive.conf;\n}}\n"
        )

    def check(self) -> str:
        """`nginx -t` on the written configuration."""
        self.write()
        return run_tool("nginx", "-t", "-q", "-e", str(self.root / "error.log"),
                        "-p", f"{self.root}/", "-c", str(self.conf))  # fmt: skip

    def start(self) -> None:
        self.check()
        log = self.root / "stderr.log"
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [tool("nginx"), "-e", str(self.root / "error.log"), "-p", f"{self.root}/",
                 "-c", str(self.conf), "-g", "daemon off;"],
                stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
            )  # fmt: skip
        _wait_listening(self.address, self.process, "nginx", self.root / "error.log")

    def reload(self, include: str) -> None:
        """Swap the include and reload (SIGHUP), as an edge does after a policy change."""
        self.include = include
        self.check()
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        _stop(self.process)

    def __enter__(self) -> NginxServer:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@dataclass
class NamedServer:
    """BIND's named in the foreground, on the exported `named.conf` in `root`."""

    root: Path
    address: Address
    process: subprocess.Popen[bytes] | None = None

    def check(self) -> str:
        conf = str(self.root / "named.conf")
        output = run_tool("named-checkconf", "-z", conf)
        return output

    def start(self) -> None:
        """Check the export, then run it with the command channel off (no fixed port 953, so
        that several test servers can run at once); ready once every zone is loaded."""
        self.check()
        wrapper = self.root / "run-named.conf"
        wrapper.write_text(f'include "{self.root}/named.conf";\ncontrols {{ }};\n')
        log = self.root / "named.log"
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [tool("named"), "-g", "-c", str(wrapper)],
                stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
            )  # fmt: skip
        _wait_listening(self.address, self.process, "named", log)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while "all zones loaded" not in _tail(log, 200):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise ClusterError(f"named did not load its zones:\n{_tail(log)}")
            time.sleep(POLL_S)

    def stop(self) -> None:
        _stop(self.process)

    def __enter__(self) -> NamedServer:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
