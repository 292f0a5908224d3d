"""The chaos convergence checker: random writes everywhere while links fail and sites crash.

One run, for one seed:

1. **plan** (`plan_chaos`, pure): from `random.Random(seed)` alone, the link modes, a schedule
   of faults (cut or heal a link, isolate a site or let it rejoin, SIGKILL a site and restart
   it later, never every site down at once; with the redis backends also SIGKILL a site's
   redis-server, or one node of its Redis Cluster, and start it again later) and a schedule
   of writes of every built-in type
   at every site over a small key space, so that writes conflict. The same seed always gives
   the same plan, so a failing seed can be run again.
2. **chaos**: a `LocalCluster` with every link through the WAN emulator; a writer per site
   publishes its writes when they are due (reconnecting after its site was killed; a publish
   that raises counts as failed, never as acknowledged) while the faults happen on schedule.
3. **heal**: every link healed, every dead site restarted, then `wait_converged`.
4. **check** (pure functions over what the admin APIs return):
   a. every site's `/state/snapshot` is identical;
   b. every acknowledged write is in its origin's journal with the acknowledged id, position,
      type, key, payload and version; no write the site refused (`RejectedError`: "nothing was
      journaled") is in any journal (writes whose outcome is unknown may or may not be there);
      journals are dense, and no request id or version is journaled twice by one origin;
   c. the sequential model (`testing/model.py`) of every journaled write equals each site's
      snapshot, and each site's capped sets read as the model's;
   d. at every site, every stream is received and applied to its origin's head, and
      `applied_count == head`: each message applied exactly once.

`ChaosReport.problems` lists every violation as a sentence naming the site, key, expected and
actual value; `ok` means there are none.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import signal
import time
import urllib.error
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from multiactive import failpoints
from multiactive.chaos.model import (
    bounded,
    capped_views,
    diff_snapshots,
    diff_views,
    members_from_json,
    replay,
    snapshot_from_json,
)
from multiactive.client import Ack, Client
from multiactive.errors import ClusterError, ConfigError, MultiactiveError, RejectedError
from multiactive.local.cluster import DEFAULT_SITES, REDIS_BACKENDS, LocalCluster
from multiactive.local.redis import CLUSTER_MASTERS
from multiactive.model.message import Message, StreamId
from multiactive.records import MessageRecord, SiteStatus, StreamStatus
from multiactive.state.base import Op
from multiactive.state.ops import COUNTER_ADD, KV_DEL, KV_SET, ZSET_ADD, ZSET_REM, Member, Snapshot

Link = tuple[str, str]  # (origin, receiver)
# `package.module.SomeError: text`, or the one line `site run` prints as it exits 1
_EXCEPTION_LINE = re.compile(r"^(?:(?:[A-Za-z_]\w*\.)*[A-Z]\w*|error): ")
ProgressCallback = Callable[["ChaosProgress"], None]

TYPE_WEIGHTS = {KV_SET: 3, KV_DEL: 1, COUNTER_ADD: 3, ZSET_ADD: 3, ZSET_REM: 1}
KEY_PREFIX = {KV_SET: "kv", KV_DEL: "kv", COUNTER_ADD: "n", ZSET_ADD: "set", ZSET_REM: "set"}
COUNTER_DELTAS = (-3, 9)  # inclusive range of counter.add deltas
FAULT_GAP = (0.5, 1.5)  # times fault_interval_s: the gap between two fault starts
CUT_MODES = ("reset", "blackhole")
LINK_MODES = ("push", "pull")
PUBLISH_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 1.0
RECONNECT_PAUSE_S = 0.1
PROGRESS_INTERVAL_S = 0.5
JOURNAL_PAGE = 5000
ADMIN_TIMEOUT_S = 30.0
# Faster failure detection than production defaults, so short runs heal quickly.
SITE_SETTINGS: dict[str, Any] = {
    "peer_timeout_s": 3.0,
    "heartbeat_interval_s": 0.5,
    "reconnect_max_s": 1.0,
    "canary_interval_s": 0.0,  # canaries would keep journals moving while the checker reads
}


@dataclass(frozen=True, slots=True)
class ChaosOptions:
    """One chaos run. Every random choice follows from `seed`."""

    seed: int = 1
    duration_s: float = 5.0  # of writes and faults
    sites: tuple[str, ...] = DEFAULT_SITES
    partitions: int = 4
    backend: str = "sqlite"  # journal and state of every site (LocalCluster's `backend`)
    rate: float = 300.0  # planned writes per second, all sites together
    keys: int = 6  # keys per family (kv, counter, set): few, so that writes conflict
    members: int = 12  # distinct members that set operations draw from
    zset_cap: int = 4  # [limits] zset_cap of every site
    fault_interval_s: float = 0.7  # mean time between the starts of two faults
    p_cut: float = 0.45  # chance that a fault cuts one link ...
    p_isolate: float = 0.2  # ... cuts every link of one site ...
    p_kill: float = 0.35  # ... or SIGKILLs one site
    p_redis_kill: float = 0.0  # ... or SIGKILLs one site's redis-server (or cluster node)
    outage_s: tuple[float, float] = (0.3, 2.5)  # how long a cut or an isolation lasts
    down_s: tuple[float, float] = (0.2, 2.0)  # how long a killed site stays down
    converge_timeout_s: float = 120.0
    failpoints: tuple[str, ...] = ()  # switched on in the sites (`multiactive.failpoints`)

    def __post_init__(self) -> None:
        _need(self.duration_s > 0, "duration_s", self.duration_s, "> 0")
        _need(len(set(self.sites)) >= 2, "sites", self.sites, "at least two distinct names")
        _need(self.partitions >= 1, "partitions", self.partitions, ">= 1")
        _need(self.rate > 0, "rate", self.rate, "> 0")
        for name in ("keys", "members", "zset_cap"):
            _need(getattr(self, name) >= 1, name, getattr(self, name), ">= 1")
        _need(self.fault_interval_s > 0, "fault_interval_s", self.fault_interval_s, "> 0")
        weights = (self.p_cut, self.p_isolate, self.p_kill, self.p_redis_kill)
        _need(min(weights) >= 0 and sum(weights) > 0, "p_cut/p_isolate/p_kill/p_redis_kill",
              weights, ">= 0 each and not all 0")  # fmt: skip
        _need(self.p_redis_kill == 0 or self.backend in REDIS_BACKENDS, "p_redis_kill",
              self.p_redis_kill, '0 unless backend is "redis" or "redis-cluster"')  # fmt: skip
        for name in ("outage_s", "down_s"):
            low, high = getattr(self, name)
            _need(0 <= low <= high, name, (low, high), "a range (low, high) with 0 <= low <= high")
        _need(self.converge_timeout_s > 0, "converge_timeout_s", self.converge_timeout_s, "> 0")
        failpoints.parse(",".join(self.failpoints))

    @property
    def redis_nodes(self) -> int:
        """How many redis-server processes each site's Redis has (0: not on Redis)."""
        if self.backend not in REDIS_BACKENDS:
            return 0
        return CLUSTER_MASTERS if self.backend == "redis-cluster" else 1

    @property
    def links(self) -> list[Link]:
        return [(o, r) for o in self.sites for r in self.sites if o != r]


