"""The topology file: parsing with defaults, the full mesh of links, and errors naming fields."""

from __future__ import annotations

from pathlib import Path

import pytest

from multiactive.errors import ConfigError, UnknownSiteError
from multiactive.model.topology import (
    DEFAULT_PARTITIONS,
    Address,
    Limits,
    LinkConfig,
    ReplicationSettings,
    load_topology,
)
from multiactive.redisdb import is_cluster_url

TWO_SITES = """
[[sites]]
name = "bj"
listen = "127.0.0.1:7101"

[[sites]]
name = "gz"
listen = "127.0.0.1:7102"
"""

THREE_SITES = """
[cluster]
name = "weibo"
partitions = 16
default_link_mode = "pull"

[[sites]]
name = "bj"
listen = "127.0.0.1:7101"
admin = "127.0.0.1:8101"
data_dir = "/var/lib/bj"
journal = "memory"
state = "memory"

[[sites]]
name = "gz"
listen = "[::1]:7102"

[[sites]]
name = "sh"
listen = "10.0.0.3:7103"

[[links]]
from = "bj"
to = "gz"
mode = "push"
address = "proxy.example:9001"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "topology.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_topology(path)
    return str(caught.value)


def test_minimal_file_parses_with_defaults(tmp_path: Path) -> None:
    """Only [[sites]] given: cluster name, partitions, limits, settings and backends default."""
    topology = load_topology(write(tmp_path, TWO_SITES))
    assert topology.name == "multiactive"
    assert topology.partitions == DEFAULT_PARTITIONS
    assert topology.limits == Limits()
    assert topology.replication == ReplicationSettings()
    assert topology.site_names == ("bj", "gz")
    bj = topology.site("bj")
    assert bj.listen == Address("127.0.0.1", 7101)
    assert bj.admin is None
    assert (bj.journal, bj.state) == ("sqlite", "sqlite")
    assert topology.source == str(tmp_path / "topology.toml")


def test_relative_data_dir_is_taken_from_the_file_folder(tmp_path: Path) -> None:
    """A site without data_dir gets data/<name> beside the topology file; absolute stays."""
    topology = load_topology(write(tmp_path, THREE_SITES))
    assert topology.site("gz").data_dir == tmp_path / "data" / "gz"
    assert topology.site("bj").data_dir == Path("/var/lib/bj")


def test_full_file_parses_every_field(tmp_path: Path) -> None:
    """Cluster settings, admin address, backends and bracketed IPv6 hosts are read."""
    topology = load_topology(write(tmp_path, THREE_SITES))
    assert (topology.name, topology.partitions) == ("weibo", 16)
    bj = topology.site("bj")
    assert bj.admin == Address("127.0.0.1", 8101)
    assert (bj.journal, bj.state) == ("memory", "memory")
    assert topology.site("gz").listen == Address("::1", 7102)


def test_links_form_a_full_mesh_in_the_default_mode(tmp_path: Path) -> None:
    """Every ordered pair of distinct sites has exactly one link, in the default mode."""
    topology = load_topology(write(tmp_path, TWO_SITES))
    assert topology.links == (
        LinkConfig("bj", "gz", "push"),
        LinkConfig("gz", "bj", "push"),
    )


def test_links_entry_overrides_one_direction(tmp_path: Path) -> None:
    """A [[links]] entry sets mode and address of its direction; the others use the default."""
    topology = load_topology(write(tmp_path, THREE_SITES))
    pairs = {(link.origin, link.receiver): link for link in topology.links}
    assert set(pairs) == {(a, b) for a in ("bj", "gz", "sh") for b in ("bj", "gz", "sh") if a != b}
    assert len(topology.links) == 6
    assert pairs["bj", "gz"] == LinkConfig("bj", "gz", "push", Address("proxy.example", 9001))
    assert pairs["gz", "bj"] == LinkConfig("gz", "bj", "pull")
    assert all(link.mode == "pull" for key, link in pairs.items() if key != ("bj", "gz"))
    assert topology.link("bj", "gz").name == "bj->gz"
    assert topology.links_from("sh") == (
        LinkConfig("sh", "bj", "pull"),
        LinkConfig("sh", "gz", "pull"),
    )
    assert {link.origin for link in topology.links_to("sh")} == {"bj", "gz"}


def test_dial_address_is_the_listener_of_the_link_mode(tmp_path: Path) -> None:
    """Push dials the receiver, pull dials the origin, and an explicit address wins."""
    topology = load_topology(write(tmp_path, THREE_SITES))
    assert topology.dial_address(topology.link("bj", "gz")) == Address("proxy.example", 9001)
    assert topology.dial_address(topology.link("gz", "sh")) == Address("::1", 7102)
    push = load_topology(write(tmp_path, TWO_SITES))
    assert push.dial_address(push.link("bj", "gz")) == Address("127.0.0.1", 7102)


def test_unknown_site_lookups_name_the_known_sites(tmp_path: Path) -> None:
    """Asking for a site or link the file does not define raises UnknownSiteError with the list."""
    topology = load_topology(write(tmp_path, TWO_SITES))
    with pytest.raises(UnknownSiteError, match=r"unknown site 'sh'.*defines: bj, gz"):
        topology.site("sh")
    with pytest.raises(UnknownSiteError, match="no link bj->sh"):
        topology.link("bj", "sh")


def test_settings_tables_override_defaults(tmp_path: Path) -> None:
    """[limits] and [replication] keys replace defaults; an integer is accepted for a float."""
    text = TWO_SITES + (
        "[limits]\nmax_payload_bytes = 2048\nlinger_ms = 2\n"
        '[replication]\nheartbeat_interval_s = 0.5\ncompression = "zstd"\nfsync = false\n'
    )
    topology = load_topology(write(tmp_path, text))
    assert topology.limits.max_payload_bytes == 2048
    assert topology.limits.linger_ms == 2.0
    assert isinstance(topology.limits.linger_ms, float)
    assert topology.replication.heartbeat_interval_s == 0.5
    assert topology.replication.compression == "zstd"
    assert topology.replication.fsync is False


def test_error_unreadable_file_names_the_path(tmp_path: Path) -> None:
    """A missing topology file raises ConfigError naming the path and the reason."""
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load_topology(missing)
    assert f"cannot read topology file {missing}: No such file" in str(caught.value)


def test_error_bad_toml_names_the_file(tmp_path: Path) -> None:
    """Text that is not TOML raises ConfigError naming the file and the parser's position."""
    message = load_error(tmp_path, "[[sites]\nname = ")
    assert "topology.toml: not valid TOML" in message
    assert "line 1" in message


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ("[cluster]\nshards = 3\n", "cluster.shards: unknown setting in [cluster]"),
        ("[limits]\nmax_size = 1\n", "limits.max_size: unknown setting in [limits]"),
        ("[replication]\nwindow = 1\n", "replication.window: unknown setting in [replication]"),
        ("[extra]\nx = 1\n", "extra: unknown setting in the top level"),
    ],
)
def test_error_unknown_key_names_the_field(tmp_path: Path, extra: str, field: str) -> None:
    """A key the schema does not know is refused, naming it and listing the known keys."""
    message = load_error(tmp_path, extra + TWO_SITES)
    assert field in message
    assert "known:" in message


