"""In-memory audit store: the twin for unit tests."""

from __future__ import annotations

from collections.abc import Sequence

from multiactive.audit.base import AuditRecord, AuditStore


class MemoryAuditStore(AuditStore):
    name = "memory"

    def __init__(self) -> None:
        self.records: list[AuditRecord] = []

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def write(self, records: Sequence[AuditRecord]) -> None:
        self.records.extend(records)

    async def covering(self, origin: str, partition: int, seq: int) -> list[AuditRecord]:
        found = [
            r
            for r in self.records
            if (r.origin, r.partition) == (origin, partition) and r.first_seq <= seq <= r.last_seq
        ]
        return sorted(found, key=lambda r: r.at_ms)