def _need(ok: bool, name: str, value: object, expected: str) -> None:
    if not ok:
        raise ConfigError(f"chaos option {name} is {value!r}; it must be {expected}")


# -- the plan -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlannedWrite:
    at_s: float  # since the chaos phase started
    site: str
    type: str
    key: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class PlannedFault:
    """cut/heal `links`, isolate/rejoin `site` (its `links`), kill/restart `site`,
    redis_kill/redis_restart the redis-server `node` of `site` (0 unless on a cluster)."""

    at_s: float
    action: str  # cut | heal | isolate | rejoin | kill | restart | redis_kill | redis_restart
    site: str = ""
    links: tuple[Link, ...] = ()
    mode: str = ""  # how a cut cuts: reset | blackhole
    node: int = 0  # which node of the site's Redis Cluster a redis_kill/redis_restart hits

    def describe(self) -> str:
        links = ", ".join(f"{o}->{r}" for o, r in self.links)
        target = {"cut": links, "heal": links}.get(self.action, self.site)
        mode = f" ({self.mode})" if self.mode else ""
        node = f" node {self.node}" if self.node else ""
        return f"{self.action} {target}{node}{mode} at {self.at_s:.2f} s"


@dataclass(frozen=True, slots=True)
class ChaosPlan:
    modes: tuple[tuple[Link, str], ...]  # push or pull, per link
    faults: tuple[PlannedFault, ...]  # in time order
    writes: tuple[PlannedWrite, ...]  # in time order


