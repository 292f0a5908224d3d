"""The [routing] section: defaults, and bad input refused with the file, key path and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from multiactive.errors import ConfigError, UnknownSiteError
from multiactive.model.topology import load_topology
from multiactive.routing.config import DEFAULT_HEALTH_INTERVAL_S, RoutingConfig, routing_config
from tests.unit.routing.conftest import ROUTING, SITES, write_topology


def test_parses_regions_units_and_defaults(config: RoutingConfig) -> None:
    assert [r.name for r in config.regions] == ["north", "south"]
    assert config.region("north").weights == (("bj-unicom", 70), ("bj-telecom", 30))
    assert config.unit("u0").ranges == ((0, 2500), (5000, 7500))
    assert config.unit("u1").mode == "read-only"
    assert config.health.interval_s == DEFAULT_HEALTH_INTERVAL_S
    assert config.health.failures == 3
    assert [str(k) for k in config.key_from] == ["header:X-User-Id", "cookie:uid", "query:uid"]
    assert [str(a) for a in config.upstreams_of("gz")] == ["127.0.0.1:9003", "127.0.0.1:9004"]
    assert config.all_down == "closed"
    assert config.default_region == "south"


def test_no_units_means_one_unit_over_everything(tmp_path: Path) -> None:
    routing = ROUTING.split("[[routing.units]]")[0]
    config = routing_config(load_topology(write_topology(tmp_path, routing)))
    assert [(u.name, u.ranges) for u in config.units] == [("all", ((0, 10_000),))]


def test_a_topology_without_routing_says_so(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(SITES)
    with pytest.raises(ConfigError, match=r"has no \[routing\] section"):
        routing_config(load_topology(path))


def fails(tmp_path: Path, routing: str) -> str:
    with pytest.raises(ConfigError) as caught:
        routing_config(load_topology(write_topology(tmp_path, routing)))
    return str(caught.value)


def test_overlapping_cidrs_are_refused_with_their_line(tmp_path: Path) -> None:
    bad = ROUTING.replace('cidrs = ["10.2.0.0/16"]', 'cidrs = ["10.1.128.0/24"]')
    message = fails(tmp_path, bad)
    line = (SITES + bad).splitlines().index('cidrs = ["10.1.128.0/24"]') + 1
    assert "routing.regions[1].cidrs[0]" in message
    assert f"(line {line})" in message
    assert "10.1.128.0/24 overlaps 10.1.0.0/16 of region 'north'" in message
    assert "topology.toml" in message


def test_weights_that_do_not_sum_to_100(tmp_path: Path) -> None:
    message = fails(tmp_path, ROUTING.replace("bj-telecom = 30", "bj-telecom = 20"))
    assert "routing.regions[0].weights" in message
    assert "sum to 90, not 100" in message


def test_an_unknown_site_is_an_unknown_site_error(tmp_path: Path) -> None:
    with pytest.raises(UnknownSiteError, match=r"regions\[1\].weights.sh.*unknown site 'sh'"):
        routing_config(
            load_topology(write_topology(tmp_path, ROUTING.replace("gz = 100", "sh = 100")))
        )
    with pytest.raises(UnknownSiteError, match=r"upstreams.sh"):
        routing_config(load_topology(write_topology(tmp_path, ROUTING.replace("gz = [", "sh = ["))))


def test_unit_ranges_with_a_hole(tmp_path: Path) -> None:
    message = fails(tmp_path, ROUTING.replace("[[2500, 5000]]", "[[2600, 5000]]"))
    assert "buckets [2500, 2600) belong to no unit" in message
    assert "routing.units[1].ranges" in message
    assert "(line " in message


def test_unit_ranges_that_overlap(tmp_path: Path) -> None:
    message = fails(tmp_path, ROUTING.replace("[[2500, 5000]]", "[[2400, 5000]]"))
    assert "overlaps unit 'u0'" in message


def test_unit_ranges_short_of_the_end(tmp_path: Path) -> None:
    message = fails(tmp_path, ROUTING.replace("[[7500, 10000]]", "[[7500, 9999]]"))
    assert "[9999, 10000) belong to no unit" in message


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('all_down = "closed"', 'all_down = "maybe"', "routing.all_down"),
        ('all_down = "closed"', 'no_key = "guess"', "routing.no_key"),
        ('all_down = "closed"', "speed = 1", "routing.speed"),
        ('default_region = "south"', 'default_region = "west"', "unknown region 'west'"),
        ('"127.0.0.1/32"]', '"127.0.0.1/8"]', "routing.trusted_proxies[0]"),
        ("[[0, 2500], [5000, 7500]]", "[[0, 2500], [5000, 17500]]", "units[0].ranges[1]"),
        ('mode = "read-only"', 'mode = "sometimes"', "units[1].mode"),
        ('["127.0.0.1:9001"]', '["9001"]', "routing.upstreams.bj-unicom[0]"),
        ('name = "u2"', 'name = "u1"', "units[2].name"),
    ],
)
def test_bad_values_name_their_setting(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in ROUTING
    assert expected in fails(tmp_path, ROUTING.replace(old, new, 1))


def test_a_user_pinned_twice(tmp_path: Path) -> None:
    bad = ROUTING.replace('mode = "read-only"', 'mode = "read-only"\nusers = ["alice"]')
    assert "already pinned to unit 'u0'" in fails(tmp_path, bad)


def test_health_settings(tmp_path: Path) -> None:
    routing = ROUTING + "\n[routing.health]\ninterval_s = 0.5\nfailures = 2\ntimeout_s = 0.2\n"
    # [routing.health] after the array of tables: TOML puts it under [routing] all the same
    config = routing_config(load_topology(write_topology(tmp_path, routing)))
    assert (config.health.interval_s, config.health.failures) == (0.5, 2)
    assert "health.timeout_s" in fails(tmp_path, routing.replace("0.2", "0.9"))


def test_the_example_topology_parses_and_exports() -> None:
    """examples/weibo.toml (documented in the README) is a valid topology with routing."""
    from multiactive.model.topology import Address
    from multiactive.routing.export import bind_config, nginx_config
    from multiactive.routing.policy import Policy

    path = Path(__file__).resolve().parents[3] / "examples" / "weibo.toml"
    policy = Policy(routing_config(load_topology(path)))
    assert [r.name for r in policy.config.regions] == ["north", "south"]
    assert "upstream ma_gz" in nginx_config(policy, Address("127.0.0.1", 8180)).text
    assert bind_config(policy, "/tmp/x", Address("127.0.0.1", 5353)).zones["south.zone"]
