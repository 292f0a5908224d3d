"""Moving the DB-writer role: a planned switchover, an unplanned failover, a rejoin.

Switchover (the old primary answers):
    1. old primary: read_only = 1            the processors' account cannot write any more
    2. target: MASTER_GTID_WAIT(old primary's gtid_binlog_pos)   (rolled back on timeout)
    3. target: STOP SLAVE; RESET SLAVE ALL; read_only = 0         promoted
    4. target: fence row = (target, epoch + 1)
    5. the control message ma.db.writer (target, epoch + 1), journaled at the target
    6. other replicas, then the old primary: CHANGE MASTER TO target, MASTER_USE_GTID=slave_pos

Failover (the old primary does not answer):
    1. every reachable replica applies what its IO thread had received (MASTER_GTID_WAIT)
    2. the target catches up from the most advanced replica if one is ahead of it
    3-6. as above; the old primary is fenced by the epoch, and made read_only by `rejoin`
The new writer's DB apply resumes from the DB watermark that replicated with the binlog and
applies the rest from its own journal: what the dead primary committed but never shipped is
applied again at the new primary, once (its watermark row did not ship either).

Bad input changes nothing: a target that is not a site, not a replica of the primary, holding
errant GTIDs, or more than `max_lag` transactions behind is refused before step 1.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from multiactive.db.config import DatabaseSettings
from multiactive.db.control import WriterRole
from multiactive.db.rebuild import dump, load
from multiactive.db.replication import (
    Admin,
    ServerState,
    admin_for,
    behind,
    domain_positions,
    errant,
    find_primary,
    gather_states,
)
from multiactive.errors import ConfigError, DatabaseError

DEFAULT_MAX_LAG = 10_000  # transactions a target may be behind and still be chosen
DEFAULT_WAIT_S = 30.0
Announce = Callable[[WriterRole], Awaitable[None]]
Report = Callable[[str], None]


@dataclass
class FailoverResult:
    kind: str  # switchover | failover | rejoin
    target: str
    old_primary: str | None
    epoch: int
    dry_run: bool
    steps: list[tuple[float, str]] = field(default_factory=list)
    read_only_at_s: float | None = None  # monotonic: the old primary stopped taking writes
    promoted_at_s: float | None = None  # monotonic: the target took writes
    errant_gtids: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": self.target,
            "old_primary": self.old_primary,
            "epoch": self.epoch,
            "dry_run": self.dry_run,
            "steps": [{"t_s": round(t, 3), "step": s} for t, s in self.steps],
            "errant_gtids": self.errant_gtids,
        }


class _Steps:
    def __init__(self, result: FailoverResult, report: Report) -> None:
        self.result, self.report, self.start = result, report, time.monotonic()

    def __call__(self, what: str) -> None:
        at = time.monotonic() - self.start
        self.result.steps.append((at, what))
        self.report(f"{at:7.3f} s  {what}")


def _check_target(settings: DatabaseSettings, target: str) -> None:
    if settings.mode != "writer":
        raise ConfigError(f'{settings.source}: database.mode: is not "writer"; nothing to move')
    if target not in settings.sites:
        raise ConfigError(
            f"--to {target}: not a site; {settings.source} defines: {', '.join(settings.sites)}"
        )


def _check_replica(state: ServerState, lead: ServerState | None, max_lag: int) -> None:
    if not state.reachable:
        raise DatabaseError(f"--to {state.site}: its database does not answer: {state.error}")
    if not state.is_replica:
        raise DatabaseError(f"--to {state.site}: its database is not a replica; nothing changed")
    if lead is None:
        return
    # A GTID of the primary's own server id came from it: ahead only because the replica was
    # read after the primary (it kept replicating in between), never errant.
    own = {key: seq for key, seq in state.binlog.items() if key[1] != lead.server_id}
    wrong = errant(own, lead.binlog)
    if wrong:
        raise DatabaseError(
            f"--to {state.site}: its binlog holds errant GTIDs {', '.join(wrong)} that "
            f"{lead.site} lacks; nothing changed"
        )
    lag = behind(lead.binlog, state.current)
    if lag > max_lag:
        raise DatabaseError(
            f"--to {state.site}: {lag} transactions behind {lead.site} (--max-lag {max_lag}); "
            "nothing changed"
        )


def _next_epoch(states: dict[str, ServerState]) -> int:
    return max((s.fence_epoch for s in states.values()), default=0) + 1


async def switchover(
    settings: DatabaseSettings,
    target: str,
    announce: Announce,
    *,
    dry_run: bool = False,
    max_lag: int = DEFAULT_MAX_LAG,
    wait_s: float = DEFAULT_WAIT_S,
    report: Report = lambda line: None,
) -> FailoverResult:
    _check_target(settings, target)
    states = await gather_states(settings)
    primary = find_primary(states)
    if primary is None:
        raise DatabaseError("no primary answers: use `multiactive db failover --to SITE`")
    if primary == target:
        raise DatabaseError(f"--to {target}: it is already the primary; nothing changed")
    _check_replica(states[target], states[primary], max_lag)
    epoch = _next_epoch(states)
    result = FailoverResult("switchover", target, primary, epoch, dry_run)
    step = _Steps(result, report)
    if dry_run:
        for line in _plan(
            primary, target, epoch, [s for s in states if s not in (primary, target)]
        ):
            step(f"would: {line}")
        return result
    async with admin_for(settings, primary) as old, admin_for(settings, target) as new:
        await old.run("SET GLOBAL read_only = 1")
        result.read_only_at_s = time.monotonic()
        step(f"{primary}: read_only = 1")
        position = await old.value("@@gtid_binlog_pos")
        done = await new.value("MASTER_GTID_WAIT(%s, %s)", (position, wait_s))
        if done != 0:
            await old.run("SET GLOBAL read_only = 0")
            step(f"{primary}: read_only = 0 (rolled back)")
            raise DatabaseError(
                f"--to {target}: did not reach {position} within {wait_s} s; switchover "
                f"rolled back ({primary} writable again)"
            )
        step(f"{target}: reached {position}")
        await _promote(new, target, epoch, result, step)
        await announce(WriterRole(epoch, target))
        step(f"control message ma.db.writer ({target}, epoch {epoch}) journaled at {target}")
        await _repoint_others(settings, states, target, primary, step)
        await _make_replica(settings, old, target, step)
    return result


async def failover(
    settings: DatabaseSettings,
    target: str,
    announce: Announce,
    *,
    dry_run: bool = False,
    max_lag: int = DEFAULT_MAX_LAG,
    wait_s: float = DEFAULT_WAIT_S,
    report: Report = lambda line: None,
) -> FailoverResult:
    _check_target(settings, target)
    states = await gather_states(settings)
    primary = find_primary(states)
    if primary is not None:
        raise DatabaseError(
            f"the primary {primary} answers: use `multiactive db switchover --to {target}`"
        )
    _check_replica(states[target], None, max_lag)
    old = max(
        ((s.fence_epoch, s.fence_writer) for s in states.values() if s.fence_writer),
        default=(0, settings.writer),
    )[1]
    epoch = _next_epoch(states)
    result = FailoverResult("failover", target, old, epoch, dry_run)
    step = _Steps(result, report)
    replicas = [s for s, st in states.items() if st.reachable and st.is_replica]
    if dry_run:
        for line in _plan(old or "?", target, epoch, [r for r in replicas if r != target]):
            step(f"would: {line}")
        return result
    for site in replicas:
        await _drain_relay_log(settings, states[site], wait_s, step)
    states = await gather_states(settings)
    await _catch_up(settings, states, target, replicas, max_lag, wait_s, step)
    async with admin_for(settings, target) as new:
        await _promote(new, target, epoch, result, step)
    await announce(WriterRole(epoch, target))
    step(f"control message ma.db.writer ({target}, epoch {epoch}) journaled at {target}")
    await _repoint_others(settings, states, target, old, step)
    step(f"{old}: fenced by epoch {epoch}; run `multiactive db rejoin {old}` when it is back")
    return result


async def rejoin(
    settings: DatabaseSettings,
    site: str,
    *,
    rebuild: bool = False,
    report: Report = lambda line: None,
) -> FailoverResult:
    """Bring an old primary back: read_only first, then a replica of the current primary.
    With errant GTIDs (transactions it committed that the new primary never received) it
    stays read_only and out of replication, unless `rebuild`: then its database is replaced
    by a dump of the primary's (`multiactive.db.rebuild`) and it replicates from there."""
    _check_target(settings, site)
    states = await gather_states(settings)
    primary = find_primary({s: st for s, st in states.items() if s != site})
    if primary is None:
        raise DatabaseError("no primary answers to rejoin")
    result = FailoverResult("rejoin", site, primary, states[primary].fence_epoch, False)
    step = _Steps(result, report)
    async with admin_for(settings, site) as old:
        await old.run("SET GLOBAL read_only = 1")
        step(f"{site}: read_only = 1")
        result.errant_gtids = errant((await old.state()).binlog, states[primary].binlog)
        if result.errant_gtids:
            step(
                f"{site}: errant GTIDs {', '.join(result.errant_gtids)} (committed here, never "
                f"shipped; {primary} applied those messages again from its journal)"
            )
            if not rebuild:
                step(f"{site}: stays read_only; run `multiactive db rejoin {site} --rebuild`")
                return result
            await _rebuild(settings, old, primary, step)
            return result
        await _make_replica(settings, old, primary, step)
    return result


