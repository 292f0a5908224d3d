"""Automatic failover, off by default: `multiactive db watch` (add `--auto` to act).

Holistic detection, as Orchestrator does it: the primary is dead only when this watcher cannot
reach it *and* every reachable replica's IO thread has lost it too (a watcher cut off from the
primary alone decides nothing). The state must hold for `detect_s` (the detection period);
then the most advanced replica is promoted with `failover`. After a failover, another one is
blocked for `block_s` (anti-flap): a cluster that fails over twice in a row needs a human.
Every decision that differs from the one before is logged (`db_watch` events, WARNING for
anything but healthy) and handed to `report` and `record` as a `Decision` record; `multiactive db
watch` posts each to every site's admin API (`POST /db/decisions`), where a `DecisionLog`
(`multiactive.db.decisions`) keeps the last DECISION_HISTORY of them for `GET /db/decisions`,
`/status` and the dashboard.

The rules are the pure `Detector.observe`, driven by a `Clock`, so tests move time instead of
waiting for it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace

from multiactive.clock import Clock
from multiactive.db.config import DatabaseSettings
from multiactive.db.decisions import Decision
from multiactive.db.failover import Announce, FailoverResult, failover
from multiactive.db.replication import ServerState, domain_positions, find_primary, gather_states
from multiactive.logs import get_logger

log = get_logger("db")

DEFAULT_PERIOD_S = 1.0
DEFAULT_DETECT_S = 3.0
DEFAULT_BLOCK_S = 3600.0


class Detector:
    def __init__(self, detect_s: float = DEFAULT_DETECT_S, block_s: float = DEFAULT_BLOCK_S):
        self.detect_s, self.block_s = detect_s, block_s
        self._down_since: float | None = None
        self._last_failover: float | None = None

    def observe(self, states: Mapping[str, ServerState], now: float) -> Decision:
        """One look at every server; what to do now."""
        if find_primary(states) is not None:
            self._down_since = None
            return Decision("healthy", "the primary answers")
        replicas = [s for s in states.values() if s.reachable and s.is_replica]
        still_connected = [s.site for s in replicas if s.io_running == "Yes"]
        if still_connected:
            self._down_since = None
            return Decision(
                "healthy",
                f"no primary answers here, but {', '.join(still_connected)} still replicate "
                "from it: not dead (a partition between it and this watcher)",
            )
        if not replicas:
            return Decision("no_candidate", "no replica answers")
        if self._down_since is None:
            self._down_since = now
        down = now - self._down_since
        if down < self.detect_s:
            return Decision("suspect", "the primary is lost by everyone", down_for_s=down)
        if self._last_failover is not None and now - self._last_failover < self.block_s:
            left = self.block_s - (now - self._last_failover)
            return Decision(
                "blocked", f"a failover ran {now - self._last_failover:.0f} s ago; anti-flap "
                f"blocks another for {left:.0f} s more", down_for_s=down,
            )  # fmt: skip
        target = max(replicas, key=lambda s: sum(domain_positions(s.current).values())).site
        return Decision("fail_over", "the primary is lost by everyone", target, down)

    def failed_over(self, now: float) -> None:
        self._last_failover = now
        self._down_since = None


async def watch(
    settings: DatabaseSettings,
    announce: Announce,
    detector: Detector,
    clock: Clock,
    *,
    period_s: float = DEFAULT_PERIOD_S,
    act: bool = False,
    report: Callable[[Decision], None] = lambda decision: None,
    rounds: int | None = None,
    stop_after_failover: bool = False,
    record: Callable[[Decision], Awaitable[None]] | None = None,
    watcher: str = "",
    look: Callable[[], Awaitable[Mapping[str, ServerState]]] | None = None,
) -> FailoverResult | None:
    """Look every `period_s`; log, report and `record` each decision that differs from the
    one before (stamped with the time and `watcher`); with `act`, run the failover a
    `fail_over` decision names. `rounds`: stop after so many; `stop_after_failover`: return
    the first failover's result (benchmarks). `look`: every server's state (default: asked of
    the servers, `gather_states`)."""
    last: Decision | None = None
    done = 0

    async def tell(decision: Decision) -> None:
        decision = replace(decision, at_ms=clock.wall_ms(), watcher=watcher, acting=act)
        level = log.info if decision.action == "healthy" else log.warning
        level("db_watch", action=decision.action, reason=decision.reason, acting=act,
              target=decision.target, down_for_s=round(decision.down_for_s, 3))  # fmt: skip
        report(decision)
        if record is not None:
            await record(decision)

    while rounds is None or done < rounds:
        states = await (gather_states(settings) if look is None else look())
        decision = detector.observe(states, clock.monotonic())
        if last is None or (decision.action, decision.target) != (last.action, last.target):
            await tell(decision)
        last = decision
        if decision.action == "fail_over" and decision.target is not None and act:
            result = await failover(settings, decision.target, announce)
            detector.failed_over(clock.monotonic())
            await tell(Decision("failed_over", f"{decision.target} is the primary",
                                decision.target, decision.down_for_s))  # fmt: skip
            if stop_after_failover:
                return result
        done += 1
        await clock.sleep(period_s)
    return None
