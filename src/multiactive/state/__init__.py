"""State backends: a site's cache, with watermarks and dead letters committed beside it."""

from __future__ import annotations

from multiactive.model.topology import ReplicationSettings, SiteConfig
from multiactive.state.base import (
    BUILTIN_TYPES,
    Commit,
    DeadLetter,
    Entry,
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
    "MemoryState",
    "Op",
    "SqliteState",
    "StateBackend",
    "Watermark",
    "open_state",
]


def open_state(site: SiteConfig, settings: ReplicationSettings) -> StateBackend:
    """The state backend a site's configuration names (not yet opened)."""
    if site.state == "memory":
        return MemoryState()
    return SqliteState(site.name, site.data_dir / "state.sqlite3")
