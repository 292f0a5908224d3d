"""A site's database and DB apply, built from the topology's [database] section."""

from __future__ import annotations

from multiactive.clock import Clock
from multiactive.db.apply import DbApply
from multiactive.db.base import Database
from multiactive.db.config import DatabaseUrl, database_settings
from multiactive.db.control import WRITER_TYPE
from multiactive.journal.base import Journal
from multiactive.model.topology import Topology
from multiactive.replication.handlers import HandlerRegistry


def open_database(url: DatabaseUrl, where: str, *, create_schema: bool = True) -> Database:
    """The backend for a URL (not yet connected: call `open()`)."""
    if url.scheme == "sqlite":
        from multiactive.db.sqlite import SqliteDatabase

        assert url.path is not None
        return SqliteDatabase(url.path, where)
    from multiactive.db.mariadb import MariaDatabase

    return MariaDatabase(url, where, create_schema=create_schema)


def open_db_apply(
    topology: Topology, site: str, journal: Journal, registry: HandlerRegistry, clock: Clock
) -> DbApply | None:
    """The site's DB apply, or None when it has nothing to do (independent mode without DB
    handlers). In writer mode it also registers the cache handler of `ma.db.writer`."""
    settings = database_settings(topology)
    if settings.mode == "independent" and not registry.db_types:
        return None
    entry = settings.site(site)
    apply = DbApply(
        site,
        settings.mode,
        open_database(entry.url, f"{settings.source}: {entry.where}.url"),
        registry.get_db,
        journal,
        topology.replication,
        clock,
        settings.writer,
    )
    if settings.mode == "writer" and registry.get(WRITER_TYPE) is None:
        registry.register(WRITER_TYPE, apply.on_writer_message)
    return apply
