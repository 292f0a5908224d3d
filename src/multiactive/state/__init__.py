"""State backends: a site's cache, with watermarks and dead letters committed beside it."""

from __future__ import annotations

from multiactive.model.topology import Topology
from multiactive.state.base import (
    BUILTIN_TYPES,
    Commit,
    DeadLetter,
    Entry,
    Member,
    Op,
    StateBackend,
    Watermark,
)
from multiactive.state.memory import MemoryState
from multiactive.state.sqlite import SqliteState

__all__ = [
    "BUILTIN_TYPES",
    "Commit",
    "DeadLetter",
    "Entry",
    "Member",
    "MemoryState",
    "Op",
    "SqliteState",
    "StateBackend",
    "Watermark",
    "open_state",
]


def open_state(topology: Topology, site_name: str) -> StateBackend:
    """The state backend a site's configuration names (not yet opened)."""
    site = topology.site(site_name)
    cap = topology.limits.zset_cap
    if site.state == "memory":
        return MemoryState(cap)
    return SqliteState(site.name, site.data_dir / "state.sqlite3", cap)
