"""The demo scenario: three sites on this machine, writes everywhere, then proof of convergence.

Sites `bj-unicom`, `bj-telecom` and `gz` run as separate processes on loopback with embedded
backends in a temporary folder. The Beijing sites push their writes to the other two sites;
`gz`'s writes travel in `pull` mode (the Beijing sites read them from `gz`: "local write,
remote read"), so both link modes are exercised. A paced
workload writes to a shared key space at all three sites at once; when it ends the demo waits
until every site has applied every origin's whole journal and compares state digests.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from multiactive.testing.cluster import DEFAULT_SITES, LocalCluster
from multiactive.testing.workload import Workload

PROGRESS_INTERVAL_S = 0.5
CONVERGE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class DemoOptions:
    duration_s: float = 20.0
    rate: float = 3000.0
    keys: int = 500
    backend: str = "sqlite"
    data_dir: Path | None = None


@dataclass
class Snapshot:
    phase: str
    elapsed_s: float
    statuses: dict[str, dict[str, Any]]
    workload: Workload


@dataclass
class DemoResult:
    converged: bool
    digests: dict[str, str]
    sites: dict[str, dict[str, Any]]
    acked: dict[str, int]
    failed: dict[str, int]
    write_s: float
    catch_up_s: float
    data_dir: str
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "converged": self.converged,
            "digests": self.digests,
            "sites": self.sites,
            "acked": self.acked,
            "failed": self.failed,
            "write_s": round(self.write_s, 3),
            "catch_up_s": round(self.catch_up_s, 3),
            "data_dir": self.data_dir,
            "problems": self.problems,
        }


def demo_cluster(root: Path, backend: str) -> LocalCluster:
    """The demo topology: Beijing sites push; gz's own writes are pulled by its receivers."""
    modes = {("gz", "bj-unicom"): "pull", ("gz", "bj-telecom"): "pull"}
    return LocalCluster(root, DEFAULT_SITES, modes=modes, backend=backend, name="demo")


async def run_demo(options: DemoOptions, show: Callable[[Snapshot], None]) -> DemoResult:
    if options.data_dir is not None:
        return await _run(options, Path(options.data_dir), show)
    with tempfile.TemporaryDirectory(prefix="multiactive-demo-") as tmp:
        return await _run(options, Path(tmp), show)


async def _run(options: DemoOptions, root: Path, show: Callable[[Snapshot], None]) -> DemoResult:
    with demo_cluster(root, options.backend) as cluster:
        await asyncio.to_thread(cluster.start)
        workload = Workload(
            {site: cluster.client_address(site) for site in cluster.sites},
            rate=options.rate,
            keys=options.keys,
        )
        async with aiohttp.ClientSession() as http:
            watch = _Watcher(cluster, http, workload, show)
            started = time.monotonic()
            await watch.during("writing", workload.run(options.duration_s))
            wrote = time.monotonic()
            converged = await watch.during("catching up", _converge(cluster))
            caught_up = time.monotonic()
            statuses = await watch.poll("done")
            digests = {
                site: (await _get(http, cluster, site, "/state/digest"))["digest"]
                for site in cluster.sites
            }
        await asyncio.to_thread(cluster.stop)
    problems = _problems(converged, digests, workload)
    return DemoResult(
        converged=converged and not problems,
        digests=digests,
        sites={site: status["origins"] for site, status in statuses.items()},
        acked={site: c.acked for site, c in workload.counts.items()},
        failed={site: c.failed for site, c in workload.counts.items()},
        write_s=wrote - started,
        catch_up_s=caught_up - wrote,
        data_dir=str(root),
        problems=problems,
    )


async def _converge(cluster: LocalCluster) -> bool:
    try:
        await asyncio.to_thread(cluster.wait_converged, CONVERGE_TIMEOUT_S)
    except AssertionError:
        return False
    return True


def _problems(converged: bool, digests: dict[str, str], workload: Workload) -> list[str]:
    problems = []
    if not converged:
        problems.append(f"sites did not apply every write within {CONVERGE_TIMEOUT_S:.0f} s")
    if len(set(digests.values())) != 1:
        problems.append("state digests differ between sites")
    if workload.acked == 0:
        problems.append("no write was acknowledged")
    return problems


class _Watcher:
    """Polls every site's status while a phase runs and hands snapshots to `show`."""

    def __init__(
        self,
        cluster: LocalCluster,
        http: aiohttp.ClientSession,
        workload: Workload,
        show: Callable[[Snapshot], None],
    ) -> None:
        self._cluster = cluster
        self._http = http
        self._workload = workload
        self._show = show
        self._started = time.monotonic()

    async def poll(self, phase: str) -> dict[str, dict[str, Any]]:
        statuses = {}
        for site in self._cluster.sites:
            try:
                statuses[site] = await _get(self._http, self._cluster, site, "/status")
            except (aiohttp.ClientError, TimeoutError):
                statuses[site] = {}
        self._show(Snapshot(phase, time.monotonic() - self._started, statuses, self._workload))
        return statuses

    async def during(self, phase: str, work: Any) -> Any:
        task = asyncio.ensure_future(work)
        while not task.done():
            await self.poll(phase)
            await asyncio.wait([task], timeout=PROGRESS_INTERVAL_S)
        return task.result()


async def _get(http: aiohttp.ClientSession, cluster: LocalCluster, site: str, path: str) -> Any:
    url = f"http://{cluster.processes[site].admin}{path}"
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
        response.raise_for_status()
        return await response.json()