async def _rebuild(settings: DatabaseSettings, old: Admin, primary: str, step: _Steps) -> None:
    await old.run("STOP SLAVE")
    await old.run("RESET SLAVE ALL")
    text, position = await dump(settings.admin_url(primary))
    step(f"{primary}: dumped its database at {position}")
    await load(old.url, old.url.database, text)
    await old.run("RESET MASTER")
    await old.run("SET GLOBAL gtid_slave_pos = %s", (position,))
    step(f"{old.site}: database replaced, binlog reset, gtid_slave_pos = {position}")
    await _change_master(settings, old, primary)
    step(f"{old.site}: replicates from {primary} (read_only = 1)")


def _plan(primary: str, target: str, epoch: int, others: list[str]) -> list[str]:
    return [
        f"{primary}: read_only = 1",
        f"{target}: MASTER_GTID_WAIT until it has everything",
        f"{target}: STOP SLAVE; RESET SLAVE ALL; read_only = 0",
        f"{target}: fence = ({target}, epoch {epoch})",
        f"journal ma.db.writer ({target}, epoch {epoch}) at {target}",
        *(f"{o}: CHANGE MASTER TO {target} (MASTER_USE_GTID = slave_pos)" for o in others),
        f"{primary}: CHANGE MASTER TO {target}, read_only stays 1",
    ]


