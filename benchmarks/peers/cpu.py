"""CPU seconds of the processes a measurement involves, per phase: what each system spends
per message, a figure that a busy machine disturbs far less than a rate.

    meter = CpuMeter(lambda: {"origin": origin.pid, "receiver": receiver.pid})
    with meter.phase("ingress", messages=200_000, client=True):
        ...
    meter.per_message()  # {"ingress": {"origin": 31.2, "client": 12.0, "total": 43.2}}

A role's figure is the user + system CPU of its process and every living descendant that is not
itself a role (so a site's applier counts with its site unless it is named apart), read from
/proc at the phase's start and end. A process
that starts during a phase counts from zero. `client=True` adds this process (the load
generator) as the role "client". Roles named in `apart` (the WAN emulator: the measuring
apparatus, the same for every system) are reported but left out of "total".
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

TICKS_PER_S = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")
APART = ("wan",)


def _processes() -> tuple[dict[int, int], dict[int, float]]:
    """Every process's parent pid and CPU seconds (user + system)."""
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:  # exited while we looked
            continue
        # pid (comm) state ppid ... utime stime: comm may hold spaces and parentheses
        fields = text[text.rindex(")") + 2 :].split()
        pid = int(entry.name)
        parent[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / TICKS_PER_S
    return parent, cpu


def child_pids(pid: int) -> list[int]:
    """The living children of `pid`."""
    parent, _ = _processes()
    return sorted(child for child, ppid in parent.items() if ppid == pid)


def process_tree_cpu_s(pids: Mapping[str, int]) -> dict[str, float]:
    """Per role: CPU seconds of that pid and its living descendants that are not roles
    themselves (0 for a pid gone)."""
    parent, cpu = _processes()
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    named = set(pids.values())

    def tree(pid: int) -> float:
        below = (tree(c) for c in children.get(pid, ()) if c not in named)
        return cpu.get(pid, 0.0) + sum(below)

    return {role: tree(pid) for role, pid in pids.items()}


class CpuMeter:
    """CPU seconds per role and phase; `pids()` is asked at each sample (processes come and go)."""

    def __init__(self, pids: Callable[[], Mapping[str, int]], apart: tuple[str, ...] = APART):
        self._pids = pids
        self._apart = apart
        self.seconds: dict[str, dict[str, float]] = {}
        self.messages: dict[str, int] = {}
        self._open: dict[str, dict[str, float]] = {}

    def sample(self, client: bool) -> dict[str, float]:
        figures = process_tree_cpu_s(self._pids())
        if client:
            figures["client"] = time.process_time()
        return figures

    def start(self, name: str, client: bool = False) -> None:
        self._open[name] = self.sample(client)

    def stop(self, name: str, messages: int) -> None:
        before = self._open.pop(name)
        after = self.sample("client" in before)
        self.seconds[name] = {role: after[role] - before.get(role, 0.0) for role in after}
        self.messages[name] = messages

    @contextlib.contextmanager
    def phase(self, name: str, messages: int, client: bool = False) -> Iterator[None]:
        self.start(name, client)
        yield
        self.stop(name, messages)

    def per_message(self) -> dict[str, dict[str, float]]:
        """Per phase and role: CPU microseconds per message, with "total" (roles not apart)."""
        report: dict[str, dict[str, float]] = {}
        for name, roles in self.seconds.items():
            count = max(1, self.messages[name])
            figures = {role: round(s * 1e6 / count, 1) for role, s in sorted(roles.items())}
            total = sum(s for role, s in roles.items() if role not in self._apart)
            figures["total"] = round(total * 1e6 / count, 1)
            report[name] = figures
        return report
