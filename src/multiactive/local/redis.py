"""Redis servers for tests, the demo and benchmarks: on free ports, data in a folder of ours,
killed at the end and with their parent (like the site processes of `LocalCluster`).

They run as the redis journal needs for J3 across a crash of the server: `appendonly yes`,
`appendfsync always` (the append-only file is fsynced before a reply), and no RDB snapshots.

    with RedisServer(tmp_path / "redis") as server:
        server.url                          # redis://127.0.0.1:<port>/0
    with RedisClusterServers(tmp_path / "cluster") as cluster:
        cluster.url                         # redis+cluster://127.0.0.1:<port>, 3 masters
        cluster.nodes[1].kill()             # SIGKILL one node: its slots are unavailable
        cluster.start()                     # start it again on its data, until cluster_state:ok

Both are a `SiteRedis`: what one site's journal and state live on, killed and started whole
or one node at a time (`nodes`), as `LocalCluster` and the chaos checker do.
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
from typing import Protocol

import redis
from redis.crc import key_slot

from multiactive.errors import ConfigError
from multiactive.procs import die_with_parent, free_port

REDIS_SERVER = "redis-server"
DEBIAN_PACKAGE = "redis-server"
READY_TIMEOUT_S = 20.0
POLL_S = 0.02
CLUSTER_SLOTS = 16384
CLUSTER_MASTERS = 3  # nodes of a RedisClusterServers unless told otherwise
# What the redis journal needs for J3 across a server crash (see multiactive.journal.redis).
DURABLE = ("--appendonly", "yes", "--appendfsync", "always", "--save", "")


def redis_server_path() -> str:
    """The redis-server binary, or a ConfigError naming the Debian package."""
    path = shutil.which(REDIS_SERVER)
    if path is None:
        raise ConfigError(
            f"the redis backend needs {REDIS_SERVER}, which is not installed; on Debian or "
            f"Ubuntu: apt-get install {DEBIAN_PACKAGE}"
        )
    return path


class SiteRedis(Protocol):
    """The Redis one site uses: a single server or a cluster of nodes."""

    @property
    def url(self) -> str:
        """The site's `redis_url`."""

    @property
    def nodes(self) -> Sequence[RedisServer]:
        """Its redis-server processes (one for a single server)."""

    @property
    def alive(self) -> bool:
        """Every node is running."""

    def launch(self) -> None:
        """Start whatever is not running, on its data, without waiting until it serves."""

    def wait_ready(self, timeout_s: float = ...) -> None:
        """Until it serves commands (ConfigError past the timeout)."""

    def start(self) -> None:
        """`launch`, then `wait_ready`."""

    def kill(self) -> None:
        """SIGKILL every node."""


@dataclass
class RedisServer:
    """One redis-server process; `cluster=True` starts it as an empty cluster node."""

    root: Path
    port: int = field(default_factory=free_port)
    cluster: bool = False
    bus_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def nodes(self) -> Sequence[RedisServer]:
        return (self,)

    def command(self) -> list[str]:
        command = [
            redis_server_path(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.root), *DURABLE,
        ]  # fmt: skip
        if self.cluster:
            command += [
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-port", str(self.bus_port), "--cluster-node-timeout", "5000",
            ]  # fmt: skip
        return command

    def start(self) -> None:
        """Start (or start again, on the same data) and wait until it answers PING."""
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start the process (or start it again, on the same data) unless it is running."""
        if self.alive:
            return
        command = self.command()
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
            )

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive:
                raise ConfigError(f"redis-server on port {self.port} exited:\n{self.log_tail()}")
            try:
                with self.client() as client:
                    client.ping()
                return
            except redis.exceptions.RedisError:
                time.sleep(POLL_S)
        raise ConfigError(f"redis-server on port {self.port} is not ready:\n{self.log_tail()}")

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1.0)

    def flush(self) -> None:
        with self.client() as client:
            client.flushall()

    def kill(self) -> None:
        """SIGKILL: the server gets no chance to write anything more."""
        if self.process is not None:
            if self.alive:
                self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.root / "redis.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()


@dataclass
class RedisClusterServers:
    """A Redis Cluster of `masters` nodes and no replicas, slots split evenly. A node killed
    alone leaves its slots unavailable (no replica takes over) until it is started again."""

    root: Path
    masters: int = CLUSTER_MASTERS
    nodes: list[RedisServer] = field(init=False, default_factory=list)
    formed: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.nodes = [
            RedisServer(self.root / f"node{i}", cluster=True) for i in range(self.masters)
        ]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    @property
    def alive(self) -> bool:
        return all(node.alive for node in self.nodes)

    def start(self) -> None:
        """Start every node that is not running (the first time: form the cluster), then
        wait until every node says cluster_state:ok."""
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start every node that is not running, all at once (the first time: form the
        cluster, which needs them serving), without waiting for cluster_state:ok (a node
        started again takes about 2 s to serve)."""
        down = [node for node in self.nodes if not node.alive]
        for node in down:
            node.launch()
        if not self.formed:
            for node in down:
                node.wait_ready()
            self._form()

    def _form(self) -> None:
        """Split the slots over the nodes and introduce them to each other."""
        for index, node in enumerate(self.nodes):
            with node.client() as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", *self._slots(index))
        with self.nodes[0].client() as client:
            for other in self.nodes[1:]:
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", other.port, other.bus_port)
        self.formed = True

    def node_of(self, key: str) -> RedisServer:
        """The node that serves `key` (by its hash slot, as `_form` split the slots)."""
        slot = key_slot(key.encode())
        return next(node for i, node in enumerate(self.nodes) if slot <= self._slots(i)[1])

    def _slots(self, index: int) -> tuple[int, int]:
        """The first and last slot of node `index`."""
        first = index * CLUSTER_SLOTS // self.masters
        return first, (index + 1) * CLUSTER_SLOTS // self.masters - 1

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until every node says cluster_state:ok and knows every other node."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(self._node_ok(node) for node in self.nodes):
                return
            time.sleep(POLL_S)
        raise ConfigError(f"Redis Cluster in {self.root} did not reach cluster_state:ok")

    def _node_ok(self, node: RedisServer) -> bool:
        try:
            with node.client() as client:
                info = client.execute_command("CLUSTER", "INFO")
        except redis.exceptions.RedisError:
            return False
        if isinstance(info, bytes):
            info = info.decode()
        text = str(info)
        return "cluster_state:ok" in text and f"cluster_known_nodes:{self.masters}" in text

    def flush(self) -> None:
        for node in self.nodes:
            node.flush()

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()

    def __enter__(self) -> RedisClusterServers:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()
