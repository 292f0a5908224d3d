"""Audit stores: range records of where writes went; the same tests on every store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from multiactive.audit import Auditor, AuditRecord, AuditStore, MemoryAuditStore, SqliteAuditStore
from multiactive.audit.postgres import PostgresAuditStore
from multiactive.errors import ConfigError
from multiactive.local.postgres import PostgresServer


def run(main: Coroutine[Any, Any, None]) -> None:
    asyncio.run(main)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@asynccontextmanager
async def opened(kind: str, tmp_path: Path, postgres: PostgresServer) -> AsyncIterator[AuditStore]:
    store: AuditStore
    if kind == "memory":
        store = MemoryAuditStore()
    elif kind == "sqlite":
        store = SqliteAuditStore(tmp_path / "audit.sqlite3")
    else:
        store = PostgresAuditStore(postgres.dsn)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def test_records_covering_a_seq_come_back_oldest_first(
    kind: str, tmp_path: Path, postgres: PostgresServer, request: pytest.FixtureRequest
) -> None:
    """A record stands for a range of seqs; `covering` finds every site's records whose range
    holds a seq, in time order, and none of other streams or ranges."""
    origin = f"o-{request.node.name[-12:]}"  # the PostgreSQL table is shared by the tests

    async def main() -> None:
        async with opened(kind, tmp_path, postgres) as store:
            await store.write(
                [
                    AuditRecord("b", origin, 0, 1, 10, "received", 30),
                    AuditRecord("a", origin, 0, 1, 10, "accepted", 10),
                    AuditRecord("a", origin, 0, 11, 20, "accepted", 20),
                    AuditRecord("b", origin, 1, 1, 10, "received", 30),
                    AuditRecord("b", origin, 0, 5, 5, "parked", 40, "boom"),
                ]
            )
            found = await store.covering(origin, 0, 5)
            assert [(r.site, r.stage, r.at_ms, r.detail) for r in found] == [
                ("a", "accepted", 10, ""),
                ("b", "received", 30, ""),
                ("b", "parked", 40, "boom"),
            ]
            assert [r.first_seq for r in await store.covering(origin, 0, 15)] == [11]
            assert await store.covering(origin, 2, 5) == []

    run(main())


def test_auditor_writes_in_background_batches() -> None:
    """Notes are queued without waiting and written together by the auditor's loop."""

    class Watched(MemoryAuditStore):
        def __init__(self) -> None:
            super().__init__()
            self.writes = 0
            self.wrote = asyncio.Event()

        async def write(self, records: Any) -> None:
            await super().write(records)
            self.writes += 1
            self.wrote.set()

    async def main() -> None:
        store = Watched()
        auditor = Auditor("a", store)
        task = asyncio.create_task(auditor.run())
        for seq in range(1, 101):
            auditor.note("a", 0, seq, seq, "applied")
        assert store.records == []  # nothing written on the caller's path
        await asyncio.wait_for(store.wrote.wait(), 5)
        task.cancel()
        assert len(store.records) == 100
        assert store.writes == 1
        assert auditor.written == 100

    run(main())


def test_auditor_drops_and_counts_when_the_store_fails() -> None:
    """A failing store never raises into the write path: records are dropped and counted."""

    class Broken(MemoryAuditStore):
        async def write(self, records: Any) -> None:
            raise OSError("disk full")

    async def main() -> None:
        auditor = Auditor("a", Broken())
        auditor.note("a", 0, 1, 1, "accepted")
        await auditor.flush()
        assert auditor.dropped == 1

    run(main())


def test_unreachable_postgresql_names_the_setting_without_the_password() -> None:
    """A DSN that cannot connect is a ConfigError naming [audit] dsn, password hidden."""

    async def main() -> None:
        store = PostgresAuditStore("postgresql://u:secret@127.0.0.1:1/x")
        with pytest.raises(ConfigError, match=r"\[audit\] dsn") as caught:
            await store.open()
        assert "secret" not in str(caught.value)

    run(main())
