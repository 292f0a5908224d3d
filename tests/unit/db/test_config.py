"""The [database] section: defaults, modes, URLs, and errors that name the file and the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from multiactive.db.config import database_settings, parse_database_url
from multiactive.errors import ConfigError, UnknownSiteError
from multiactive.model.topology import parse_topology

URL = "mysql://ma:secret@127.0.0.1:3307/app"


def topology(database: dict[str, Any] | None = None) -> Any:
    raw: dict[str, Any] = {
        "cluster": {"name": "t"},
        "sites": [
            {"name": "bj", "listen": "127.0.0.1:7101", "data_dir": "/data/bj"},
            {"name": "gz", "listen": "127.0.0.1:7102", "data_dir": "/data/gz"},
        ],
    }
    if database is not None:
        raw["database"] = database
    return parse_topology(raw, source="topo.toml")


def writer_mode(**extra: Any) -> dict[str, Any]:
    return {
        "mode": "writer",
        "writer": "bj",
        "sites": {"bj": {"url": URL}, "gz": {"url": URL.replace("3307", "3308")}},
        **extra,
    }


def test_without_a_section_every_site_gets_its_own_sqlite_file_in_independent_mode() -> None:
    settings = database_settings(topology())
    assert settings.mode == "independent"
    assert settings.writer is None
    assert settings.site("gz").url.path == Path("/data/gz/database.sqlite")


def test_writer_mode_parses_urls_and_the_writer() -> None:
    settings = database_settings(topology(writer_mode()))
    assert settings.writer == "bj"
    url = settings.site("gz").url
    assert (url.scheme, url.host, url.port, url.user, url.database) == (
        "mysql", "127.0.0.1", 3308, "ma", "app",
    )  # fmt: skip
    assert "secret" not in url.redacted
    assert settings.admin_url("gz") == url  # no admin_url: the commands use url


def test_a_unix_socket_url() -> None:
    url = parse_database_url("mysql://root@localhost/app?unix_socket=/tmp/m.sock", "x", Path())
    assert url.unix_socket == "/tmp/m.sock"


def test_a_writer_that_is_not_a_site_is_refused_naming_the_key() -> None:
    with pytest.raises(UnknownSiteError, match=r"topo\.toml: database\.writer: 'xx' is not a site"):
        database_settings(topology(writer_mode(writer="xx")))


@pytest.mark.parametrize(
    ("database", "message"),
    [
        ({"mode": "both"}, r"database\.mode: expected"),
        ({"mode": "writer", "sites": {}}, r"database\.writer: is required"),
        ({"writer": "bj"}, r"database\.writer: is only for mode"),
        ({"sites": {"bj": {"url": "postgres://x/y"}}}, r"database\.sites\.bj\.url: expected"),
        ({"sites": {"bj": {"url": "mysql://127.0.0.1/app"}}}, r"user, host and database"),
        (
            {"sites": {"bj": {"url": "mysql://u@h:99999/app"}}},
            r"database\.sites\.bj\.url: bad port",
        ),
        ({"sites": {"bj": {"uri": URL}}}, r"database\.sites\.bj\.uri: unknown setting"),
        ({"sites": {"nowhere": {"url": URL}}}, r"database\.sites\.nowhere: not a site"),
        (
            {"mode": "writer", "writer": "bj", "sites": {"bj": {"url": URL}}},
            r"database\.sites\.gz\.url: is required",
        ),
        (
            {
                "mode": "writer",
                "writer": "bj",
                "sites": {"bj": {"url": URL}, "gz": {"url": "sqlite:///x"}},
            },
            r"database\.sites\.gz\.url: mode = \"writer\" needs MariaDB",
        ),
    ],
)
def test_bad_settings_are_refused_naming_the_file_and_the_key(
    database: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=r"topo\.toml: .*" + message):
        database_settings(topology(database))
