"""Journals: a site's durable store of record batches, per (origin, partition)."""

from __future__ import annotations

from multiactive.journal.base import Accepted, Journal, LocalGroup, RemoteResult
from multiactive.journal.memory import MemoryJournal
from multiactive.journal.sqlite import SqliteJournal
from multiactive.model.batch import CODEC_NAMES
from multiactive.model.topology import ReplicationSettings, SiteConfig

__all__ = [
    "Accepted",
    "Journal",
    "LocalGroup",
    "MemoryJournal",
    "RemoteResult",
    "SqliteJournal",
    "open_journal",
]


def open_journal(site: SiteConfig, settings: ReplicationSettings) -> Journal:
    """The journal backend a site's configuration names (not yet opened)."""
    codec = CODEC_NAMES[settings.compression]
    if site.journal == "memory":
        return MemoryJournal(site.name, codec)
    return SqliteJournal(
        site.name, site.data_dir / "journal.sqlite3", fsync=settings.fsync, codec=codec
    )
