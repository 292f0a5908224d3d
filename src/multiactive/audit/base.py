"""The audit store: per-stage records of where writes went, and when (the seed's Elasticsearch
log, made cheap).

Weibo logged one record per request per stage per site. Here a record covers a *range* of
seqs of one stream, because that is what each stage handles at once: a site accepts a batch,
receives a batch, applies a run of messages. So a record costs one row per batch and stage,
not one per message, and `trace` still answers "when was this write received and applied
at each site" for any request id: the origin's id index gives its position, and the records
whose range covers that position give the times.

Stages: `accepted` (journaled at its origin), `received` (journaled at a receiver), `applied`
(committed with the watermark), `parked` (dead letter; detail holds the error), `reapplied`
(a dead letter re-driven or replayed successfully).

Records are written in the background in batches (`Auditor`): the audit store is never on
the write path, and if it falls behind by more than `MAX_QUEUED` records new ones are dropped
and counted rather than slowing replication.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from multiactive.logs import get_logger

Stage = Literal["accepted", "received", "applied", "parked", "reapplied"]
STAGES: tuple[Stage, ...] = ("accepted", "received", "applied", "parked", "reapplied")
MAX_QUEUED = 100_000
FLUSH_INTERVAL_S = 0.2

log = get_logger("audit")


@dataclass(frozen=True, slots=True)
class AuditRecord:
    site: str
    origin: str
    partition: int
    first_seq: int
    last_seq: int
    stage: Stage
    at_ms: int
    detail: str = ""


class AuditStore(abc.ABC):
    """Where audit records live; one per site (SQLite) or shared by all sites (PostgreSQL)."""

    name = "abstract"

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def write(self, records: Sequence[AuditRecord]) -> None:
        """Store records (one round trip for all of them)."""

    @abc.abstractmethod
    async def covering(self, origin: str, partition: int, seq: int) -> list[AuditRecord]:
        """Every record, of every site, whose range holds this seq, oldest first."""


class Auditor:
    """Collects records from the write path without waiting, and writes them in batches."""

    def __init__(self, site: str, store: AuditStore) -> None:
        self.site = site
        self.store = store
        self._queue: list[AuditRecord] = []
        self._wake = asyncio.Event()
        self.dropped = 0
        self.written = 0

    def note(
        self, origin: str, partition: int, first: int, last: int, stage: Stage, detail: str = ""
    ) -> None:
        if len(self._queue) >= MAX_QUEUED:
            self.dropped += 1
            return
        now_ms = time.time_ns() // 1_000_000
        self._queue.append(
            AuditRecord(self.site, origin, partition, first, last, stage, now_ms, detail)
        )
        if len(self._queue) == 1:
            self._wake.set()

    async def run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                await asyncio.sleep(FLUSH_INTERVAL_S)
                self._wake.clear()
                await self.flush()
        finally:
            await asyncio.shield(self.flush())

    async def flush(self) -> None:
        records, self._queue = self._queue, []
        if not records:
            return
        try:
            await self.store.write(records)
            self.written += len(records)
        except Exception as exc:  # the audit trail must never stop replication
            self.dropped += len(records)
            log.warning("audit_write_failed", site=self.site, records=len(records), reason=exc)
