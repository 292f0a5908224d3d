"""Journals: a site's durable store of record batches, per (origin, partition).

`RedisJournal` is imported on first use (`open_journal` for a redis site, or the name itself):
redis-py takes longer to import than the rest of the site, and a site on SQLite never uses it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from multiactive.journal.base import Accepted, Journal, LocalGroup, RemoteResult
from multiactive.journal.memory import MemoryJournal
from multiactive.journal.sqlite import SqliteJournal
from multiactive.model.batch import CODEC_NAMES
from multiactive.model.topology import ReplicationSettings, SiteConfig

if TYPE_CHECKING:
    from multiactive.journal.redis import RedisJournal

__all__ = [
    "Accepted",
    "Journal",
    "LocalGroup",
    "MemoryJournal",
    "RedisJournal",
    "RemoteResult",
    "SqliteJournal",
    "open_journal",
]


def __getattr__(name: str) -> Any:
    if name == "RedisJournal":
        from multiactive.journal.redis import RedisJournal

        return RedisJournal
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_journal(site: SiteConfig, settings: ReplicationSettings) -> Journal:
    """The journal backend a site's configuration names (not yet opened)."""
    codec = CODEC_NAMES[settings.compression]
    if site.journal == "memory":
        return MemoryJournal(site.name, codec)
    if site.journal == "redis":
        assert site.redis_url is not None  # the topology requires it for redis
        from multiactive.journal.redis import RedisJournal

        return RedisJournal(
            site.name, site.redis_url, codec=codec, setting=f"redis_url of site {site.name!r}"
        )
    return SqliteJournal(
        site.name, site.data_dir / "journal.sqlite3", fsync=settings.fsync, codec=codec
    )