def plan_chaos(options: ChaosOptions) -> ChaosPlan:
    """Everything random about a run, drawn from `random.Random(options.seed)` alone."""
    rng = random.Random(options.seed)
    modes = tuple((link, rng.choice(LINK_MODES)) for link in options.links)
    faults = plan_faults(options, rng)
    return ChaosPlan(modes, faults, plan_writes(options, rng))


def plan_writes(options: ChaosOptions, rng: random.Random) -> tuple[PlannedWrite, ...]:
    """Writes arriving at `rate` per second (Poisson), each at a random site."""
    types, weights = list(TYPE_WEIGHTS), list(TYPE_WEIGHTS.values())
    writes = []
    at_s = rng.expovariate(options.rate)
    while at_s < options.duration_s:
        type_ = rng.choices(types, weights)[0]
        site = rng.choice(options.sites)
        key = f"{KEY_PREFIX[type_]}:{rng.randrange(options.keys)}"
        writes.append(PlannedWrite(at_s, site, type_, key, _payload(type_, options, rng, at_s)))
        at_s += rng.expovariate(options.rate)
    return tuple(writes)


def _payload(type_: str, options: ChaosOptions, rng: random.Random, at_s: float) -> bytes:
    if type_ == KV_SET:
        return f"v{rng.randrange(1 << 30)}@{at_s:.3f}".encode()
    if type_ == COUNTER_ADD:
        return str(rng.randint(*COUNTER_DELTAS)).encode()
    if type_ in (ZSET_ADD, ZSET_REM):
        return f"m{rng.randrange(options.members)}".encode()
    return b""


@dataclass
class _Planned:
    """What is broken at a moment of the planned schedule."""

    cut: set[Link] = field(default_factory=set)
    down: set[str] = field(default_factory=set)
    redis_down: set[str] = field(default_factory=set)

    def apply(self, fault: PlannedFault) -> None:
        if fault.action == "redis_kill":
            self.redis_down.add(fault.site)
        elif fault.action == "redis_restart":
            self.redis_down.discard(fault.site)
        elif fault.action in ("cut", "isolate"):
            self.cut.update(fault.links)
        elif fault.action in ("heal", "rejoin"):
            self.cut.difference_update(fault.links)
        elif fault.action == "kill":
            self.down.add(fault.site)
        else:
            self.down.discard(fault.site)


def plan_faults(options: ChaosOptions, rng: random.Random) -> tuple[PlannedFault, ...]:
    """Faults starting at random moments (gaps of 0.5 to 1.5 `fault_interval_s`), each with
    its end."""
    state = _Planned()
    planned: list[PlannedFault] = []
    endings: list[PlannedFault] = []
    at_s = rng.uniform(0.0, options.fault_interval_s)
    while at_s < options.duration_s:
        planned += _due(endings, at_s, state)
        pair = _next_fault(options, rng, at_s, state)
        if pair is not None:
            start, end = pair
            state.apply(start)
            planned.append(start)
            endings.append(end)
        at_s += options.fault_interval_s * rng.uniform(*FAULT_GAP)
    planned += _due(endings, options.duration_s, state)
    return tuple(sorted(planned, key=lambda f: f.at_s))


def _due(endings: list[PlannedFault], at_s: float, state: _Planned) -> list[PlannedFault]:
    """Take the endings due by `at_s` out of `endings`, in time order, applied to `state`."""
    due = sorted((f for f in endings if f.at_s <= at_s), key=lambda f: f.at_s)
    for fault in due:
        endings.remove(fault)
        state.apply(fault)
    return due


def _next_fault(
    options: ChaosOptions, rng: random.Random, at_s: float, state: _Planned
) -> tuple[PlannedFault, PlannedFault] | None:
    """A fault starting at `at_s` and its end, or None when the drawn kind is not possible now
    (every link already cut, or killing would leave no site up)."""
    weights = (options.p_cut, options.p_isolate, options.p_kill, options.p_redis_kill)
    kind = rng.choices(("cut", "isolate", "kill", "redis"), weights)[0]
    if kind == "kill":
        return _plan_kill(options, rng, at_s, state)
    if kind == "redis":
        return _plan_redis_kill(options, rng, at_s, state)
    mode, heal_at = rng.choice(CUT_MODES), at_s + rng.uniform(*options.outage_s)
    if kind == "cut":
        free = [link for link in options.links if link not in state.cut]
        if not free:
            return None
        cut = (rng.choice(free),)
        return PlannedFault(at_s, "cut", "", cut, mode), PlannedFault(heal_at, "heal", "", cut)
    site = rng.choice(options.sites)
    links = tuple(link for link in options.links if site in link and link not in state.cut)
    if not links:
        return None
    return (
        PlannedFault(at_s, "isolate", site, links, mode),
        PlannedFault(heal_at, "rejoin", site, links),
    )


