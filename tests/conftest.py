"""Servers the whole suite shares, started on first use on free ports in a temporary folder
(`multiactive.local.redis`: appendonly yes, appendfsync always) and killed at the end: one
redis-server, and a Redis Cluster of three masters. A test that uses one gets a clean database.

The Python processes the tests start (sites, appliers, the CLI) share a bytecode cache.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from multiactive import procs
from multiactive.local.redis import RedisClusterServers, RedisServer


@pytest.fixture(scope="session", autouse=True)
def bytecode_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """With PYTHONDONTWRITEBYTECODE set (as in some containers), every process the suite starts
    would compile the whole package from source again: a quarter of a site's start-up. Such
    children write and read their bytecode under the session's temporary folder instead
    (PYTHONPYCACHEPREFIX), never in the source tree."""
    if not os.environ.get("PYTHONDONTWRITEBYTECODE"):
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("PYTHONDONTWRITEBYTECODE")
        patch.setenv("PYTHONPYCACHEPREFIX", str(tmp_path_factory.mktemp("pycache")))
        yield


@pytest.fixture(scope="session", autouse=True)
def worker_ports() -> Iterator[None]:
    """Under pytest-xdist, each worker hands out ports (`procs.free_port`) from its own slice of
    PORT_RANGE: a port of a site that is down for a restart is not free for the other worker."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count < 2:
        yield
        return
    low, high = procs.PORT_RANGE
    size = (high - low + 1) // count
    first = low + int(worker[2:]) * size
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(procs, "PORT_RANGE", (first, first + size - 1))
        yield


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    with RedisClusterServers(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of the shared redis-server, emptied for this test."""
    redis_server.flush()
    return redis_server.url


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterServers) -> str:
    """The URL of the shared Redis Cluster, emptied for this test."""
    redis_cluster.flush()
    return redis_cluster.url
