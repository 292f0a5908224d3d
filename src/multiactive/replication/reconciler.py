"""Message reconciliation (消息对账), exact and cheap: watermarks, not log scans.

Weibo logged every stage of every request to Elasticsearch and scanned those logs every
minute for requests not done everywhere. Here every site already knows, per stream (origin,
partition), the origin's head, its own received head and its applied watermark, so what is
missing where is exact and costs one comparison per stream. Every `reconcile_interval_s`
(default 60 s, the seed's figure) each site's reconciler:

1. finds holes in its journal (seq ranges missing below a head: J1 says there are none; a
   damaged disk or a hand-edited file can make some) and re-fetches them from the origin, or
   from any site that holds them;
2. lists the streams that are behind, with the state of the link that feeds them, and names
   links whose canaries stopped arriving (connected, yet not delivering);
3. re-drives dead letters (messages parked after a handler failed `apply_max_attempts`
   times) with exponential backoff, dropping each once its handler succeeds, and gives up on
   one after `redrive_max_attempts` re-drives (it stays listed for `multiactive replay`).

The last report is kept (admin `/reconcile`, metrics `multiactive_reconcile_*`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from multiactive.errors import MultiactiveError
from multiactive.logs import get_logger
from multiactive.model.batch import RecordBatch
from multiactive.model.clock import wall_ms
from multiactive.model.message import Position, StreamId
from multiactive.state.base import DeadLetter

if TYPE_CHECKING:
    from multiactive.audit import Auditor
    from multiactive.site.node import SiteNode

# (site to ask, stream, first seq, last seq) -> the stored batches covering that range
Fetch = Callable[[str, StreamId, int, int], Awaitable[list[RecordBatch]]]

log = get_logger("reconcile")


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    site: str
    started_ms: int
    duration_ms: float
    streams: int
    holes_found: int
    messages_refetched: int
    behind: tuple[dict[str, Any], ...]  # streams with lag, and the link feeding them
    dead_letters: int
    redriven: int
    redrive_succeeded: int
    given_up: int
    problems: tuple[str, ...]
    run: int = 0  # this run's number since the site started
    redriven_total: int = 0  # re-drives in all runs since the site started

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def figures(self) -> dict[str, float]:
        """The numbers a metrics scrape reports."""
        return {
            "duration_seconds": self.duration_ms / 1000,
            "holes_found": self.holes_found,
            "messages_refetched": self.messages_refetched,
            "streams_behind": len(self.behind),
            "redriven": self.redriven,
            "redrive_succeeded": self.redrive_succeeded,
            "given_up": self.given_up,
            "redriven_total": self.redriven_total,
            "problems": len(self.problems),
            "last_run_timestamp_seconds": self.started_ms / 1000,
        }


@dataclass(slots=True)
class _Redrive:
    attempts: int = 0
    next_s: float = 0.0
    gave_up: bool = False


@dataclass(slots=True)
class _Tally:
    holes: int = 0
    refetched: int = 0
    redriven: int = 0
    succeeded: int = 0
    given_up: int = 0
    problems: list[str] = field(default_factory=list)


class Reconciler:
    def __init__(self, node: SiteNode, fetch: Fetch, auditor: Auditor | None = None) -> None:
        self._node = node
        self._fetch = fetch
        self._auditor = auditor
        self._settings = node.topology.replication
        self._redrives: dict[tuple[str, int, int], _Redrive] = {}
        self._lock = asyncio.Lock()
        self._runs = 0
        self._redriven_total = 0
        self.last: ReconcileReport | None = None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.reconcile_interval_s)
            try:
                await self.reconcile()
            except MultiactiveError as exc:
                log.warning("reconcile_failed", site=self._node.name, reason=exc)

    async def reconcile(self) -> ReconcileReport:
        """One run now (runs do not overlap)."""
        async with self._lock:
            started_ms, started = wall_ms(), time.perf_counter()
            tally = _Tally()
            streams = list(self._node.journal.heads())
            for stream in streams:
                await self._repair(stream, tally)
            behind = await self._behind(tally)
            letters = await self._node.state.dead_letters(limit=100_000)
            await self._redrive(letters, tally)
            self._runs += 1
            self._redriven_total += tally.redriven
            report = ReconcileReport(
                self._node.name, started_ms, round((time.perf_counter() - started) * 1000, 3),
                len(streams), tally.holes, tally.refetched, tuple(behind),
                len(letters) - tally.succeeded, tally.redriven, tally.succeeded, tally.given_up,
                tuple(tally.problems), self._runs, self._redriven_total,
            )  # fmt: skip
            self.last = report
            log.info(
                "reconciled", site=report.site, ms=report.duration_ms, holes=report.holes_found,
                refetched=report.messages_refetched, behind=len(report.behind),
                dead_letters=report.dead_letters, problems=len(report.problems),
            )  # fmt: skip
            return report

    # -- 1. holes ---------------------------------------------------------------------------

    async def _repair(self, stream: StreamId, tally: _Tally) -> None:
        for first, last in await self._node.journal.holes(stream):
            tally.holes += 1
            got = await self._refetch(stream, first, last)
            tally.refetched += got
            if got < last - first + 1:
                tally.problems.append(
                    f"journal hole {stream} seqs {first}..{last}: re-fetched {got} messages, "
                    "no reachable site holds the rest"
                )

    async def _refetch(self, stream: StreamId, first: int, last: int) -> int:
        sources = [stream.origin, *self._node.topology.site_names]
        for source in dict.fromkeys(s for s in sources if s != self._node.name):
            try:
                batches = await self._fetch(source, stream, first, last)
            except MultiactiveError as exc:
                log.info("refetch_failed", site=self._node.name, source=source, reason=exc)
                continue
            wanted = [b for b in batches if first <= b.first_seq and b.last_seq <= last]
            if wanted:
                await self._node.journal.repair(wanted)
                log.info("hole_repaired", site=self._node.name, stream=stream, source=source,
                         first=first, last=last)  # fmt: skip
                return sum(b.count for b in wanted)
        return 0

    # -- 2. lag and links ---------------------------------------------------------------------

    async def _behind(self, tally: _Tally) -> list[dict[str, Any]]:
        behind = []
        monitors = self._node.monitors
        for lag in await self._node.lag():
            if lag.lag_messages <= 0:
                continue
            monitor = monitors.get(f"{lag.origin}->{self._node.name}")
            state = monitor.state if monitor is not None else "local"
            behind.append({**asdict(lag), "link_state": state})
            if state in ("cut", "stalled"):
                tally.problems.append(
                    f"{lag.origin}/{lag.partition}: {lag.lag_messages} messages behind; "
                    f"link {lag.origin}->{self._node.name} is {state}"
                )
        tally.problems += self._node.processor.overdue_canaries(
            self._settings.canary_interval_s, self._node.topology.site_names
        )
        return behind

    # -- 3. dead letters ------------------------------------------------------------------------

    async def _redrive(self, letters: Sequence[DeadLetter], tally: _Tally) -> None:
        now = time.monotonic()
        fixed: list[tuple[str, int, int]] = []
        for letter in letters:
            key = (letter.origin, letter.partition, letter.seq)
            state = self._redrives.setdefault(key, _Redrive())
            if state.gave_up or state.next_s > now:
                continue
            if state.attempts >= self._settings.redrive_max_attempts:
                state.gave_up = True
                tally.given_up += 1
                tally.problems.append(
                    f"dead letter {letter.id} ({letter.type} {letter.key!r}) still fails after "
                    f"{state.attempts} re-drives: {letter.error}; fix the handler, then replay"
                )
                continue
            if await self._redrive_one(letter, state, now):
                fixed.append(key)
            tally.redriven += 1
        if fixed:
            await self._forget(fixed)
            tally.succeeded += len(fixed)

    async def _redrive_one(self, letter: DeadLetter, state: _Redrive, now: float) -> bool:
        state.attempts += 1
        state.next_s = now + self._settings.reconcile_interval_s * 2 ** min(state.attempts, 10)
        message = await self._node.find_message(
            Position(letter.origin, letter.partition, letter.seq)
        )
        if message is None:
            return False
        error = await self._node.processor.reapply(message, letter.attempts + state.attempts)
        return error is None

    async def replay(self, letters: Sequence[DeadLetter]) -> dict[str, Any]:
        """Operator replay (after a handler fix): re-apply these now, whatever their
        re-drive state; drop the ones that succeed."""
        async with self._lock:
            fixed: list[tuple[str, int, int]] = []
            failed: list[dict[str, Any]] = []
            for letter in letters:
                position = Position(letter.origin, letter.partition, letter.seq)
                message = await self._node.find_message(position)
                error = (
                    "message no longer in the journal (trimmed)"
                    if message is None
                    else (await self._node.processor.reapply(message, letter.attempts + 1))
                )
                if error is None:
                    fixed.append(tuple(position))  # type: ignore[arg-type]
                else:
                    failed.append({"id": letter.id, "error": error})
            if fixed:
                await self._forget(fixed)
            return {"replayed": len(letters), "succeeded": len(fixed), "failed": failed}

    async def _forget(self, fixed: list[tuple[str, int, int]]) -> None:
        """Drop dead letters that were applied at last, and note it in the audit trail."""
        await self._node.state.forget_dead_letters(fixed)
        for key in fixed:
            self._redrives.pop(key, None)
            if self._auditor is not None:
                origin, partition, seq = key
                self._auditor.note(origin, partition, seq, seq, "reapplied")