def _plan_kill(
    options: ChaosOptions, rng: random.Random, at_s: float, state: _Planned
) -> tuple[PlannedFault, PlannedFault] | None:
    alive = [s for s in options.sites if s not in state.down]
    if len(alive) < 2:
        return None
    site = rng.choice(alive)
    back_at = at_s + rng.uniform(*options.down_s)
    return PlannedFault(at_s, "kill", site), PlannedFault(back_at, "restart", site)


def _plan_redis_kill(
    options: ChaosOptions, rng: random.Random, at_s: float, state: _Planned
) -> tuple[PlannedFault, PlannedFault] | None:
    """SIGKILL one site's redis-server, or one node of its cluster (a site with none down),
    and start it again later; the site keeps running meanwhile (a restart of the site starts
    its server too)."""
    up = [s for s in options.sites if s not in state.redis_down]
    if not up:
        return None
    site = rng.choice(up)
    back_at = at_s + rng.uniform(*options.down_s)
    node = rng.randrange(options.redis_nodes) if options.redis_nodes > 1 else 0
    return (
        PlannedFault(at_s, "redis_kill", site, node=node),
        PlannedFault(back_at, "redis_restart", site, node=node),
    )


# -- records --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AckedWrite:
    """A planned write and the acknowledgement its site gave it."""

    id: str
    site: str
    partition: int
    seq: int
    version: int | None
    type: str
    key: str
    payload: bytes

    @classmethod
    def of(cls, write: PlannedWrite, ack: Ack) -> AckedWrite:
        return cls(
            ack.id, ack.site, ack.partition, ack.seq, ack.version, write.type, write.key,
            write.payload,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class ChaosProgress:
    seed: int
    phase: str
    elapsed_s: float
    acked: int
    failed: int
    kills: int
    cuts: int
    isolations: int
    down: tuple[str, ...]
    cut_links: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ChaosReport:
    seed: int
    problems: tuple[str, ...]
    planned_writes: int
    acked: int
    failed: int  # the publish raised: the write may or may not be journaled
    unsent: int  # not sent: the site could not be reached when the write was due
    journaled: int  # messages in the origins' journals (acked, and failed ones that got there)
    kills: int
    cuts: int  # single links cut
    isolations: int  # sites with every link cut
    refused: int  # the site refused the write: it must be in no journal
    redis_kills: int  # redis-servers SIGKILLed
    chaos_s: float  # the chaos phase: writes and faults
    heal_s: float  # healing links and restarting dead sites until every site is ready
    converge_s: float  # from healed until every site applied every origin's journal
    check_s: float
    total_s: float
    data_dir: str

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "ok": self.ok,
            "problems": list(self.problems),
            "planned_writes": self.planned_writes,
            "acked": self.acked,
            "failed": self.failed,
            "unsent": self.unsent,
            "journaled": self.journaled,
            "kills": self.kills,
            "cuts": self.cuts,
            "isolations": self.isolations,
            "refused": self.refused,
            "redis_kills": self.redis_kills,
            "chaos_s": round(self.chaos_s, 3),
            "heal_s": round(self.heal_s, 3),
            "converge_s": round(self.converge_s, 3),
            "check_s": round(self.check_s, 3),
            "total_s": round(self.total_s, 3),
            "data_dir": self.data_dir,
        }


# -- running --------------------------------------------------------------------------------


def chaos_cluster(options: ChaosOptions, plan: ChaosPlan, root: Path) -> LocalCluster:
    """Every link through the WAN emulator, in the planned modes; failpoints for the sites only."""
    cluster = LocalCluster(
        root, options.sites, partitions=options.partitions, backend=options.backend,
        modes=dict(plan.modes), wan={}, name=f"chaos-{options.seed}",
        settings={"replication": SITE_SETTINGS, "limits": {"zset_cap": options.zset_cap}},
    )  # fmt: skip
    switched_on = ",".join(options.failpoints)
    for proc in cluster.processes.values():
        proc.env = {**proc.env, failpoints.ENV_VAR: switched_on}
    return cluster


