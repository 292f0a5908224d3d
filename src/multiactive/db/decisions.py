"""Failover decisions as records, and the bounded log a site keeps of them (`multiactive.db.auto`
makes them; the admin API, `/status` and the dashboard show them). Apart from the watcher, so
that a site reads and keeps decisions without importing the MariaDB client."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from multiactive.model.record import Record

DECISION_HISTORY = 200  # decisions a site keeps (the watcher reports changes only)
STATUS_DECISIONS = 20  # the newest of them in /status


@dataclass(frozen=True, slots=True)
class Decision(Record):
    action: str  # healthy | suspect | fail_over | blocked | no_candidate | failed_over
    reason: str
    target: str | None = None
    down_for_s: float = 0.0
    at_ms: int = 0  # wall time the watcher decided (0: not yet stamped)
    watcher: str = ""  # who decided: host and pid of `multiactive db watch`
    acting: bool = False  # the watcher runs with --auto (a fail_over decision is carried out)


@dataclass(frozen=True, slots=True)
class DecisionHistory(Record):
    """`GET /db/decisions`: the failover decisions this site was told of, newest first."""

    site: str
    decisions: tuple[Decision, ...]


class DecisionLog:
    """The last `size` decisions, as one site keeps them (in memory: a restart forgets)."""

    def __init__(self, size: int = DECISION_HISTORY) -> None:
        self._decisions: deque[Decision] = deque(maxlen=size)

    def add(self, decision: Decision) -> None:
        self._decisions.append(decision)

    def newest(self, count: int | None = None) -> tuple[Decision, ...]:
        found = tuple(reversed(self._decisions))
        return found if count is None else found[:count]
