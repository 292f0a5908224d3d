"""The Redis side of the local cluster harness: topology, and a clear error without Redis."""

from __future__ import annotations

from pathlib import Path

import pytest

from multiactive.errors import ConfigError
from multiactive.local.cluster import LocalCluster
from multiactive.model.topology import load_topology


def test_redis_cluster_topology_gives_every_site_its_own_redis(tmp_path: Path) -> None:
    """LocalCluster(backend="redis") writes a redis journal, state and its own redis_url for
    every site (servers start with the first start(), not before)."""
    cluster = LocalCluster(tmp_path, ("a", "b"), backend="redis")
    topology = load_topology(cluster.topology_path)
    urls = {site.name: site.redis_url for site in topology.sites}
    assert urls == {name: server.url for name, server in cluster.redis.items()}
    assert len(set(urls.values())) == 2
    assert {(site.journal, site.state) for site in topology.sites} == {("redis", "redis")}
    assert not any(server.alive for server in cluster.redis.values())


def test_redis_cluster_without_redis_server_names_the_debian_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without redis-server on PATH, a redis LocalCluster (so `demo --backend redis`) fails at
    once with ConfigError naming the Debian package."""
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="apt-get install redis-server"):
        LocalCluster(tmp_path / "cluster", ("a", "b"), backend="redis")