async def run_chaos(
    options: ChaosOptions, root: Path, progress: ProgressCallback | None = None
) -> ChaosReport:
    """Plan, run and check one seed with its sites' data and logs under `root`."""
    plan = plan_chaos(options)
    with chaos_cluster(options, plan, Path(root)) as cluster:
        return await _Run(options, plan, cluster, progress).run()


@dataclass
class _Counts:
    acked: int = 0
    failed: int = 0
    unsent: int = 0
    kills: int = 0
    cuts: int = 0
    isolations: int = 0
    refused: int = 0
    redis_kills: int = 0


class _Run:
    """One run against a live cluster: chaos, heal, converge, check."""

    def __init__(
        self,
        options: ChaosOptions,
        plan: ChaosPlan,
        cluster: LocalCluster,
        progress: ProgressCallback | None,
    ) -> None:
        self.options = options
        self.plan = plan
        self.cluster = cluster
        self.progress = progress
        self.counts = _Counts()
        self.acks: list[AckedWrite] = []
        self.refused: list[str] = []  # ids of writes a site refused
        self.ids = itertools.count(1)
        self.problems: list[str] = []
        self.down: set[str] = set()
        self.cut: set[Link] = set()
        self.phase = "starting"
        self.started = time.monotonic()
        self.marks: dict[str, float] = {}

    async def run(self) -> ChaosReport:
        ticker = asyncio.create_task(self._tick())
        try:
            try:
                await asyncio.to_thread(self.cluster.start)
            except ClusterError as exc:
                self.problems.append(f"the cluster did not start: {exc}")
                return self._report(0)
            await self._phase("chaos", self._chaos())
            await self._phase("healing", asyncio.to_thread(self._heal_all))
            await self._phase("converging", asyncio.to_thread(self._converge))
            journaled = await self._phase("checking", asyncio.to_thread(self._check))
        finally:
            ticker.cancel()
        self._show()
        return self._report(journaled)

    async def _phase(self, name: str, work: Any) -> Any:
        self.phase = name
        self._show()
        began = time.monotonic()
        try:
            return await work
        finally:
            self.marks[name] = time.monotonic() - began

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL_S)
            self._show()

    def _show(self) -> None:
        if self.progress is None:
            return
        c = self.counts
        self.progress(
            ChaosProgress(
                self.options.seed, self.phase, time.monotonic() - self.started, c.acked,
                c.failed + c.unsent, c.kills, c.cuts, c.isolations, tuple(sorted(self.down)),
                tuple(f"{o}->{r}" for o, r in sorted(self.cut)),
            )
        )  # fmt: skip

    def _report(self, journaled: int) -> ChaosReport:
        c, marks = self.counts, self.marks
        return ChaosReport(
            self.options.seed, tuple(self.problems), len(self.plan.writes), c.acked, c.failed,
            c.unsent, journaled, c.kills, c.cuts, c.isolations, c.refused, c.redis_kills,
            marks.get("chaos", 0.0),
            marks.get("healing", 0.0), marks.get("converging", 0.0), marks.get("checking", 0.0),
            time.monotonic() - self.started, str(self.cluster.root),
        )  # fmt: skip

    # -- chaos ------------------------------------------------------------------------------

    async def _chaos(self) -> None:
        start = time.monotonic()
        by_site: dict[str, list[PlannedWrite]] = {site: [] for site in self.options.sites}
        for write in self.plan.writes:
            by_site[write.site].append(write)
        await asyncio.gather(
            self._faults(start), *(self._writer(site, w, start) for site, w in by_site.items())
        )

    async def _faults(self, start: float) -> None:
        for fault in self.plan.faults:
            await _sleep_until(start + fault.at_s)
            try:
                await asyncio.to_thread(self._execute, fault)
            except (ClusterError, ConfigError, OSError, urllib.error.URLError) as exc:
                self.problems.append(f"fault {fault.describe()} could not be made: {exc}")

    def _execute(self, fault: PlannedFault) -> None:
        """Make one planned fault happen (in a worker thread: the cluster calls block)."""
        cluster, action = self.cluster, fault.action
        if action == "redis_kill":
            cluster.redis[fault.site].nodes[fault.node].kill()
            self.counts.redis_kills += 1
        elif action == "redis_restart":
            node = cluster.redis[fault.site].nodes[fault.node]
            if not node.alive:  # a restart of its site started it already
                node.start()
        elif action in ("cut", "isolate"):
            for origin, receiver in fault.links:
                cluster.cut(origin, receiver, fault.mode)
            self.cut.update(fault.links)
            if action == "cut":
                self.counts.cuts += 1
            else:
                self.counts.isolations += 1
        elif action in ("heal", "rejoin"):
            for origin, receiver in fault.links:
                cluster.heal(origin, receiver)
            self.cut.difference_update(fault.links)
        elif action == "kill":
            self.down.add(fault.site)
            cluster.kill(fault.site)
            self.counts.kills += 1
        else:
            self._note_exit(fault.site)
            cluster.restart(fault.site, wait=False)
            self.down.discard(fault.site)

    def _note_exit(self, site: str) -> None:
        """Before a dead site is restarted: if it exited by itself rather than by the checker's
        SIGKILL, that is a crash, and a problem even though a restart hides it."""
        proc = self.cluster.processes[site]
        code = None if proc.process is None else proc.process.poll()
        if code is not None and code != -signal.SIGKILL:
            self.problems.append(
                f"site {site} exited by itself with code {code} (not by the checker's SIGKILL) "
                f"before {time.monotonic() - self.started:.1f} s; {last_error(proc.log_tail())} "
                f"(log: {proc.log_path})"
            )

    async def _writer(self, site: str, writes: Sequence[PlannedWrite], start: float) -> None:
        """Publish a site's writes when they are due; reconnect after the site was killed."""
        client: Client | None = None
        retry_at = 0.0
        pending: set[asyncio.Task[None]] = set()
        index = 0
        while index < len(writes):
            await _sleep_until(start + writes[index].at_s)
            now_s = time.monotonic() - start
            due = index
            while index < len(writes) and writes[index].at_s <= now_s:
                index += 1
            if client is None or not client.connected:
                client, retry_at = await self._reconnect(site, client, retry_at)
            if client is None:
                self.counts.unsent += index - due
                continue
            for write in writes[due:index]:
                task = asyncio.create_task(self._publish(client, write))
                pending.add(task)
                task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending)
        if client is not None:
            await client.close()

    async def _reconnect(
        self, site: str, client: Client | None, retry_at: float
    ) -> tuple[Client | None, float]:
        """A connected client for `site`, or None (and when to try again) if it is down."""
        if client is not None:
            await client.close()
        if time.monotonic() < retry_at:
            return None, retry_at
        fresh = Client(
            self.cluster.client_address(site),
            connect_timeout_s=CONNECT_TIMEOUT_S,
            deadline_s=PUBLISH_TIMEOUT_S,
        )
        try:
            await fresh.connect()
        except (MultiactiveError, OSError, TimeoutError):
            await fresh.close()
            return None, time.monotonic() + RECONNECT_PAUSE_S
        return fresh, 0.0

    async def _publish(self, client: Client, write: PlannedWrite) -> None:
        id_ = f"chaos-{self.options.seed}-{write.site}-{next(self.ids)}"
        try:
            ack = await asyncio.wait_for(
                client.publish(write.type, write.key, write.payload, id=id_), PUBLISH_TIMEOUT_S
            )
        except RejectedError:
            self.refused.append(id_)
            self.counts.refused += 1
            self.counts.failed += 1
            return
        except (MultiactiveError, TimeoutError):
            self.counts.failed += 1
            return
        self.acks.append(AckedWrite.of(write, ack))
        self.counts.acked += 1

    # -- heal and converge ------------------------------------------------------------------

    def _heal_all(self) -> None:
        """Heal every link, start every dead redis-server (cluster node), restart every dead
        site, wait until every site is ready."""
        try:
            self.cluster.start_redis(self.options.sites)
        except ConfigError as exc:  # a redis-server that exits or never serves
            self.problems.append(f"a site's Redis did not come back: {exc}")
        for origin, receiver in self.options.links:
            self.cluster.heal(origin, receiver)
        self.cut.clear()
        for site, proc in self.cluster.processes.items():
            if not proc.alive:
                self._note_exit(site)
                self.cluster.restart(site, wait=False)
        self.down.clear()
        for site in self.options.sites:
            try:
                self.cluster.wait_ready(site)
            except ClusterError as exc:
                self.problems.append(f"site {site} did not come back: {exc}")

    def _converge(self) -> None:
        try:
            self.cluster.wait_converged(self.options.converge_timeout_s)
        except (ClusterError, OSError, urllib.error.URLError) as exc:
            self.problems.append(f"the sites did not converge: {exc}")

    # -- check ------------------------------------------------------------------------------

    def _check(self) -> int:
        """Collect every site's journal, state and status; add every violation to problems;
        return how many messages the origins journaled."""
        evidence = Evidence.collect(self.cluster, self.options, self.problems)
        self.problems += check_evidence(evidence, self.acks, self.options.zset_cap)
        self.problems += check_refused(self.refused, evidence.journals)
        if self.counts.acked == 0:
            self.problems.append("no write was acknowledged: the run proves nothing")
        return sum(len(messages) for messages in evidence.journals.values())


