"""Position gates: when has the database copy a fill read from caught up with the writer?

A fill read from a binlog replica may be stale. Right after the load the read path asks the
site's gate for a **mark** (the writer's position then) and queues the key for one reload;
the reloader asks `passed()` and reloads the key once the local copy has applied the mark
(`multiactive.db.positions.MariaDbGate` on MariaDB), or when `reload_after_s` is up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

CURRENT = ""  # the mark of a copy that is the writer's own: nothing to wait for
UNKNOWN = "?"  # the writer's position was not known: only the deadline reloads


class PositionGate(Protocol):
    """Where the database copy a fill read from stands, against the writer."""

    async def mark(self) -> str:
        """Taken right after a fill's load: the position the local copy must pass before a
        reload sees every write the writer had committed then ('' = nothing to wait for:
        no reload). Opaque text, kept durably with the queued reload."""
        ...

    async def passed(self, marks: Sequence[str]) -> list[bool]:
        """For each mark, has the local copy passed it now? One round trip for all."""
        ...

    async def close(self) -> None: ...


class CurrentGate:
    """The gate of a site whose database is the writer's own copy (independent mode, or the
    writer site): every load is current, no fill is reloaded."""

    async def mark(self) -> str:
        return CURRENT

    async def passed(self, marks: Sequence[str]) -> list[bool]:
        return [m == CURRENT for m in marks]

    async def close(self) -> None:
        return None


class ManualGate:
    """A gate whose positions a test moves by hand: `mark()` is the writer's position
    (`writer`), `passed()` compares it with the local copy's (`local`)."""

    def __init__(self, writer: int = 0, local: int = 0) -> None:
        self.writer, self.local = writer, local

    async def mark(self) -> str:
        return CURRENT if self.writer <= self.local else str(self.writer)

    async def passed(self, marks: Sequence[str]) -> list[bool]:
        return [m == CURRENT or (m != UNKNOWN and int(m) <= self.local) for m in marks]

    async def close(self) -> None:
        return None