def test_error_unknown_key_in_a_site_names_its_index(tmp_path: Path) -> None:
    """An unknown key inside [[sites]] names the site's index and the key."""
    message = load_error(tmp_path, TWO_SITES + 'colour = "red"\n')
    assert "sites[1].colour: unknown setting in [sites[1]]" in message


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ('"7101"', "sites[0].listen: expected \"host:port\", got '7101'"),
        ('"host:0"', "sites[0].listen: expected \"host:port\" with a port 1..65535, got 'host:0'"),
        ('"host:70000"', "with a port 1..65535, got 'host:70000'"),
        ('"host:http"', "got 'host:http'"),
        ('":7101"', "got ':7101'"),
        ("7101", 'sites[0].listen: expected "host:port", got 7101'),
    ],
)
def test_error_bad_address_names_the_field(tmp_path: Path, listen: str, expected: str) -> None:
    """A listen address that is not host:port with a valid port names the site and the value."""
    message = load_error(tmp_path, f'[[sites]]\nname = "bj"\nlisten = {listen}\n')
    assert expected in message


def test_error_missing_listen_names_the_field(tmp_path: Path) -> None:
    """A site without listen is refused naming sites[i].listen."""
    message = load_error(tmp_path, '[[sites]]\nname = "bj"\n')
    assert 'sites[0].listen: expected "host:port", got None' in message


def test_error_bad_admin_and_link_addresses_name_the_field(tmp_path: Path) -> None:
    """admin and [[links]].address are checked like listen, naming their own field."""
    bad_admin = TWO_SITES.replace('listen = "127.0.0.1:7102"', 'listen = "h:1"\nadmin = "h"')
    assert 'sites[1].admin: expected "host:port"' in load_error(tmp_path, bad_admin)
    bad_link = TWO_SITES + '[[links]]\nfrom = "bj"\nto = "gz"\naddress = "x"\n'
    assert 'links[0].address: expected "host:port"' in load_error(tmp_path, bad_link)


@pytest.mark.parametrize("key", ["from", "to"])
def test_error_unknown_site_in_links_names_it(tmp_path: Path, key: str) -> None:
    """A [[links]] entry naming a site not in [[sites]] raises UnknownSiteError listing them."""
    ends = {"from": "bj", "to": "gz", key: "sh"}
    text = TWO_SITES + f'[[links]]\nfrom = "{ends["from"]}"\nto = "{ends["to"]}"\n'
    with pytest.raises(UnknownSiteError) as caught:
        load_topology(write(tmp_path, text))
    assert f"links[0].{key}: unknown site 'sh'; [[sites]] defines: bj, gz" in str(caught.value)


