"""Run a whole topology on this machine: one real `multiactive site run` process per site.

Used by `multiactive demo`, the integration tests and the benchmarks. Ports are picked free,
data lives under one folder, every process is killed at the end.

    with LocalCluster(tmp_path, ["bj-unicom", "bj-telecom", "gz"]) as cluster:
        cluster.start()
        asyncio.run(write_some(cluster.client_address("gz")))
        cluster.wait_converged(timeout_s=30)
        cluster.kill("gz")       # SIGKILL
        cluster.restart("gz")

With `backend="redis"` every site gets its own `redis-server` (`multiactive.local.redis`:
free port, data under the cluster's folder, `appendonly yes` + `appendfsync always`), started
with the first `start()`, left running when a site is killed, killed with the cluster. With
`backend="redis-cluster"` every site gets its own Redis Cluster of three masters instead
(`RedisClusterServers`; the site's journal and state are "redis" on a `redis+cluster://` URL).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from multiactive.errors import ClusterError
from multiactive.model.topology import Address
from multiactive.procs import die_with_parent, free_port
from multiactive.records import HeadsAnswer, LinkStatistics, SiteStatus
from multiactive.wan.shape import LinkShape

if TYPE_CHECKING:
    from multiactive.local.redis import SiteRedis

DEFAULT_SITES = ("bj-unicom", "bj-telecom", "gz")
# LocalCluster backends on Redis (their sites' journal and state backend is "redis").
REDIS_BACKENDS = frozenset({"redis", "redis-cluster"})
READY_TIMEOUT_S = 30.0
READY_POLL_S = 0.01  # a refused connection to a starting site's admin port costs ~nothing
STOP_TIMEOUT_S = 20.0
DIGEST_TIMEOUT_S = 30.0


@dataclass
class SiteProcess:
    name: str
    listen: Address
    admin: Address
    data_dir: Path
    log_path: Path
    command: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        if self.alive:
            raise ClusterError(f"site {self.name} is already running")
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            preexec_fn=die_with_parent,
        )
        log.close()
        self.starts += 1

    def signal(self, sig: int) -> None:
        if self.alive:
            assert self.process is not None
            self.process.send_signal(sig)

    def wait(self, timeout_s: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout_s)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class LocalCluster:
    root: Path
    sites: Sequence[str] = DEFAULT_SITES
    partitions: int = 8
    default_mode: str = "push"
    modes: Mapping[tuple[str, str], str] = field(default_factory=dict)
    link_addresses: Mapping[tuple[str, str], Address] = field(default_factory=dict)
    backend: str = "sqlite"
    handlers: Sequence[str] = ()
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    name: str = "local"
    log_level: str = "INFO"
    extra_pythonpath: Sequence[str] = ()
    wan: Mapping[tuple[str, str], LinkShape] | None = None  # every link through the emulator
    routing: str = ""  # TOML appended to the topology: its [routing] section (docs/routing.md)
    processes: dict[str, SiteProcess] = field(init=False, default_factory=dict)
    emulator: SiteProcess | None = field(init=False, default=None)
    redis: dict[str, SiteRedis] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        # Canaries are journaled messages; tests that count messages exactly would see them.
        # A cluster gets them only when its settings ask (the demo does).
        replication = dict(self.settings.get("replication", {}))
        replication.setdefault("canary_interval_s", 0.0)
        self.settings = {**self.settings, "replication": replication}
        self.root = Path(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.topology_path = self.root / "topology.toml"
        env = dict(os.environ)
        paths = [*self.extra_pythonpath, env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        for site in self.sites:
            listen = Address("127.0.0.1", free_port())
            admin = Address("127.0.0.1", free_port())
            command = [
                sys.executable, "-m", "multiactive", "site", "run",
                "--topology", str(self.topology_path), "--site", site,
                "--log-level", self.log_level,
                *(arg for module in self.handlers for arg in ("--handlers", module)),
            ]  # fmt: skip
            self.processes[site] = SiteProcess(
                site, listen, admin, self.root / site, self.root / f"{site}.log", command, env
            )
        if self.wan is not None:
            self._plan_emulator(env)
        if self.backend in REDIS_BACKENDS:
            self._plan_redis()
        self.write_topology()

    def _plan_redis(self) -> None:
        """One redis-server, or one Redis Cluster, per site (started by `start`)."""
        from multiactive.local.redis import RedisClusterServers, RedisServer, redis_server_path

        redis_server_path()  # fail now, naming the package, if it is not installed
        kind = RedisClusterServers if self.backend == "redis-cluster" else RedisServer
        self.redis = {site: kind(self.root / f"{site}-redis") for site in self.sites}

    def _plan_emulator(self, env: dict[str, str]) -> None:
        """Route every link through one `multiactive wan run` process."""
        assert self.wan is not None
        control = Address("127.0.0.1", free_port())
        specs = []
        addresses = dict(self.link_addresses)
        for origin in self.sites:
            for receiver in self.sites:
                if origin == receiver:
                    continue
                mode = self.modes.get((origin, receiver), self.default_mode)
                target = self.processes[receiver if mode == "push" else origin].listen
                listen = Address("127.0.0.1", free_port())
                shape = self.wan.get((origin, receiver), LinkShape())
                specs.append(
                    f"{wan_link_name(origin, receiver)}={listen}>{target},"
                    f"delay_ms={shape.delay_ms},jitter_ms={shape.jitter_ms},"
                    f"bandwidth_mbps={shape.bandwidth_mbps}"
                )
                addresses[(origin, receiver)] = listen
        self.link_addresses = addresses
        command = [
            sys.executable, "-m", "multiactive", "wan", "run", "--control", str(control),
            "--log-level", self.log_level, *(arg for spec in specs for arg in ("--link", spec)),
        ]  # fmt: skip
        self.emulator = SiteProcess(
            "wan", control, control, self.root, self.root / "wan.log", command, env
        )

    # -- configuration -------------------------------------------------------------------

    def write_topology(self) -> None:
        lines = [
            "[cluster]",
            f'name = "{self.name}"',
            f"partitions = {self.partitions}",
            f'default_link_mode = "{self.default_mode}"',
        ]
        for table, values in self.settings.items():
            lines += ["", f"[{table}]", *(f"{k} = {_toml(v)}" for k, v in values.items())]
        for proc in self.processes.values():
            lines += [
                "",
                "[[sites]]",
                f'name = "{proc.name}"',
                f'listen = "{proc.listen}"',
                f'admin = "{proc.admin}"',
                f'data_dir = "{proc.data_dir}"',
                f'journal = "{self.store_backend}"',
                f'state = "{self.store_backend}"',
            ]
            if proc.name in self.redis:
                lines.append(f'redis_url = "{self.redis[proc.name].url}"')
        for origin, receiver in sorted(set(self.modes) | set(self.link_addresses)):
            lines += ["", "[[links]]", f'from = "{origin}"', f'to = "{receiver}"']
            if (origin, receiver) in self.modes:
                lines.append(f'mode = "{self.modes[(origin, receiver)]}"')
            if (origin, receiver) in self.link_addresses:
                lines.append(f'address = "{self.link_addresses[(origin, receiver)]}"')
        self.topology_path.write_text("\n".join(lines) + "\n" + self.routing)

    @property
    def store_backend(self) -> str:
        """The journal and state backend the sites' topology names."""
        return "redis" if self.backend in REDIS_BACKENDS else self.backend

    def client_address(self, site: str) -> Address:
        return self.processes[site].listen

    # -- processes -----------------------------------------------------------------------

    def start(self, sites: Iterable[str] | None = None, *, wait: bool = True) -> None:
        """Start the emulator (if any, not running) and the sites at once: a site dialing a
        link before the emulator listens retries. Returns once the emulator answers and, with
        `wait`, every started site is ready."""
        emulator = self.emulator is not None and not self.emulator.alive
        if emulator:
            assert self.emulator is not None
            self.emulator.start()
        chosen = list(sites or self.sites)
        self.start_redis(chosen)
        for site in chosen:
            self.processes[site].start()
        if emulator:
            self._wait_emulator()
        if wait:
            for site in chosen:
                self.wait_ready(site)

    def start_redis(self, sites: Iterable[str]) -> None:
        """Start the Redis of these sites where some of it is down (all at once), and wait
        until each serves."""
        down = [self.redis[site] for site in sites if site in self.redis]
        down = [redis for redis in down if not redis.alive]
        for redis in down:
            redis.launch()
        for redis in down:
            redis.wait_ready()

    def restart(self, site: str, *, wait: bool = True) -> None:
        self.start([site], wait=wait)

    def kill(self, site: str) -> None:
        """SIGKILL: the process gets no chance to flush or close anything."""
        proc = self.processes[site]
        proc.signal(signal.SIGKILL)
        if proc.process is not None:
            proc.wait(STOP_TIMEOUT_S)

    def terminate(self, site: str, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM and wait for a clean exit; returns the exit code."""
        proc = self.processes[site]
        proc.signal(signal.SIGTERM)
        try:
            return proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.signal(signal.SIGKILL)
            proc.wait(timeout_s)
            raise ClusterError(
                f"site {site} did not stop within {timeout_s} s of SIGTERM"
            ) from None

    def stop(self) -> None:
        for site, proc in self.processes.items():
            if proc.alive:
                with contextlib.suppress(ClusterError):
                    self.terminate(site)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        extra = [self.emulator] if self.emulator is not None else []
        for proc in [*self.processes.values(), *extra]:
            proc.signal(signal.SIGKILL)
            if proc.process is not None:
                proc.process.wait(STOP_TIMEOUT_S)
        for server in self.redis.values():
            server.kill()

    # -- WAN emulator ----------------------------------------------------------------------

    def _wait_emulator(self) -> None:
        assert self.emulator is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.emulator.alive:
                raise ClusterError(f"the WAN emulator exited:\n{self.emulator.log_tail()}")
            try:
                self.wan_control("GET", "/links")
                return
            except (OSError, urllib.error.URLError):
                time.sleep(READY_POLL_S)
        raise ClusterError(f"the WAN emulator is not ready:\n{self.emulator.log_tail()}")

    def wan_control(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        if self.emulator is None:
            raise ClusterError("this cluster runs without a WAN emulator (wan=None)")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://{self.emulator.admin}{path}", data=data, method=method
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def links_of(self, site: str) -> list[tuple[str, str]]:
        return [(o, r) for o in self.sites for r in self.sites if o != r and site in (o, r)]

    def cut(self, origin: str, receiver: str, mode: str = "reset") -> None:
        self.wan_control("POST", f"/links/{wan_link_name(origin, receiver)}/cut", {"mode": mode})

    def heal(self, origin: str, receiver: str) -> None:
        self.wan_control("POST", f"/links/{wan_link_name(origin, receiver)}/heal", {})

    def isolate(self, site: str, mode: str = "reset") -> None:
        """Cut every link to and from a site (a site whose long-haul lines failed)."""
        for origin, receiver in self.links_of(site):
            self.cut(origin, receiver, mode)

    def rejoin(self, site: str) -> None:
        for origin, receiver in self.links_of(site):
            self.heal(origin, receiver)

    # -- admin API -----------------------------------------------------------------------

    def get(self, site: str, path: str, timeout_s: float = 5.0) -> Any:
        url = f"http://{self.processes[site].admin}{path}"
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return json.load(response)

    def status(self, site: str) -> SiteStatus:
        return SiteStatus.from_json(self.get(site, "/status"))

    def link(self, site: str, name: str) -> LinkStatistics:
        """One link's statistics at one end (`site`), from its /status."""
        links = {link.name: link for link in self.status(site).links}
        return links[name]

    def heads(self, site: str, origin: str) -> dict[int, tuple[int, int]]:
        """Per partition of `origin`'s streams at `site`: (journal head, applied watermark),
        from the site's memory (`/heads`: cheap, unlike `/status`, while the site is busy)."""
        answer = HeadsAnswer.from_json(self.get(site, "/heads"))
        return {s.partition: (s.head, s.applied) for s in answer.streams if s.origin == origin}

    def digest(self, site: str, timeout_s: float = DIGEST_TIMEOUT_S) -> str:
        """The site's state digest: a read of its whole state (on Redis, a SCAN of every
        key), so it gets longer than other admin calls on a loaded machine."""
        return str(self.get(site, "/state/digest", timeout_s=timeout_s)["digest"])

    def wait_ready(self, site: str, timeout_s: float = READY_TIMEOUT_S) -> None:
        proc = self.processes[site]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not proc.alive:
                raise ClusterError(f"site {site} exited while starting:\n{proc.log_tail()}")
            try:
                self.get(site, "/health", timeout_s=1.0)
                return
            except (OSError, urllib.error.URLError):
                time.sleep(READY_POLL_S)
        raise ClusterError(f"site {site} not ready within {timeout_s} s:\n{proc.log_tail()}")

    def converged(self, sites: Iterable[str] | None = None) -> bool:
        """Every site has received and applied every origin's whole journal."""
        chosen = list(sites or self.sites)
        statuses = {site: self.status(site) for site in chosen}
        own = {site: _stream_heads(statuses[site], only_origin=site) for site in chosen}
        for status in statuses.values():
            streams = {(s.origin, s.partition): s for s in status.streams}
            for heads in own.values():
                for stream, head in heads.items():
                    got = streams.get(stream)
                    if got is None or got.head != head or got.applied != head:
                        return False
        return True

    def wait_converged(self, timeout_s: float = 60.0, sites: Iterable[str] | None = None) -> None:
        chosen = list(sites or self.sites)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self.converged(chosen):
                    return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.05)
        report = {site: self.status(site).to_json()["origins"] for site in chosen}
        raise ClusterError(f"not converged within {timeout_s} s: {json.dumps(report)}")


def wan_link_name(origin: str, receiver: str) -> str:
    return f"{origin}-to-{receiver}"


def _stream_heads(status: SiteStatus, only_origin: str) -> dict[tuple[str, int], int]:
    return {(s.origin, s.partition): s.head for s in status.streams if s.origin == only_origin}


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Mapping):  # an inline table, e.g. [database] sites
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    return repr(value)
