"""The demo scenario: three sites on this machine, writes everywhere, a cut, proof of convergence.

Sites `bj-unicom`, `bj-telecom` and `gz` run as separate processes on loopback with embedded
backends in a temporary folder. Every link goes through the WAN emulator: the two Beijing sites
are 1 ms apart (round trip), either of them and `gz` 40 ms, as in the seed documents. The
Beijing sites push their writes; `gz`'s writes travel in `pull` mode (the Beijing sites read
them from `gz`: "local write, remote read"), so both link modes are exercised.

A paced workload writes to a shared key space at all three sites at once. A third of the way
in, every link of `gz` is cut (its long-haul lines fail); all sites keep accepting writes. Two
thirds of the way in the links heal, and the demo measures how long the sites take to catch up
with what was written while they were apart. When the writes end it waits until every site has
applied every origin's whole journal and compares state digests.
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

from multiactive.chaos.workload import Workload
from multiactive.errors import ClusterError, DecodeError
from multiactive.local.cluster import DEFAULT_SITES, LocalCluster
from multiactive.model.record import encode
from multiactive.records import OriginTotals, SiteStatus
from multiactive.wan.shape import LinkShape

PROGRESS_INTERVAL_S = 0.5
CONVERGE_TIMEOUT_S = 120.0
NEAR = LinkShape(delay_ms=0.5)  # bj-unicom <-> bj-telecom: 1 ms round trip
FAR = LinkShape(delay_ms=20.0, jitter_ms=1.0)  # Beijing <-> Guangzhou: 40 ms round trip
CUT_SITE = "gz"


@dataclass(frozen=True)
class DemoOptions:
    duration_s: float = 20.0
    rate: float = 3000.0
    keys: int = 500
    backend: str = "sqlite"
    data_dir: Path | None = None
    wan: bool = True
    cut: bool = True


@dataclass
class Snapshot:
    phase: str
    elapsed_s: float
    statuses: dict[str, SiteStatus | None]  # None: the site did not answer
    workload: Workload


@dataclass
class DemoResult:
    converged: bool
    digests: dict[str, str]
    sites: dict[str, dict[str, OriginTotals]]  # per site and origin: received, applied
    acked: dict[str, int]
    failed: dict[str, int]
    write_s: float
    catch_up_s: float
    data_dir: str
    cut: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "converged": self.converged,
            "digests": self.digests,
            "sites": {s: encode(origins) for s, origins in self.sites.items()},
            "acked": self.acked,
            "failed": self.failed,
            "write_s": round(self.write_s, 3),
            "catch_up_s": round(self.catch_up_s, 3),
            "cut": self.cut,
            "data_dir": self.data_dir,
            "problems": self.problems,
        }


def demo_cluster(root: Path, backend: str, wan: bool) -> LocalCluster:
    """The demo topology: Beijing sites push; gz's own writes are pulled by its receivers."""
    modes = {("gz", "bj-unicom"): "pull", ("gz", "bj-telecom"): "pull"}
    shapes = None
    if wan:
        shapes = {
            (a, b): NEAR if {a, b} == {"bj-unicom", "bj-telecom"} else FAR
            for a in DEFAULT_SITES
            for b in DEFAULT_SITES
            if a != b
        }
    settings = {"replication": {"canary_interval_s": 2.0}}
    return LocalCluster(
        root, DEFAULT_SITES, modes=modes, backend=backend, name="demo", wan=shapes,
        settings=settings,
    )  # fmt: skip


async def run_demo(options: DemoOptions, show: Callable[[Snapshot], None]) -> DemoResult:
    if options.data_dir is not None:
        return await _run(options, Path(options.data_dir), show)
    with tempfile.TemporaryDirectory(prefix="multiactive-demo-") as tmp:
        return await _run(options, Path(tmp), show)


