"""Fixtures for integration tests: real `multiactive site run` processes over real TCP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from multiactive.client import Ack, Client
from multiactive.local.cluster import LocalCluster
from multiactive.model.topology import Address

HERE = Path(__file__).parent
MODES = ["push", "pull"]

ClusterFactory = Callable[..., LocalCluster]


# A link that lost its peer dials again after a random delay that doubles up to
# reconnect_max_s (2 s by default). Tests restart sites and heal cut links all the time and
# then wait for the links: with 0.5 s they wait a quarter as long. A test may set its own.
TEST_REPLICATION = {"reconnect_max_s": 0.5}


def with_test_settings(settings: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """`settings` over the tests' defaults (TEST_REPLICATION)."""
    given = dict(settings or {})
    return {**given, "replication": {**TEST_REPLICATION, **given.get("replication", {})}}


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[ClusterFactory]:
    """Build local clusters under tmp_path; every process is killed at the end."""
    made: list[LocalCluster] = []

    def build(sites: tuple[str, ...] = ("a", "b"), **options: Any) -> LocalCluster:
        options.setdefault("partitions", 4)
        options["settings"] = with_test_settings(options.get("settings"))
        root = tmp_path / f"cluster{len(made)}"
        cluster = LocalCluster(root, sites, extra_pythonpath=[str(HERE)], **options)
        made.append(cluster)
        return cluster

    yield build
    for cluster in made:
        cluster.__exit__(None, None, None)


async def publish_all(
    address: Address, count: int, key: Callable[[int], str], payload: bytes = b"v"
) -> list[Ack]:
    async with Client(address) as client:
        return await asyncio.gather(
            *(client.publish("kv.set", key(i), payload) for i in range(count))
        )


def publish(
    address: Address, count: int, key: Callable[[int], str], payload: bytes = b"v"
) -> list[Ack]:
    return asyncio.run(publish_all(address, count, key, payload))


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll a condition until it holds; fail naming `what` after the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def stream_heads(cluster: LocalCluster, site: str, origin: str) -> dict[int, int]:
    return {partition: head for partition, (head, _) in cluster.heads(site, origin).items()}


def assert_applied_exactly_once(cluster: LocalCluster) -> None:
    """Every site processed each journaled message exactly once: per stream, the count of
    messages applied (committed with the watermark) equals the head."""
    for site in cluster.sites:
        for stream in cluster.status(site).streams:
            assert stream.applied == stream.head, (site, stream)
            assert stream.applied_count == stream.head, (site, stream)


def assert_same_digest(cluster: LocalCluster) -> None:
    digests = {site: cluster.digest(site) for site in cluster.sites}
    assert len(set(digests.values())) == 1, digests


def chromium(tmp_path: Path) -> Any:
    """Headless Chromium driven by Selenium (Debian's chromium and chromium-driver)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--window-size=1280,860", f"--user-data-dir={tmp_path / 'chrome'}",
    ):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))


DB_SITES = ("bj-unicom", "bj-telecom", "gz")


@pytest.fixture(scope="session")
def mariadb_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One set of real mariadbd servers for the session: a primary (bj-unicom) and GTID
    replicas (bj-telecom, gz). Fails with the apt-get command when MariaDB is missing."""
    from multiactive.local.mariadb import MariaSet

    servers = MariaSet(tmp_path_factory.mktemp("mariadb"), DB_SITES)
    servers.start()
    servers.fresh = True  # type: ignore[attr-defined]
    yield servers
    servers.kill()


@pytest.fixture
def mariadb(mariadb_servers: Any) -> Any:
    """The session's servers, back to a fresh primary and replicas for each test."""
    if not mariadb_servers.fresh:
        mariadb_servers.reset()
    mariadb_servers.fresh = False
    return mariadb_servers


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`-n 2 --dist loadgroup`), the tests on the session's MariaDB servers
    run in one worker: one set of servers, reset between tests, never shared by two at once."""
    for item in items:
        if "mariadb_servers" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("mariadb"))