async def _promote(
    new: Admin, target: str, epoch: int, result: FailoverResult, step: _Steps
) -> None:
    await new.run("STOP SLAVE")
    await new.run("RESET SLAVE ALL")
    await new.run("SET GLOBAL read_only = 0")
    result.promoted_at_s = time.monotonic()
    step(f"{target}: promoted (replication reset, read_only = 0)")
    await new.run(
        "INSERT INTO ma_db_fence (id, writer, epoch, changed_ms) VALUES (1, %s, %s, %s) "
        "ON DUPLICATE KEY UPDATE writer = VALUES(writer), epoch = VALUES(epoch), "
        "changed_ms = VALUES(changed_ms)",
        (target, epoch, int(time.time() * 1000)),
    )
    step(f"{target}: fence = ({target}, epoch {epoch})")


async def _change_master(settings: DatabaseSettings, replica: Admin, primary: str) -> None:
    url = settings.site(primary).url
    await replica.run("STOP SLAVE")
    await replica.run(
        "CHANGE MASTER TO MASTER_HOST = %s, MASTER_PORT = %s, MASTER_USER = %s, "
        "MASTER_PASSWORD = %s, MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1",
        (url.host, url.port, settings.replication_user, settings.replication_password),
    )
    await replica.run("START SLAVE")


async def _repoint_others(
    settings: DatabaseSettings,
    states: dict[str, ServerState],
    target: str,
    old: str | None,
    step: _Steps,
) -> None:
    for site, state in states.items():
        if site in (target, old) or not state.reachable:
            continue
        async with admin_for(settings, site) as replica:
            await _change_master(settings, replica, target)
        step(f"{site}: replicates from {target}")


async def _make_replica(settings: DatabaseSettings, old: Admin, primary: str, step: _Steps) -> None:
    await old.run("SET GLOBAL gtid_slave_pos = @@gtid_binlog_pos")
    await _change_master(settings, old, primary)
    step(f"{old.site}: replicates from {primary} (read_only = 1)")


async def _drain_relay_log(
    settings: DatabaseSettings, state: ServerState, wait_s: float, step: _Steps
) -> None:
    """Let a replica's SQL thread apply everything its IO thread received."""
    async with admin_for(settings, state.site) as replica:
        received = (await replica.state()).gtid_io_pos
        if received:
            await replica.value("MASTER_GTID_WAIT(%s, %s)", (received, wait_s))
        await replica.run("STOP SLAVE IO_THREAD")
    step(f"{state.site}: applied its relay log through {received or 'nothing'}")


async def _catch_up(
    settings: DatabaseSettings,
    states: dict[str, ServerState],
    target: str,
    replicas: list[str],
    max_lag: int,
    wait_s: float,
    step: _Steps,
) -> None:
    """When another replica got further than the target, the target copies the difference
    from it first (so nothing the old primary shipped anywhere is lost)."""
    ahead = max(replicas, key=lambda s: sum(domain_positions(states[s].current).values()))
    missing = behind(states[ahead].current, states[target].current)
    if ahead == target or missing == 0:
        step(f"{target}: the most advanced replica")
        return
    if missing > max_lag:
        raise DatabaseError(
            f"--to {target}: {missing} transactions behind {ahead} (--max-lag {max_lag})"
        )
    async with admin_for(settings, target) as new:
        await _change_master(settings, new, ahead)
        position = states[ahead].gtid_current_pos
        if await new.value("MASTER_GTID_WAIT(%s, %s)", (position, wait_s)) != 0:
            raise DatabaseError(f"--to {target}: did not catch up with {ahead} in {wait_s} s")
    step(f"{target}: caught up {missing} transactions from {ahead}")
