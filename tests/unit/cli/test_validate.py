"""`multiactive validate`: each collision, sharing and unreachable part is one named problem;
a sound topology exits 0."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from multiactive.cli.validate import validate

SITES = [
    {"name": "east", "listen": "127.0.0.1:7101", "admin": "127.0.0.1:8101", "data_dir": "east"},
    {"name": "west", "listen": "127.0.0.1:7102", "admin": "127.0.0.1:8102", "data_dir": "west"},
]


def _toml(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value).lower()


def write(
    tmp_path: Path, sites: list[dict[str, Any]], links: list[dict[str, Any]] | None = None
) -> Path:
    lines = ["[cluster]", 'name = "c"', "partitions = 4"]
    for site in sites:
        lines += ["", "[[sites]]", *(f"{k} = {_toml(v)}" for k, v in site.items())]
    for link in links or []:
        lines += ["", "[[links]]", *(f"{k} = {_toml(v)}" for k, v in link.items())]
    path = tmp_path / "topology.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(path: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(validate, ["--topology", str(path), *args])
    return result.exit_code, result.output


def changed(index: int, **values: Any) -> list[dict[str, Any]]:
    sites = [dict(site) for site in SITES]
    sites[index].update(values)
    return sites


def test_a_sound_topology_is_valid(tmp_path: Path) -> None:
    """No problem: exit 0 and a summary line."""
    code, output = run(write(tmp_path, SITES))
    assert code == 0, output
    assert "valid (2 sites, 2 links, 4 partitions)" in output


@pytest.mark.parametrize(
    ("sites", "problem"),
    [
        pytest.param(changed(1, listen="127.0.0.1:7101"),
                     "sites[0].listen (east) and sites[1].listen (west) are both 127.0.0.1:7101",
                     id="same-listen"),
        pytest.param(changed(1, listen="localhost:7101"),
                     "sites[0].listen (east) and sites[1].listen (west) are both",
                     id="same-listen-localhost"),
        pytest.param(changed(1, admin="127.0.0.1:8101"),
                     "sites[0].admin (east) and sites[1].admin (west) are both 127.0.0.1:8101",
                     id="same-admin"),
        pytest.param(changed(1, admin="127.0.0.1:7101"),
                     "sites[0].listen (east) and sites[1].admin (west) are both 127.0.0.1:7101",
                     id="admin-is-another-sites-listen"),
        pytest.param(changed(0, admin="127.0.0.1:7101"),
                     "are both 127.0.0.1:7101: a site needs two ports", id="admin-is-own-listen"),
        pytest.param(changed(1, data_dir="east"),
                     "sites[0].data_dir and sites[1].data_dir (east, west) are both",
                     id="shared-data-dir"),
    ],
)  # fmt: skip
def test_each_collision_is_a_named_problem(
    tmp_path: Path, sites: list[dict[str, Any]], problem: str
) -> None:
    """A collision exits 1 with one problem line naming both settings."""
    code, output = run(write(tmp_path, sites))
    assert code == 1
    assert problem in output


def test_memory_sites_may_share_a_data_dir(tmp_path: Path) -> None:
    """Sites that keep no files there do not collide on a data_dir."""
    sites = [dict(s, journal="memory", state="memory", data_dir="same") for s in SITES]
    assert run(write(tmp_path, sites))[0] == 0


def test_two_sites_on_one_redis_are_a_problem(tmp_path: Path) -> None:
    """One redis_url for two sites: the first to open it would claim it."""
    url = "redis://127.0.0.1:1/0"
    sites = [dict(s, journal="redis", state="redis", redis_url=url) for s in SITES]
    code, output = run(write(tmp_path, sites), "--site", "east")
    assert code == 1
    assert "sites[0].redis_url and sites[1].redis_url (east, west) are both" in output


def test_a_link_address_that_is_an_admin_port_is_a_problem(tmp_path: Path) -> None:
    """[[links]] address pointing at a site's admin API."""
    links = [{"from": "east", "to": "west", "address": "127.0.0.1:8102"}]
    code, output = run(write(tmp_path, SITES, links))
    assert code == 1
    assert "link east->west: address 127.0.0.1:8102 is sites[1].admin of west" in output


def test_a_link_address_that_is_the_dialers_own_listen_is_a_problem(tmp_path: Path) -> None:
    """A push link's origin would dial itself."""
    links = [{"from": "east", "to": "west", "address": "127.0.0.1:7101"}]
    code, output = run(write(tmp_path, SITES, links))
    assert code == 1
    assert "the dialing site east's own: it would dial itself" in output


def test_a_data_dir_that_cannot_be_written_is_a_problem(tmp_path: Path) -> None:
    """A data_dir where a file stands cannot be created."""
    (tmp_path / "blocked").write_text("a file, not a folder")
    code, output = run(write(tmp_path, changed(0, data_dir="blocked")))
    assert code == 1
    assert "sites[0].data_dir (east):" in output
    assert "is not writable" in output


def test_an_unreachable_redis_is_a_problem(tmp_path: Path) -> None:
    """A site's Redis that does not answer (nothing listens on port 1)."""
    sites = changed(0, journal="redis", state="redis", redis_url="redis://127.0.0.1:1/0")
    code, output = run(write(tmp_path, sites), "--site", "east")
    assert code == 1
    assert "east: cannot connect to Redis at redis://127.0.0.1:1/0 (sites[0].redis_url)" in output


@pytest.mark.parametrize(
    ("module", "problem"),
    [
        ("no_such_module_here", "--handlers no_such_module_here: cannot import it"),
        ("json", "--handlers json: the module has no setup(registry) function"),
    ],
)
def test_handlers_that_do_not_import_are_a_problem(
    tmp_path: Path, module: str, problem: str
) -> None:
    """A handler module that cannot be imported, or has no setup(registry); PYTHONPATH shown."""
    code, output = run(write(tmp_path, SITES), "--handlers", module)
    assert code == 1
    assert problem in output
    assert "PYTHONPATH=" in output


def test_a_topology_that_does_not_parse_is_one_problem(tmp_path: Path) -> None:
    """The parse error (naming file and field) is reported, exit 1."""
    code, output = run(write(tmp_path, changed(0, listen="7101")))
    assert code == 1
    assert 'sites[0].listen: expected "host:port"' in output


def test_an_unknown_site_is_one_problem(tmp_path: Path) -> None:
    """--site names a site the file does not define."""
    code, output = run(write(tmp_path, SITES), "--site", "north")
    assert code == 1
    assert "unknown site 'north'" in output


def test_the_topology_may_come_from_multiactive_topology(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --topology, MULTIACTIVE_TOPOLOGY names the file (every command's option)."""
    path = write(tmp_path, SITES)
    monkeypatch.setenv("MULTIACTIVE_TOPOLOGY", str(path))
    result = CliRunner().invoke(validate, [])
    assert result.exit_code == 0, result.output
    assert "valid (2 sites" in result.output