def test_error_link_to_itself_and_repeated_link(tmp_path: Path) -> None:
    """A link from a site to itself, or the same direction twice, is refused naming the entry."""
    looped = TWO_SITES + '[[links]]\nfrom = "bj"\nto = "bj"\n'
    assert "links[0]: a link joins two different sites" in load_error(tmp_path, looped)
    twice = TWO_SITES + '[[links]]\nfrom = "bj"\nto = "gz"\n' * 2
    assert "links[1]: link bj->gz is repeated" in load_error(tmp_path, twice)


def test_error_duplicate_site_names_it(tmp_path: Path) -> None:
    """Two [[sites]] with the same name are refused naming the second one."""
    text = TWO_SITES.replace('name = "gz"', 'name = "bj"')
    assert "sites[1].name: site 'bj' is defined twice" in load_error(tmp_path, text)


@pytest.mark.parametrize("name", ["BJ", "-bj", "b j", "bj.1", "a" * 64])
def test_error_bad_site_name_names_the_rule(tmp_path: Path, name: str) -> None:
    """Site names are lowercase letters, digits, '-' and '_', at most 63 characters."""
    message = load_error(tmp_path, f'[[sites]]\nname = "{name}"\nlisten = "h:1"\n')
    assert f"sites[0].name: {name!r} is not a site name" in message
    assert "at most 63 characters" in message


def test_error_site_without_name(tmp_path: Path) -> None:
    """A site without name is refused with sites[i].name is required."""
    assert "sites[0].name: is required" in load_error(tmp_path, '[[sites]]\nlisten = "h:1"\n')


def test_error_no_sites(tmp_path: Path) -> None:
    """A file without any [[sites]] is refused."""
    assert "[[sites]] is empty" in load_error(tmp_path, '[cluster]\nname = "x"\n')


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[cluster]\npartitions = 0\n", "cluster.partitions: expected an integer 1..4096, got 0"),
        ("[cluster]\npartitions = 4097\n", "cluster.partitions: expected an integer 1..4096"),
        ('[cluster]\npartitions = "8"\n', "cluster.partitions: expected an integer 1..4096"),
        ("[cluster]\npartitions = true\n", "cluster.partitions: expected an integer 1..4096"),
        ('[cluster]\ndefault_link_mode = "both"\n', 'default_link_mode: expected "push" or "pull"'),
        ("[cluster]\nname = 3\n", "cluster.name: expected a non-empty string, got 3"),
        ('[cluster]\nname = ""\n', "cluster.name: expected a non-empty string, got ''"),
        ("cluster = 3\n", "cluster: expected a table [cluster], got int"),
        ("sites = 3\n", "sites: expected an array of tables [[sites]]"),
        ('[limits]\nmax_payload_bytes = "10k"\n', "limits.max_payload_bytes: expected int"),
        ("[limits]\nmax_payload_bytes = 1.5\n", "limits.max_payload_bytes: expected int"),
        ("[limits]\nmax_payload_bytes = true\n", "limits.max_payload_bytes: expected int"),
        ('[limits]\nlinger_ms = "1"\n', "limits.linger_ms: expected float, got '1'"),
        ('[replication]\nfsync = "yes"\n', "replication.fsync: expected bool, got 'yes'"),
        ("[replication]\ncompression = 1\n", "replication.compression: expected str, got 1"),
    ],
)
def test_error_wrong_type_names_the_field(tmp_path: Path, text: str, expected: str) -> None:
    """A value of the wrong type or out of range names its table.key and the value."""
    body = TWO_SITES if not text.startswith("sites") else ""
    assert expected in load_error(tmp_path, text + body)


def test_error_wrong_backend_and_mode_name_the_field(tmp_path: Path) -> None:
    """journal, state and links mode accept only their listed choices."""
    journal = TWO_SITES.replace('name = "gz"', 'name = "gz"\njournal = "kafka"')
    assert (
        'sites[1].journal: expected "sqlite" or "memory" or "redis", got \'kafka\''
        in load_error(tmp_path, journal)
    )
    state = TWO_SITES.replace('name = "gz"', 'name = "gz"\nstate = "disk"')
    assert 'sites[1].state: expected "sqlite" or "memory" or "redis", got \'disk\'' in load_error(
        tmp_path, state
    )
    mode = TWO_SITES + '[[links]]\nfrom = "bj"\nto = "gz"\nmode = "relay"\n'
    assert 'links[0].mode: expected "push" or "pull", got \'relay\'' in load_error(tmp_path, mode)


