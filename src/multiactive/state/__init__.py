"""State backends: a site's cache, with watermarks and dead letters committed beside it.

`RedisState` is imported on first use (`open_state` for a redis site, or the name itself):
redis-py takes longer to import than the rest of the site, and a site on SQLite never uses it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from multiactive.state.redis import RedisState

__all__ = [
    "BUILTIN_TYPES",
    "Commit",
    "DeadLetter",
    "Entry",
    "Member",
    "MemoryState",
    "Op",
    "RedisState",
    "SqliteState",
    "StateBackend",
    "Watermark",
    "open_state",
]


def __getattr__(name: str) -> Any:
    if name == "RedisState":
        from multiactive.state.redis import RedisState

        return RedisState
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_state(
    topology: Topology, site_name: str, *, inline: bool = False, checkpoint_thread: bool = False
) -> StateBackend:
    """The state backend a site's configuration names (not yet opened); `inline` and
    `checkpoint_thread`: see `SqliteState`."""
    site = topology.site(site_name)
    cap = topology.limits.zset_cap
    if site.state == "memory":
        return MemoryState(cap)
    if site.state == "redis":
        assert site.redis_url is not None  # the topology requires it for redis
        from multiactive.state.redis import RedisState

        return RedisState(
            site.name,
            site.redis_url,
            topology.partitions,
            cap,
            setting=f"redis_url of site {site.name!r}",
        )
    return SqliteState(
        site.name,
        site.data_dir / "state.sqlite3",
        cap,
        inline=inline,
        checkpoint_thread=checkpoint_thread,
    )
