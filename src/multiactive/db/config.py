"""The topology's [database] section: which sites write the database, and where each one is.

    [database]
    mode = "writer"              # independent (default) | writer
    writer = "bj-unicom"         # writer mode: the site holding the role at first start
    replication_user = "repl"    # what replicas log in as (CHANGE MASTER on a failover)
    replication_password = "..."

    [database.sites.bj-unicom]
    url = "mysql://ma:secret@127.0.0.1:3306/app"            # the processors' account
    admin_url = "mysql://root@localhost/app?unix_socket=/run/mysqld/mysqld.sock"

`independent`: every site applies DB handlers to its own database; a site without a `url` gets
`sqlite:///database.sqlite` (relative SQLite paths are taken from the site's `data_dir`).
`writer`: only the site holding the DB-writer role applies DB handlers, into its MariaDB; the
other sites' databases are its binlog replicas. Every site needs a `mysql://` url then, and
`admin_url` (an account allowed to change replication) for `multiactive db` commands.

The topology model keeps [database] as a raw table (`Topology.extensions`); this module reads
it, and every error names the file and the key, e.g.
`topo.toml: database.writer: "xx" is not a site; [[sites]] defines: bj-unicom, gz`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from multiactive.errors import ConfigError, UnknownSiteError
from multiactive.model.topology import Topology

DbMode = Literal["independent", "writer"]
DB_MODES: tuple[DbMode, ...] = ("independent", "writer")
SQLITE_DEFAULT_URL = "sqlite:///database.sqlite"
MYSQL_SCHEMES = ("mysql", "mariadb")
DEFAULT_MYSQL_PORT = 3306
SECTION = "database"
DEFAULT_REPLICATION_USER = "repl"


@dataclass(frozen=True, slots=True)
class DatabaseUrl:
    """A parsed database URL: `sqlite:///path` or `mysql://user:password@host:port/db`
    (`?unix_socket=/path` to go through a socket)."""

    text: str
    scheme: Literal["sqlite", "mysql"]
    path: Path | None = None  # sqlite
    host: str = ""
    port: int = DEFAULT_MYSQL_PORT
    user: str = ""
    password: str = field(default="", repr=False)
    database: str = ""
    unix_socket: str | None = None

    @property
    def redacted(self) -> str:
        """The URL without its password, for messages and logs."""
        if self.password:
            return self.text.replace(f":{self.password}@", ":***@", 1)
        return self.text


@dataclass(frozen=True, slots=True)
class SiteDatabase:
    url: DatabaseUrl
    admin_url: DatabaseUrl | None
    where: str  # the key path of this site's table, for messages


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    mode: DbMode
    writer: str | None  # writer mode: the site holding the role at first start (epoch 1)
    sites: Mapping[str, SiteDatabase]
    source: str
    replication_user: str = DEFAULT_REPLICATION_USER
    replication_password: str = field(default="", repr=False)

    def site(self, name: str) -> SiteDatabase:
        return self.sites[name]

    def admin_url(self, name: str) -> DatabaseUrl:
        """The account `multiactive db` commands use at a site (its admin_url, else url)."""
        site = self.sites[name]
        return site.admin_url or site.url


def database_settings(topology: Topology) -> DatabaseSettings:
    """Parse and check the topology's [database] section (defaults when it is absent)."""
    raw = topology.extensions.get(SECTION, {})
    fail = _failer(topology.source)
    _known(
        raw, SECTION, {"mode", "writer", "sites", "replication_user", "replication_password"}, fail
    )
    mode = raw.get("mode", "independent")
    if mode not in DB_MODES:
        raise fail("database.mode", f'expected "independent" or "writer", got {mode!r}')
    writer = _writer(raw, mode, topology, fail)
    tables = raw.get("sites", {})
    if not isinstance(tables, Mapping):
        raise fail("database.sites", "expected a table of sites ([database.sites.NAME])")
    for name in tables:
        if name not in topology.site_names:
            raise UnknownSiteError(
                f"{topology.source}: database.sites.{name}: not a site; "
                f"[[sites]] defines: {', '.join(topology.site_names)}"
            )
    sites = {
        site.name: _site(tables.get(site.name, {}), site.name, site.data_dir, mode, fail)
        for site in topology.sites
    }
    user = raw.get("replication_user", DEFAULT_REPLICATION_USER)
    password = raw.get("replication_password", "")
    for key, value in (("replication_user", user), ("replication_password", password)):
        if not isinstance(value, str):
            raise fail(f"database.{key}", f"expected a string, got {value!r}")
    return DatabaseSettings(mode, writer, sites, topology.source, user, password)