@pytest.mark.parametrize(
    ("settings", "field", "rule"),
    [
        ("[limits]\nmax_payload_bytes = 0", "limits.max_payload_bytes", "must be > 0"),
        (
            "[limits]\nmax_payload_bytes = 2048\nmax_batch_bytes = 3000",
            "limits.max_batch_bytes",
            "must exceed max_payload_bytes by at least 1 KiB",
        ),
        (
            "[limits]\nmax_frame_bytes = 1048576",
            "limits.max_frame_bytes",
            "must exceed max_batch_bytes by at least 1 KiB",
        ),
        ("[limits]\nlinger_ms = 1001", "limits.linger_ms", "must be within 0..1000"),
        ("[limits]\nlinger_ms = -1", "limits.linger_ms", "must be within 0..1000"),
        ("[limits]\nmax_pending_messages = 0", "limits.max_pending_messages", "must be > 0"),
        (
            "[replication]\nwindow_bytes = 1024",
            "replication.window_bytes",
            "must be at least limits.max_frame_bytes",
        ),
        ("[replication]\nread_bytes = 0", "replication.read_bytes", "must be > 0 and fit"),
        (
            "[replication]\nread_bytes = 4194304",
            "replication.read_bytes",
            "must be > 0 and fit in limits.max_frame_bytes",
        ),
        (
            "[replication]\nheartbeat_interval_s = 0",
            "replication.heartbeat_interval_s",
            "must be > 0",
        ),
        (
            "[replication]\nheartbeat_interval_s = 5\npeer_timeout_s = 10",
            "replication.peer_timeout_s",
            "must be more than twice heartbeat_interval_s",
        ),
        (
            "[replication]\nreconnect_min_s = 6\nreconnect_max_s = 5",
            "replication.reconnect_min_s",
            "must be > 0 and at most reconnect_max_s",
        ),
        ("[replication]\nreconnect_min_s = 0", "replication.reconnect_min_s", "must be > 0"),
        ("[replication]\napply_max_attempts = 0", "replication.apply_max_attempts", "must be >= 1"),
        ("[replication]\nretention_s = -1", "replication.retention_s", "must be >= 0"),
        (
            '[replication]\ncompression = "lz4"',
            "replication.compression",
            'expected "none" or "zstd", got \'lz4\'',
        ),
    ],
)
def test_error_settings_constraints_name_the_field(
    tmp_path: Path, settings: str, field: str, rule: str
) -> None:
    """Each cross-setting constraint names the file, the field and the rule it breaks."""
    message = load_error(tmp_path, settings + "\n" + TWO_SITES)
    assert f"topology.toml: {field}: {rule}" in message


@pytest.mark.parametrize(
    ("url", "cluster"),
    [
        ("redis://127.0.0.1:6379/0", False),
        ("rediss://user:secret@cache.example:6380/3", False),
        ("redis+cluster://10.0.0.7:7000", True),
    ],
)
def test_redis_backends_take_the_site_redis_url(tmp_path: Path, url: str, cluster: bool) -> None:
    """journal/state "redis" read the site's redis_url: a server URL or a redis+cluster one."""
    text = TWO_SITES.replace(
        'name = "gz"', f'name = "gz"\njournal = "redis"\nstate = "redis"\nredis_url = "{url}"'
    )
    gz = load_topology(write(tmp_path, text)).site("gz")
    assert (gz.journal, gz.state, gz.redis_url) == ("redis", "redis", url)
    assert is_cluster_url(url) is cluster
    assert load_topology(write(tmp_path, TWO_SITES)).site("gz").redis_url is None


@pytest.mark.parametrize("backend", ["journal", "state"])
def test_error_redis_backend_without_redis_url_names_the_field(
    tmp_path: Path, backend: str
) -> None:
    """A site with a redis journal or state and no redis_url is refused, naming the field."""
    text = TWO_SITES.replace('name = "gz"', f'name = "gz"\n{backend} = "redis"')
    message = load_error(tmp_path, text)
    assert 'sites[1].redis_url: is required when journal or state is "redis"' in message


@pytest.mark.parametrize(
    "url",
    [
        "127.0.0.1:6379",
        "http://127.0.0.1:6379/0",
        "redis://127.0.0.1/0",
        "redis://127.0.0.1:99999/0",
        "redis://127.0.0.1:6379/zero",
        "redis+cluster://127.0.0.1:7000/2",
    ],
)
def test_error_bad_redis_url_names_the_field_and_value(tmp_path: Path, url: str) -> None:
    """A redis_url that is not redis[s]://host:port/db or redis[s]+cluster://host:port is
    refused, naming the field and the value."""
    text = TWO_SITES.replace('name = "gz"', f'name = "gz"\nstate = "redis"\nredis_url = "{url}"')
    message = load_error(tmp_path, text)
    assert "sites[1].redis_url:" in message
    assert repr(url) in message
