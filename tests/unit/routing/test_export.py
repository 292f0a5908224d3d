"""The exports, pure: nginx segments cover the space at the policy's boundaries, named users
map to their unit, drained sites are replaced by their stand-ins, read-only units deny
writes; BIND views per region; missing settings are named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from multiactive.errors import ConfigError
from multiactive.model.topology import Address, load_topology
from multiactive.routing.config import routing_config
from multiactive.routing.export import bind_config, nginx_config, segment_bounds
from multiactive.routing.policy import Policy, set_site_state, shift
from tests.unit.routing.conftest import ROUTING, write_topology

LISTEN = Address("127.0.0.1", 8080)
ALL_UPSTREAMS = ROUTING.replace(
    'gz = ["127.0.0.1:9003", "127.0.0.1:9004"]',
    'gz = ["127.0.0.1:9003", "127.0.0.1:9004"]\nbj-telecom = ["127.0.0.1:9002"]',
)
DNS = """
[routing.dns]
zone = "svc.example."
addresses = { bj-unicom = "10.0.0.1", bj-telecom = "10.0.0.2", gz = "10.0.0.3" }
"""


def make(tmp_path: Path, routing: str = ALL_UPSTREAMS) -> Policy:
    return Policy(routing_config(load_topology(write_topology(tmp_path, routing))))


def test_split_clients_segments_sum_to_the_space(tmp_path: Path) -> None:
    policy = make(tmp_path)
    policy = policy.with_state(shift(policy, "bj-unicom", "gz", 12.5, "north"))
    text = nginx_config(policy, LISTEN).text
    block = text.split('split_clients "', 1)[1].split("}", 1)[0]
    percents = [float(p) for p in re.findall(r"([\d.]+)% s\d+;", block)]
    bounds = segment_bounds(policy)
    assert len(percents) == len(bounds) - 2  # the last segment is "*"
    assert abs(sum(percents) + (bounds[-1] - bounds[-2]) / 100 - 100) < 1e-9
    assert '"north:s5750" ma_gz;' in text  # [5750, 7000) shifted to gz
    assert '"north:s5750" gz;' in text  # a shift moves the home too
    assert '"alice" s0;' in text


def test_a_drained_site_is_replaced_by_stand_ins_and_modes_deny(tmp_path: Path) -> None:
    policy = make(tmp_path)
    drained = policy.with_state(set_site_state(policy, "bj-telecom", "draining"))
    text = nginx_config(drained, LISTEN).text
    upstream_map = text.split("$ma_upstream {", 1)[1].split("}", 1)[0]
    assert "ma_bj_telecom;" not in upstream_map
    assert "s2500 ro;" in text
    assert '"~^ro:" 403;' in text
    assert "server 127.0.0.1:9002 backup;" in text  # other sites back each site up


def test_a_serving_site_without_upstreams_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no servers for site 'bj-telecom'"):
        nginx_config(make(tmp_path, ROUTING), LISTEN)


def test_bind_views_and_zones(tmp_path: Path) -> None:
    policy = make(tmp_path, ALL_UPSTREAMS + DNS)
    export = bind_config(policy, "/srv/dns", Address("127.0.0.1", 5353))
    conf = export.named_conf
    assert conf.index('view "north"') < conf.index('view "south"')  # default (south) last
    assert "match-clients { 10.1.0.0/16; 127.0.0.2/32; };" in conf
    assert "match-clients { any; };" in conf
    assert "www IN A 10.0.0.1\nwww IN A 10.0.0.2" in export.zones["north.zone"]
    with pytest.raises(ConfigError, match=r"needs \[routing.dns\]"):
        bind_config(make(tmp_path), "/srv/dns", Address("127.0.0.1", 5353))