def last_error(log_tail: str) -> str:
    """The last exception a log names (`package.module.SomeError: text`, or the `error: text`
    line of a site that exited 1), for a one-line account of a crash."""
    for line in reversed(log_tail.splitlines()):
        text = line.strip(" |+-")
        if _EXCEPTION_LINE.match(text):
            return f"its log's last error: {text}"
    return "its log names no error"


async def _sleep_until(deadline: float) -> None:
    await asyncio.sleep(max(0.0, deadline - time.monotonic()))


# -- evidence and checks --------------------------------------------------------------------


@dataclass
class Evidence:
    """What the sites hold after convergence, as their admin APIs report it."""

    sites: tuple[str, ...]
    journals: dict[str, list[Message]] = field(default_factory=dict)  # origin -> own messages
    heads: dict[str, dict[StreamId, int]] = field(default_factory=dict)  # origin -> own heads
    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    views: dict[str, dict[str, list[Member]]] = field(default_factory=dict)  # capped sets
    streams: dict[str, tuple[StreamStatus, ...]] = field(default_factory=dict)  # /status

    @classmethod
    def collect(cls, cluster: LocalCluster, options: ChaosOptions, problems: list[str]) -> Evidence:
        """Read every site; a site that does not answer is a problem, not an exception."""
        evidence = cls(options.sites)
        for site in options.sites:
            try:
                evidence._read_site(cluster, site, options.partitions)
            except (OSError, urllib.error.URLError, ValueError) as exc:
                problems.append(f"site {site}'s admin API did not answer the checker: {exc}")
        return evidence

    def _read_site(self, cluster: LocalCluster, site: str, partitions: int) -> None:
        status = SiteStatus.from_json(cluster.get(site, "/status", ADMIN_TIMEOUT_S))
        self.streams[site] = status.streams
        self.heads[site] = {
            StreamId(s.origin, s.partition): s.head for s in status.streams if s.origin == site
        }
        self.journals[site] = [
            message for p in range(partitions) for message in _journal(cluster, site, p)
        ]
        snapshot = snapshot_from_json(cluster.get(site, "/state/snapshot", ADMIN_TIMEOUT_S))
        self.snapshots[site] = snapshot
        self.views[site] = {
            key: members_from_json(
                cluster.get(site, f"/state/zset/{quote(key)}", ADMIN_TIMEOUT_S)["members"]
            )
            for key, _ in snapshot.zsets
        }


