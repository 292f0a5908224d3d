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
from dataclasses import dataclass, field

from multiactive.audit import Auditor
from multiactive.clock import SYSTEM_CLOCK, Clock
from multiactive.errors import MultiactiveError
from multiactive.journal.base import Journal
from multiactive.logs import get_logger
from multiactive.model.batch import RecordBatch
from multiactive.model.message import Position, StreamId
from multiactive.model.topology import ReplicationSettings
from multiactive.records import ReconcileReport, ReplayFailure, ReplayResult
from multiactive.replication.inspector import SiteInspector
from multiactive.replication.processor import ProcessorView
from multiactive.replication.reconcile_plan import (
    LetterKey,
    RedriveHistory,
    letter_key,
    plan_redrives,
    redriven,
    refetch_sources,
    streams_behind,
)
from multiactive.state.base import DeadLetter, StateBackend

# (site to ask, stream, first seq, last seq) -> the stored batches covering that range
Fetch = Callable[[str, StreamId, int, int], Awaitable[list[RecordBatch]]]

log = get_logger("reconcile")


@dataclass(slots=True)
class _Tally:
    holes: int = 0
    refetched: int = 0
    redriven: int = 0
    succeeded: int = 0
    given_up: int = 0
    problems: list[str] = field(default_factory=list)


class Reconciler:
    def __init__(
        self,
        site: str,
        sites: Sequence[str],
        settings: ReplicationSettings,
        journal: Journal,
        state: StateBackend,
        processor: ProcessorView,
        inspector: SiteInspector,
        fetch: Fetch,
        auditor: Auditor | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._site = site
        self._sites = tuple(sites)
        self._settings = settings
        self._journal = journal
        self._state = state
        self._processor = processor
        self._inspector = inspector
        self._fetch = fetch
        self._auditor = auditor
        self._clock = clock
        self._redrives: dict[LetterKey, RedriveHistory] = {}
        self._lock = asyncio.Lock()
        self._runs = 0
        self._redriven_total = 0
        self.last: ReconcileReport | None = None

    async def run(self) -> None:
        while True:
            await self._clock.sleep(self._settings.reconcile_interval_s)
            try:
                await self.reconcile()
            except MultiactiveError as exc:
                log.warning("reconcile_failed", site=self._site, reason=exc)

    async def reconcile(self) -> ReconcileReport:
        """One run now (runs do not overlap)."""
        async with self._lock:
            started_ms, started = self._clock.wall_ms(), time.perf_counter()
            tally = _Tally()
            streams = list(self._journal.heads())
            for stream in streams:
                await self._repair(stream, tally)
            behind, problems = streams_behind(
                self._site, await self._inspector.lag(), self._link_state
            )
            tally.problems += problems
            tally.problems += self._processor.overdue_canaries(
                self._settings.canary_interval_s, self._sites
            )
            letters = await self._state.dead_letters(limit=100_000)
            await self._redrive(letters, tally)
            self._runs += 1
            self._redriven_total += tally.redriven
            report = ReconcileReport(
                self._site, started_ms, round((time.perf_counter() - started) * 1000, 3),
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

    def _link_state(self, origin: str) -> str | None:
        monitor = self._inspector.link_into_here(origin)
        return None if monitor is None else monitor.state

    # -- 1. holes ---------------------------------------------------------------------------

    async def _repair(self, stream: StreamId, tally: _Tally) -> None:
        for first, last in await self._journal.holes(stream):
            tally.holes += 1
            got = await self._refetch(stream, first, last)
            tally.refetched += got
            if got < last - first + 1:
                tally.problems.append(
                    f"journal hole {stream} seqs {first}..{last}: re-fetched {got} messages, "
                    "no reachable site holds the rest"
                )

    async def _refetch(self, stream: StreamId, first: int, last: int) -> int:
        for source in refetch_sources(stream, self._sites, self._site):
            try:
                batches = await self._fetch(source, stream, first, last)
            except MultiactiveError as exc:
                log.info("refetch_failed", site=self._site, source=source, reason=exc)
                continue
            wanted = [b for b in batches if first <= b.first_seq and b.last_seq <= last]
            if wanted:
                await self._journal.repair(wanted)
                log.info("hole_repaired", site=self._site, stream=stream, source=source,
                         first=first, last=last)  # fmt: skip
                return sum(b.count for b in wanted)
        return 0

    # -- 3. dead letters ------------------------------------------------------------------------

    async def _redrive(self, letters: Sequence[DeadLetter], tally: _Tally) -> None:
        now = self._clock.monotonic()
        plan = plan_redrives(letters, self._redrives, now, self._settings.redrive_max_attempts)
        tally.given_up += len(plan.given_up)
        tally.problems += plan.problems
        fixed: list[LetterKey] = []
        for letter in plan.due:
            state = self._redrives[letter_key(letter)]
            redriven(state, now, self._settings.reconcile_interval_s)
            if await self._apply_again(letter, letter.attempts + state.attempts) is None:
                fixed.append(letter_key(letter))
            tally.redriven += 1
        if fixed:
            await self._forget(fixed)
            tally.succeeded += len(fixed)

    async def _apply_again(self, letter: DeadLetter, attempt: int) -> str | None:
        """Re-apply a parked message; None when it succeeded, else why not."""
        message = await self._journal.find_message(
            Position(letter.origin, letter.partition, letter.seq)
        )
        if message is None:
            return "message no longer in the journal (trimmed)"
        return await self._processor.reapply(message, attempt)

    async def replay(self, letters: Sequence[DeadLetter]) -> ReplayResult:
        """Operator replay (after a handler fix): re-apply these now, whatever their
        re-drive state; drop the ones that succeed."""
        async with self._lock:
            fixed: list[LetterKey] = []
            failed: list[ReplayFailure] = []
            for letter in letters:
                error = await self._apply_again(letter, letter.attempts + 1)
                if error is None:
                    fixed.append(letter_key(letter))
                else:
                    failed.append(ReplayFailure(letter.id, error))
            if fixed:
                await self._forget(fixed)
            return ReplayResult(len(letters), len(fixed), tuple(failed))

    async def _forget(self, fixed: list[LetterKey]) -> None:
        """Drop dead letters that were applied at last, and note it in the audit trail."""
        await self._state.forget_dead_letters(fixed)
        for key in fixed:
            self._redrives.pop(key, None)
            if self._auditor is not None:
                origin, partition, seq = key
                self._auditor.note(origin, partition, seq, seq, "reapplied")
