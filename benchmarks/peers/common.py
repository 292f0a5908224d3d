"""What the peer benchmarks share: child processes, the emulated link, the client loads, figures.

A peer's measurement runs its servers and one `multiactive wan run` process as children of
this process, under one temporary folder:

    with workspace("nats") as procs:
        procs.start("origin", ["nats-server", "-c", "origin.conf"])
        link = start_link(procs, "leaf-to-origin", target_port=7422, rtt_ms=40.0)

Every child is killed when the block ends, also on error, and gets SIGKILL if this process
dies first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from multiactive.procs import die_with_parent, free_port

PAYLOAD_BYTES = 1024
IN_FLIGHT = 4000  # unacknowledged publishes at most; 8 000 made no difference to either peer
READY_TIMEOUT_S = 60.0
KILL_WAIT_S = 20.0
_STAMP = struct.Struct("<d")


class PeerError(RuntimeError):
    """A peer's process did not start, or did not reach a state the benchmark waited for."""


class Processes:
    """The child processes of one measurement, each logging to ROOT/NAME.log.

    Each child leads its own process group, so that killing the group at exit also ends
    whatever it spawned (a shell script's server, an Erlang VM's helpers).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.children: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self,
        name: str,
        command: list[str],
        env: dict[str, str] | None = None,
        keep_stdin_open: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Start a child; with `keep_stdin_open` its stdin is a pipe that stays open."""
        with (self.root / f"{name}.log").open("ab") as log:
            child = subprocess.Popen(
                command,
                stdin=subprocess.PIPE if keep_stdin_open else subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.root,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        self.children[name] = child
        return child

    def check_alive(self, name: str) -> None:
        if self.children[name].poll() is not None:
            raise PeerError(f"{name} exited:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            text = (self.root / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def kill_all(self) -> None:
        for child in self.children.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
        for child in self.children.values():
            child.wait(KILL_WAIT_S)
            if child.stdin is not None:
                child.stdin.close()

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill_all()


@contextlib.contextmanager
def workspace(system: str) -> Iterator[Processes]:
    """A temporary folder and the processes run in it; all removed at the end."""
    with (
        tempfile.TemporaryDirectory(prefix=f"multiactive-peer-{system}-") as tmp,
        Processes(Path(tmp)) as procs,
    ):
        yield procs


def wait_until(
    check: Callable[[], bool], what: str, procs: Processes, name: str, timeout_s: float
) -> None:
    """Poll `check` until it is true; fail early if process `name` has exited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        procs.check_alive(name)
        with contextlib.suppress(OSError):
            if check():
                return
        time.sleep(0.05)
    raise PeerError(f"{what} not ready within {timeout_s} s:\n{procs.log_tail(name)}")


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass(frozen=True)
class EmulatedLink:
    """One link of a `multiactive wan run` process: connect to `port` to reach the target."""

    name: str
    port: int
    control_port: int

    def statistics(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.control_port}/links"
        with urllib.request.urlopen(url, timeout=10) as response:
            links: list[dict[str, Any]] = json.load(response)
        return next(link for link in links if link["name"] == self.name)

    def bytes_carried(self) -> int:
        stats = self.statistics()
        return int(stats["bytes_forward"]) + int(stats["bytes_backward"])


def start_link(procs: Processes, name: str, target_port: int, rtt_ms: float) -> EmulatedLink:
    """Run our WAN emulator with one link in front of 127.0.0.1:`target_port`, delaying each
    direction by half of `rtt_ms`."""
    link = EmulatedLink(name, free_port(), free_port())
    spec = f"{name}=127.0.0.1:{link.port}>127.0.0.1:{target_port},delay_ms={rtt_ms / 2}"
    command = [
        sys.executable, "-m", "multiactive", "wan", "run",
        "--control", f"127.0.0.1:{link.control_port}", "--log-level", "WARNING", "--link", spec,
    ]  # fmt: skip
    procs.start("wan", command)
    wait_until(link.statistics, "the WAN emulator", procs, "wan", READY_TIMEOUT_S)
    return link


# -- client loads ------------------------------------------------------------------------

Publish = Callable[[bytes], Awaitable[object]]  # returns when the server acknowledged


class Stopwatch:
    """Wall-clock seconds, and this process's CPU seconds, from `start()` to `stop()` (or
    over a `with` block)."""

    def start(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def stop(self) -> None:
        self.seconds = time.perf_counter() - self._wall
        self.cpu_seconds = time.process_time() - self._cpu

    def __enter__(self) -> Stopwatch:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


async def paced(publish: Publish, rate: float, duration_s: float) -> int:
    """Publish time-stamped messages at `rate` per second for `duration_s`; the count sent."""
    sent = 0
    tasks: set[asyncio.Task[object]] = set()
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < duration_s:
        for _ in range(int(elapsed * rate) - sent):
            task = asyncio.ensure_future(publish(stamped()))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        await asyncio.sleep(0.001)
    if tasks:
        await asyncio.gather(*tasks)
    return sent


def stamped() -> bytes:
    """A 1 KiB payload that starts with the time it was made."""
    return _STAMP.pack(time.perf_counter()).ljust(PAYLOAD_BYTES, b"x")


class Latencies:
    """Receipt time minus the stamp of each message received (same process, same clock)."""

    def __init__(self) -> None:
        self.samples_ms: list[float] = []

    def received(self, payload: bytes) -> None:
        (sent,) = _STAMP.unpack_from(payload)
        self.samples_ms.append((time.perf_counter() - sent) * 1000)

    async def wait_for(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.samples_ms) < count:
            if time.monotonic() > deadline:
                raise PeerError(f"received {len(self.samples_ms)} of {count} within {timeout_s} s")
            await asyncio.sleep(0.01)

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.samples_ms)
        return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 1)


# -- figures -----------------------------------------------------------------------------


@dataclass
class Measured:
    """What one peer run measured, before it is turned into the shared result keys."""

    system: str
    version: str
    rtt_ms: float
    durability: str
    messages: int
    ingress: Stopwatch
    catch_up_messages: int
    catch_up_s: float
    rate: float
    latencies: Latencies
    link_bytes: int
    cpu_us_per_msg: dict[str, dict[str, float]] = field(default_factory=dict)
    receiver_cpu_s: float = 0.0  # the receiving server's CPU during the catch-up

    def result(self) -> dict[str, Any]:
        mib = self.catch_up_messages * PAYLOAD_BYTES / (1 << 20)
        return {
            "system": self.system,
            "version": self.version,
            "rtt_ms": self.rtt_ms,
            "messages": self.messages,
            "payload_bytes": PAYLOAD_BYTES,
            "ingress_msgs_per_s": round(self.messages / self.ingress.seconds),
            "ingress_client_cpu_pct": round(100 * self.ingress.cpu_seconds / self.ingress.seconds),
            "catch_up_msgs_per_s": round(self.catch_up_messages / self.catch_up_s),
            "catch_up_mib_per_s": round(mib / self.catch_up_s, 1),
            "latency_rate_msgs_per_s": self.rate,
            "latency_messages": len(self.latencies.samples_ms),
            "latency_p50_ms": self.latencies.percentile(0.50),
            "latency_p99_ms": self.latencies.percentile(0.99),
            "link_mib_carried": round(self.link_bytes / (1 << 20), 1),
            "cpu_us_per_msg": self.cpu_us_per_msg,
            "catch_up_receiver_cpu_ms_per_mib": round(self.receiver_cpu_s * 1000 / mib, 2),
            "durability": self.durability,
        }


def guarded(system: str, rtt_ms: float, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`measure()`, or an error result naming why it could not be measured (no figures)."""
    try:
        return measure()
    except Exception as exc:
        return {"system": system, "rtt_ms": rtt_ms, "error": f"{type(exc).__name__}: {exc}"}
