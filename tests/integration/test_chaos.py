"""The chaos convergence checker on real site processes: random writes of every built-in type
at three sites while links are cut and healed and sites are SIGKILLed and restarted; at the end
every site holds the same state, the state a sequential model of the journaled writes predicts,
with every acknowledged write journaled as acknowledged and applied exactly once.

Short runs of 20 seeds, and one seed on redis-servers and one on Redis Clusters with their
servers (nodes) killed too; a failing seed is reproduced with `multiactive check --seed N`.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from multiactive import failpoints
from multiactive.chaos.checker import ChaosOptions, ChaosPlan, ChaosReport, plan_chaos, run_chaos
from multiactive.local.cluster import DEFAULT_SITES, LocalCluster
from multiactive.local.redis import CLUSTER_MASTERS

SEEDS = range(1, 21)
SHORT: dict[str, Any] = {"duration_s": 5.0, "rate": 250.0}
COUNTER_PROBLEM = re.compile(
    r"^site \S+: counter n:\d+ is -?\d+, the model of the journaled writes predicts -?\d+$"
)


def chaos(root: Path, **options: Any) -> ChaosReport:
    return asyncio.run(run_chaos(ChaosOptions(**options), root / "chaos"))


def explain(report: ChaosReport) -> str:
    lines = [f"seed {report.seed}: {len(report.problems)} problems", *report.problems]
    return "\n".join([*lines, f"data and logs: {report.data_dir}"])


@pytest.mark.parametrize("seed", SEEDS)
def test_sites_converge_to_the_model_of_the_journaled_writes_under_chaos(
    tmp_path: Path, seed: int
) -> None:
    """Cuts, isolations and SIGKILLs during writes: identical states equal to the model, no
    acknowledged write missing or changed, every message applied exactly once."""
    report = chaos(tmp_path, seed=seed, **SHORT)
    assert report.ok, explain(report)
    assert report.acked > 0
    assert report.journaled >= report.acked


@pytest.mark.parametrize(
    "backend", [{}, {"backend": "redis-cluster", "p_redis_kill": 0.3}], ids=["sqlite", "cluster"]
)
def test_a_counter_applied_twice_makes_the_checker_fail_naming_the_counters(
    tmp_path: Path, backend: dict[str, Any]
) -> None:
    """With the failpoint counter_applied_twice in the sites, the checker reports counters that
    differ from the model, and nothing else (all sites agree with each other); on SQLite and
    on Redis Clusters with nodes killed."""
    failpoint = (failpoints.COUNTER_APPLIED_TWICE,)
    report = chaos(tmp_path, seed=1, failpoints=failpoint, **SHORT, **backend)
    assert not report.ok
    assert all(COUNTER_PROBLEM.match(p) for p in report.problems), explain(report)


def test_a_site_that_exits_without_the_checkers_sigkill_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A site process that ends by itself is a crash the checker reports, even though the site
    is restarted afterwards and converges (here its kills are replaced by a clean SIGTERM)."""
    monkeypatch.setattr(LocalCluster, "kill", lambda self, site: self.terminate(site))
    seed = next(s for s in SEEDS if any(f.action == "kill" for f in _plan(s).faults))
    report = chaos(tmp_path, seed=seed, **SHORT)
    exits = [p for p in report.problems if re.match(r"^site \S+ exited by itself with code 0 ", p)]
    assert exits, explain(report)


def _plan(seed: int, options: dict[str, Any] = SHORT) -> ChaosPlan:
    return plan_chaos(ChaosOptions(seed=seed, **options))


def test_a_seed_plans_the_same_run_every_time() -> None:
    """Same seed, same link modes, fault schedule and writes: a failing seed can be re-run."""
    options = {"seed": 7, "duration_s": 30.0}
    first, again = plan_chaos(ChaosOptions(**options)), plan_chaos(ChaosOptions(**options))
    assert first == again
    assert first.faults
    assert first.writes
    assert first != plan_chaos(ChaosOptions(seed=8, duration_s=30.0))


def redis_seed(options: dict[str, Any]) -> int:
    """The first seed whose plan SIGKILLs a redis-server (a cluster node) and starts it again
    before the end, so the run sees a site through a whole outage under load."""
    return next(
        s for s in SEEDS
        if {"redis_kill", "redis_restart"} <= {f.action for f in _plan(s, options).faults}
    )  # fmt: skip


@pytest.mark.parametrize("backend", ["redis", "redis-cluster"])
def test_redis_backend_converges_with_redis_servers_killed(tmp_path: Path, backend: str) -> None:
    """`check --backend redis`: sites on their own redis-servers, which are SIGKILLed and
    started again among the other faults; `--backend redis-cluster`: sites on their own Redis
    Cluster of three masters, one node of which is SIGKILLed and started again. The same
    checks hold (no site exits by itself), and no write refused to its client is
    journaled."""
    options = {**SHORT, "backend": backend, "p_redis_kill": 0.3}
    report = chaos(tmp_path, seed=redis_seed(options), **options)
    assert report.ok, explain(report)
    assert report.redis_kills > 0
    assert report.acked > 0
    if backend == "redis-cluster":
        nodes = sorted(Path(report.data_dir).glob("*-redis/node*/nodes.conf"))
        assert len(nodes) == len(DEFAULT_SITES) * CLUSTER_MASTERS, nodes