async def _run(options: DemoOptions, root: Path, show: Callable[[Snapshot], None]) -> DemoResult:
    with demo_cluster(root, options.backend, options.wan) as cluster:
        await asyncio.to_thread(cluster.start)
        workload = Workload(
            {site: cluster.client_address(site) for site in cluster.sites},
            rate=options.rate,
            keys=options.keys,
        )
        async with aiohttp.ClientSession() as http:
            watch = _Watcher(cluster, http, workload, show)
            started = time.monotonic()
            writing = asyncio.ensure_future(workload.run(options.duration_s))
            cut: dict[str, Any] = {}
            if options.cut and options.wan:
                cut = await _cut_and_heal(cluster, watch, writing, options.duration_s)
            await watch.during("writing", writing)
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
        sites={site: status.origins for site, status in statuses.items() if status is not None},
        acked={site: c.acked for site, c in workload.counts.items()},
        failed={site: c.failed for site, c in workload.counts.items()},
        write_s=wrote - started,
        catch_up_s=caught_up - wrote,
        data_dir=str(root),
        cut=cut,
        problems=problems,
    )


async def _cut_and_heal(
    cluster: LocalCluster, watch: _Watcher, writing: asyncio.Future[None], duration_s: float
) -> dict[str, Any]:
    """Cut every link of gz for the middle third of the run; time the catch-up after healing."""
    await watch.during("writing", asyncio.sleep(duration_s / 3))
    await asyncio.to_thread(cluster.isolate, CUT_SITE)
    cut_at = time.monotonic()
    await watch.during(f"writing, {CUT_SITE} cut off", asyncio.sleep(duration_s / 3))
    owed = await watch.poll(f"writing, {CUT_SITE} cut off")
    heads = {site: _own_heads(status, site) for site, status in owed.items()}
    await asyncio.to_thread(cluster.rejoin, CUT_SITE)
    healed_at = time.monotonic()
    backlog = sum(_backlog(owed, heads).values())
    await watch.during(f"{CUT_SITE} rejoined, catching up", _received_all(watch, heads))
    return {
        "site": CUT_SITE,
        "cut_for_s": round(healed_at - cut_at, 2),
        "backlog_at_heal": backlog,
        "catch_up_after_heal_s": round(time.monotonic() - healed_at, 2),
    }


def _own_heads(status: SiteStatus | None, site: str) -> dict[tuple[str, int], int]:
    streams = () if status is None else status.streams
    return {(s.origin, s.partition): s.head for s in streams if s.origin == site}


def _backlog(
    statuses: dict[str, SiteStatus | None], heads: dict[str, dict[tuple[str, int], int]]
) -> dict[str, int]:
    """Per site: messages the other sites hold that it has not received."""
    owed = {}
    for site, status in statuses.items():
        streams = () if status is None else status.streams
        have = {(s.origin, s.partition): s.head for s in streams}
        owed[site] = sum(
            max(0, head - have.get(stream, 0))
            for origin, origin_heads in heads.items()
            if origin != site
            for stream, head in origin_heads.items()
        )
    return owed


async def _received_all(watch: _Watcher, heads: dict[str, dict[tuple[str, int], int]]) -> None:
    while True:
        statuses = await watch.poll(f"{CUT_SITE} rejoined, catching up")
        if all(statuses.values()) and not any(_backlog(statuses, heads).values()):
            return
        await asyncio.sleep(0.1)


async def _converge(cluster: LocalCluster) -> bool:
    try:
        await asyncio.to_thread(cluster.wait_converged, CONVERGE_TIMEOUT_S)
    except ClusterError:
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

    async def poll(self, phase: str) -> dict[str, SiteStatus | None]:
        statuses: dict[str, SiteStatus | None] = {}
        for site in self._cluster.sites:
            try:
                answer = await _get(self._http, self._cluster, site, "/status")
                statuses[site] = SiteStatus.from_json(answer)
            except (aiohttp.ClientError, TimeoutError, DecodeError):
                statuses[site] = None
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