def parse_database_url(text: object, where: str, base: Path) -> DatabaseUrl:
    """`sqlite:///relative/or/abs.sqlite` (relative to `base`) or
    `mysql://user:password@host:port/database[?unix_socket=/path]`."""
    expected = 'expected "sqlite:///path" or "mysql://user:password@host:port/database"'
    if not isinstance(text, str):
        raise ConfigError(f"{where}: {expected}, got {text!r}")
    parts = urlsplit(text)
    if parts.scheme == "sqlite":
        if parts.netloc or not parts.path.strip("/"):
            raise ConfigError(f"{where}: {expected} (sqlite takes no host), got {text!r}")
        path = Path(parts.path[1:])  # sqlite:///rel -> "rel", sqlite:////abs -> "/abs"
        return DatabaseUrl(text, "sqlite", path=path if path.is_absolute() else base / path)
    if parts.scheme not in MYSQL_SCHEMES:
        raise ConfigError(f"{where}: {expected}, got {text!r}")
    try:
        port = parts.port or DEFAULT_MYSQL_PORT
    except ValueError as exc:
        raise ConfigError(f"{where}: bad port in {text!r}: {exc}") from exc
    database = parts.path.strip("/")
    if not parts.hostname or not parts.username or not database or "/" in database:
        raise ConfigError(f"{where}: {expected} (user, host and database are required)")
    query = parse_qs(parts.query)
    unknown = set(query) - {"unix_socket"}
    if unknown:
        raise ConfigError(f"{where}: unknown URL option(s) {sorted(unknown)}; known: unix_socket")
    return DatabaseUrl(
        text,
        "mysql",
        host=parts.hostname,
        port=port,
        user=unquote(parts.username),
        password=unquote(parts.password or ""),
        database=database,
        unix_socket=query["unix_socket"][0] if "unix_socket" in query else None,
    )


def _writer(raw: Mapping[str, Any], mode: str, topology: Topology, fail: _Fail) -> str | None:
    writer = raw.get("writer")
    if mode == "independent":
        if writer is not None:
            raise fail("database.writer", 'is only for mode = "writer"')
        return None
    if writer is None:
        raise fail("database.writer", 'is required when mode = "writer" (the site that writes)')
    if writer not in topology.site_names:
        raise UnknownSiteError(
            f"{topology.source}: database.writer: {writer!r} is not a site; "
            f"[[sites]] defines: {', '.join(topology.site_names)}"
        )
    return str(writer)


def _site(raw: object, name: str, data_dir: Path, mode: str, fail: _Fail) -> SiteDatabase:
    where = f"database.sites.{name}"
    if not isinstance(raw, Mapping):
        raise fail(where, "expected a table with url (and admin_url)")
    _known(raw, where, {"url", "admin_url"}, fail)
    source = fail.source
    if "url" not in raw and mode == "writer":
        raise fail(f"{where}.url", 'is required when mode = "writer" (a mysql:// URL)')
    url = parse_database_url(raw.get("url", SQLITE_DEFAULT_URL), f"{source}: {where}.url", data_dir)
    if mode == "writer" and url.scheme != "mysql":
        raise fail(f"{where}.url", 'mode = "writer" needs MariaDB (mysql://...); SQLite has no '
                   "replication")  # fmt: skip
    admin = raw.get("admin_url")
    return SiteDatabase(
        url,
        None
        if admin is None
        else parse_database_url(admin, f"{source}: {where}.admin_url", data_dir),
        where,
    )


class _Fail:
    def __init__(self, source: str) -> None:
        self.source = source

    def __call__(self, where: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {where}: {message}")


def _failer(source: str) -> _Fail:
    return _Fail(source)


def _known(table: Mapping[str, Any], where: str, allowed: set[str], fail: _Fail) -> None:
    for key in table:
        if key not in allowed:
            raise fail(f"{where}.{key}", f"unknown setting; known: {', '.join(sorted(allowed))}")
