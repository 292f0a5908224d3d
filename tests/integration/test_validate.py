"""Mismatched or misdirected peers against real site processes: a site refuses a peer whose
topology has other partitions, naming both counts; a client dialing an admin port is told so;
`validate` reaches a real Redis."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from multiactive.client import Client
from multiactive.errors import ConnectionLost

from .conftest import ClusterFactory, wait_for


def test_a_peer_with_other_partitions_is_refused_naming_the_difference(
    make_cluster: ClusterFactory,
) -> None:
    """a runs on partitions = 4, b on 8 (the file changed between their starts): the link is
    refused and both ends' status name the difference. A client dialing a's admin port is
    told it is an admin port."""
    cluster = make_cluster(("a", "b"), partitions=4)
    cluster.start(["a"])
    cluster.partitions = 8
    cluster.write_topology()
    cluster.start(["b"])

    def refused() -> bool:
        errors = [link.last_error for site in cluster.sites for link in cluster.status(site).links]
        return any("partitions = 4 there, 8 here" in e or "partitions = 8 there, 4 here" in e
                   for e in errors)  # fmt: skip

    wait_for(refused, 20, "a link refused for its partitions")
    assert all(link.state != "streaming" for link in cluster.status("a").links)

    async def dial_admin() -> None:  # a client pointed at the admin port is told so
        async with Client(cluster.processes["a"].admin, connect_timeout_s=5):
            pass

    with pytest.raises(ConnectionLost, match="this is an admin port"):
        asyncio.run(dial_admin())


def test_validate_reaches_a_real_redis(tmp_path: Path, redis_url: str) -> None:
    """A site on a live redis-server validates (exit 0): PING answered."""
    path = tmp_path / "topology.toml"
    path.write_text(
        '[cluster]\nname = "c"\n\n[[sites]]\nname = "a"\nlisten = "127.0.0.1:7101"\n'
        f'journal = "redis"\nstate = "redis"\nredis_url = "{redis_url}"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "multiactive", "validate", "--topology", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid (1 sites" in result.stdout