def _journal(cluster: LocalCluster, origin: str, partition: int) -> list[Message]:
    """Every message of one of `origin`'s own streams, from its own journal, page by page."""
    messages: list[Message] = []
    while True:
        start = messages[-1].seq + 1 if messages else 1
        path = (
            f"/journal/messages?origin={origin}&partition={partition}"
            f"&from_seq={start}&limit={JOURNAL_PAGE}"
        )
        page = cluster.get(origin, path, ADMIN_TIMEOUT_S)
        if not page:
            return messages
        messages += [MessageRecord.from_json(m).to_message() for m in page]


def check_evidence(evidence: Evidence, acks: Sequence[AckedWrite], zset_cap: int) -> list[str]:
    """Checks a-d of the module docstring, over collected evidence."""
    problems = check_same_state(evidence.snapshots)
    for origin, messages in evidence.journals.items():
        problems += check_journal(origin, messages, evidence.heads.get(origin, {}))
    problems += check_acks(acks, evidence.journals)
    ops = [Op.of(m) for messages in evidence.journals.values() for m in messages]
    expected = replay(ops)
    views = capped_views(expected, zset_cap)
    source = "the model of the journaled writes predicts"
    for site, snapshot in evidence.snapshots.items():
        problems += diff_snapshots(expected, snapshot, site, source)
        problems += diff_views(views, evidence.views.get(site, {}), site, source)
    heads = {s: h for own in evidence.heads.values() for s, h in own.items()}
    for site, streams in evidence.streams.items():
        problems += check_streams(site, streams, heads)
    return problems


