from __future__ import annotations

from pathlib import Path

import pytest

from multiactive.model.topology import load_topology
from multiactive.routing.config import RoutingConfig, routing_config
from multiactive.routing.policy import Policy

SITES = """
[[sites]]
name = "bj-unicom"
listen = "127.0.0.1:7101"

[[sites]]
name = "bj-telecom"
listen = "127.0.0.1:7102"

[[sites]]
name = "gz"
listen = "127.0.0.1:7103"
"""

ROUTING = """
[routing]
all_down = "closed"
default_region = "south"
trusted_proxies = ["127.0.0.1/32"]

[routing.upstreams]
bj-unicom = ["127.0.0.1:9001"]
gz = ["127.0.0.1:9003", "127.0.0.1:9004"]

[[routing.regions]]
name = "north"
cidrs = ["10.1.0.0/16", "127.0.0.2/32"]
weights = { bj-unicom = 70, bj-telecom = 30 }

[[routing.regions]]
name = "south"
cidrs = ["10.2.0.0/16"]
weights = { gz = 100 }

[[routing.units]]
name = "u0"
ranges = [[0, 2500], [5000, 7500]]
users = ["alice"]

[[routing.units]]
name = "u1"
ranges = [[2500, 5000]]
mode = "read-only"

[[routing.units]]
name = "u2"
ranges = [[7500, 10000]]
"""


def write_topology(tmp_path: Path, routing: str = ROUTING) -> Path:
    path = tmp_path / "topology.toml"
    path.write_text(SITES + routing)
    return path


@pytest.fixture
def config(tmp_path: Path) -> RoutingConfig:
    return routing_config(load_topology(write_topology(tmp_path)))


@pytest.fixture
def policy(config: RoutingConfig) -> Policy:
    return Policy(config)
