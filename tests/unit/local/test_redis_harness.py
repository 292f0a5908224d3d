"""The Redis side of the local cluster harness: topology, a clear error without Redis, and a
Redis Cluster node killed and started again."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from multiactive.errors import ConfigError
from multiactive.local.cluster import LocalCluster
from multiactive.local.redis import CLUSTER_MASTERS, RedisClusterServers
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


def test_redis_cluster_backend_gives_every_site_its_own_cluster(tmp_path: Path) -> None:
    """LocalCluster(backend="redis-cluster") gives every site its own Redis Cluster of three
    masters: a redis journal and state on a redis+cluster:// URL of its own."""
    cluster = LocalCluster(tmp_path, ("a", "b"), backend="redis-cluster")
    topology = load_topology(cluster.topology_path)
    urls = {site.name: site.redis_url for site in topology.sites}
    assert urls == {name: redis.url for name, redis in cluster.redis.items()}
    assert all(url is not None and url.startswith("redis+cluster://") for url in urls.values())
    assert {(site.journal, site.state) for site in topology.sites} == {("redis", "redis")}
    assert {len(redis.nodes) for redis in cluster.redis.values()} == {CLUSTER_MASTERS}
    ports = [node.port for redis in cluster.redis.values() for node in redis.nodes]
    assert len(set(ports)) == 2 * CLUSTER_MASTERS


def test_a_cluster_node_killed_and_started_again_serves_its_slots_with_its_data(
    tmp_path: Path,
) -> None:
    """One node SIGKILLed: its keys cannot be reached; `start()` starts it again on its data
    and waits until the cluster is ok, with every key still there (appendfsync always)."""
    keys = [f"k{n}" for n in range(30)]
    with RedisClusterServers(tmp_path) as servers:
        with redis.RedisCluster("127.0.0.1", servers.nodes[0].port) as client:
            for key in keys:
                client.set(key, key)
        victim = servers.nodes[1]
        victim.kill()
        assert not servers.alive
        with pytest.raises(redis.exceptions.RedisError), victim.client() as direct:
            direct.ping()
        servers.start()
        assert servers.alive
        with redis.RedisCluster("127.0.0.1", servers.nodes[0].port) as client:
            assert [client.get(key) for key in keys] == [key.encode() for key in keys]