def check_same_state(snapshots: Mapping[str, Snapshot]) -> list[str]:
    """(a) every site's state equals the first site's."""
    if not snapshots:
        return []
    first, *others = snapshots
    reference = snapshots[first]
    problems = []
    for site in others:
        problems += diff_snapshots(reference, snapshots[site], site, f"site {first} holds")
    return problems


def check_journal(
    origin: str, messages: Sequence[Message], heads: Mapping[StreamId, int]
) -> list[str]:
    """An origin's own journal: dense seqs up to its head, no id or version journaled twice."""
    problems = []
    by_stream: dict[StreamId, list[int]] = {}
    for message in messages:
        by_stream.setdefault(message.stream, []).append(message.seq)
    for stream in sorted(set(by_stream) | set(heads)):
        seqs, head = by_stream.get(stream, []), heads.get(stream, 0)
        if seqs != list(range(1, head + 1)):
            problems.append(
                f"journal of {origin} stream {stream}: head is {head} but it holds "
                f"{len(seqs)} messages, seqs {_span(seqs)} (expected 1..{head}, dense)"
            )
    problems += _twice(origin, "request id", [m.id for m in messages])
    problems += _twice(origin, "version", [str(m.version) for m in messages])
    return problems


def _span(seqs: Sequence[int]) -> str:
    return "none" if not seqs else f"{seqs[0]}..{seqs[-1]}"


def _twice(origin: str, what: str, values: Iterable[str]) -> list[str]:
    repeated = sorted(value for value, count in Counter(values).items() if count > 1)
    if not repeated:
        return []
    shown = ", ".join(repeated[:5])
    return [f"journal of {origin}: {len(repeated)} {what}s journaled more than once ({shown})"]


def check_acks(acks: Sequence[AckedWrite], journals: Mapping[str, Sequence[Message]]) -> list[str]:
    """(b) every acknowledged write is in its origin's journal, as acknowledged."""
    by_id = {m.id: m for messages in journals.values() for m in messages}
    problems = []
    for ack in acks:
        if ack.site not in journals:
            continue  # the origin's journal could not be read: reported already
        message = by_id.get(ack.id)
        if message is None or message.origin != ack.site:
            problems.append(
                f"acknowledged write {ack.id} ({ack.type} {ack.key} at {ack.site}, partition "
                f"{ack.partition} seq {ack.seq}) is missing from {ack.site}'s journal"
            )
            continue
        problems += _ack_differences(ack, message)
    return bounded(problems)


def check_refused(refused: Sequence[str], journals: Mapping[str, Sequence[Message]]) -> list[str]:
    """(b) a write the site refused is in no journal: RejectedError means nothing was
    journaled."""
    ids = set(refused)
    found = sorted(m.id for messages in journals.values() for m in messages if m.id in ids)
    return bounded([f"write {id_} was refused to its client, but it is journaled" for id_ in found])


def _ack_differences(ack: AckedWrite, message: Message) -> list[str]:
    acked = {
        "position": (ack.partition, ack.seq), "type": ack.type, "key": ack.key,
        "payload": ack.payload, "version": ack.version,
    }  # fmt: skip
    journaled = {
        "position": (message.partition, message.seq), "type": message.type, "key": message.key,
        "payload": message.payload, "version": message.version,
    }  # fmt: skip
    if ack.version is None:
        del acked["version"], journaled["version"]
    return [
        f"acknowledged write {ack.id} at {ack.site}: {name} was acknowledged as "
        f"{acked[name]!r} but is {journaled[name]!r} in the journal"
        for name in acked
        if acked[name] != journaled[name]
    ]


def check_streams(
    site: str, streams: Sequence[StreamStatus], heads: Mapping[StreamId, int]
) -> list[str]:
    """(d) every origin's stream is received and applied here up to the origin's head, and
    each of its messages was applied exactly once (`applied_count == head`)."""
    here = {StreamId(s.origin, s.partition): s for s in streams}
    problems = []
    for stream, head in sorted(heads.items()):
        got = here.get(stream)
        figures = (0, 0, 0) if got is None else (got.head, got.applied, got.applied_count)
        if figures != (head, head, head):
            problems.append(
                f"site {site} stream {stream}: received {figures[0]}, applied through "
                f"{figures[1]}, applied {figures[2]} messages; its origin's head is {head}"
            )
    return problems
