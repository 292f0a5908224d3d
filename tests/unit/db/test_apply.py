"""The DB apply on SQLite: DB handlers committed once with the DB watermark, skipped when the
watermark already holds them, retried with backoff and parked; a batched write that fails is
pinned on its own message; the writer epoch refuses an old writer; a new writer starts from
the watermark in the database."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from multiactive.db.apply import DbApply
from multiactive.db.control import WRITER_TYPE, WriterRole
from multiactive.db.handlers import DbDelivery
from multiactive.db.sqlite import SqliteDatabase
from multiactive.journal import MemoryJournal
from multiactive.model.message import StreamId
from multiactive.model.topology import ReplicationSettings
from multiactive.replication.handlers import HandlerRegistry
from multiactive.replication.processor import Processor
from multiactive.state import MemoryState
from multiactive.testing import FakeClock
from tests.unit.replication.test_processor import feed, msg

SITE = "bj"
GZ0, GZ1 = StreamId("gz", 0), StreamId("gz", 1)
SETTINGS = ReplicationSettings(apply_max_attempts=3, apply_retry_backoff_ms=125.0)
ROWS = "CREATE TABLE IF NOT EXISTS rows (id TEXT PRIMARY KEY, body BLOB, version INTEGER)"


def run(main: Coroutine[Any, Any, None]) -> None:
    asyncio.run(main)


class RowWriter:
    """A DB handler: one row per message, keyed by the payload's first field when given."""

    def __init__(self, fail_seqs: dict[int, int] | None = None) -> None:
        self.calls: list[tuple[int, int]] = []  # (seq, attempt)
        self.fail_seqs = dict(fail_seqs or {})  # seq -> how many attempts fail

    async def __call__(self, delivery: DbDelivery) -> None:
        m = delivery.message
        self.calls.append((m.seq, delivery.attempt))
        if self.fail_seqs.get(m.seq, 0) >= delivery.attempt:
            raise RuntimeError(f"handler fails on seq {m.seq}")
        key = m.payload.decode() or m.id
        await delivery.tx.upsert(
            "rows", {"id": key, "body": m.payload, "version": m.version}, ["id"], "version"
        )


async def opened(
    tmp: Path,
    handler: RowWriter,
    clock: FakeClock,
    mode: str = "independent",
    journal: MemoryJournal | None = None,
) -> tuple[MemoryJournal, DbApply]:
    if journal is None:
        journal = MemoryJournal(SITE)
        await journal.open()
    database = SqliteDatabase(tmp / "db.sqlite", "database.sites.bj.url")
    lookup = {"row.put": handler}.get
    apply = DbApply(SITE, mode, database, lookup, journal, SETTINGS, clock, "bj")  # type: ignore[arg-type]
    await apply.load()
    tx = await database.begin()
    await tx.execute(ROWS)
    await tx.commit()
    return journal, apply


async def table(apply: DbApply, sql: str) -> list[tuple[Any, ...]]:
    tx = await apply.database.begin()
    try:
        return await tx.fetchall(sql)
    finally:
        await tx.rollback()


def test_db_handlers_commit_once_with_the_watermark_and_a_restart_applies_nothing_again(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        clock = FakeClock()
        handler = RowWriter()
        journal, apply = await opened(tmp_path, handler, clock)
        await feed(journal, GZ0, msg("a", "row.put"), msg("b", "kv.set"), msg("c", "row.put"))
        await feed(journal, GZ1, msg("d", "row.put"))
        assert await apply.step()
        assert sorted(await table(apply, "SELECT id FROM rows")) == [("a",), ("c",), ("d",)]
        marks = await table(apply, "SELECT origin, part, seq FROM ma_db_watermarks ORDER BY part")
        assert marks == [("gz", 0, 3), ("gz", 1, 1)]
        assert sorted(seq for seq, _ in handler.calls) == [1, 1, 3]
        await apply.close()
        # A new DB apply over the same journal and database (a restart): nothing to do.
        again = RowWriter()
        _, restarted = await opened(tmp_path, again, clock, journal=journal)
        assert not await restarted.step()
        assert again.calls == []
        assert restarted.watermark(GZ0) == 3

    run(main())


def test_a_step_already_in_the_watermark_is_skipped_inside_the_transaction(
    tmp_path: Path,
) -> None:
    """An applier whose idea of the watermark is stale (0) finds seq 1-2 committed by another:
    the watermark locked in the transaction wins, and only seq 3 is applied."""

    async def main() -> None:
        clock = FakeClock()
        handler = RowWriter()
        journal, apply = await opened(tmp_path, handler, clock)
        await feed(journal, GZ0, *(msg(x, "row.put") for x in "abc"))
        assert await apply.step()
        # Roll the DB back to seq 2 by hand, as if a second applier had stopped there, and let
        # an applier that believes nothing was applied go: it must apply seq 3 only.
        tx = await apply.database.begin()
        await tx.execute("UPDATE ma_db_watermarks SET seq = 2")
        await tx.execute("DELETE FROM rows WHERE id = 'c'")
        await tx.commit()
        await apply.close()
        late = RowWriter()
        _, stale = await opened(tmp_path, late, clock, journal=journal)
        stale._marks = {}  # what a stale applier believes
        stale._reload = False
        assert await stale.step()
        assert [seq for seq, _ in late.calls] == [3]
        assert sorted(await table(stale, "SELECT id FROM rows")) == [("a",), ("b",), ("c",)]

    run(main())


def test_a_failing_handler_backs_off_then_parks_while_other_streams_go_on(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        clock = FakeClock()
        handler = RowWriter(fail_seqs={2: 99})
        journal, apply = await opened(tmp_path, handler, clock)
        await feed(journal, GZ0, *(msg(x, "row.put") for x in "abc"))
        await feed(journal, GZ1, msg("d", "row.put"))
        assert await apply.step()
        assert apply.watermark(GZ0) == 1  # seq 1 committed, seq 2 waits
        assert apply.watermark(GZ1) == 1  # the other stream went on
        assert not await apply.step()  # not before its time
        await clock.advance(0.125)
        await apply.step()
        assert apply.watermark(GZ0) == 1
        await clock.advance(0.25)
        await apply.step()  # third attempt fails: parked, the stream goes on
        assert apply.watermark(GZ0) == 3
        dead = await table(apply, "SELECT seq, attempts, error FROM ma_db_dead_letters")
        assert dead == [(2, 3, "RuntimeError: handler fails on seq 2")]
        assert sorted(await table(apply, "SELECT id FROM rows")) == [("a",), ("c",), ("d",)]
        assert apply.statistics().parked_messages == 1
        summary = apply.summary()  # what /status and `multiactive status` show
        assert (summary.handler_failures, summary.retries, summary.parked_messages) == (3, 2, 1)
        assert summary.applied_messages == 3
        assert summary.transactions >= 2

    run(main())


def test_a_batched_write_that_fails_at_commit_is_pinned_on_its_own_message(
    tmp_path: Path,
) -> None:
    """Writes are sent at commit in one executemany; when it fails, the round is redone one
    write at a time and only the message whose write fails waits."""

    async def main() -> None:
        clock = FakeClock()

        async def insert(delivery: DbDelivery) -> None:
            m = delivery.message
            await delivery.tx.execute(
                "INSERT INTO rows (id, body, version) VALUES (%s, %s, %s)",
                (m.payload.decode(), b"", m.version),
            )

        journal, apply = await opened(tmp_path, RowWriter(), clock)
        apply._handlers = {"row.put": insert}.get
        rows = [msg(x, "row.put", payload=p) for x, p in (("a", b"k1"), ("b", b"k1"), ("c", b"k2"))]
        await feed(journal, GZ0, *rows)
        assert await apply.step()
        assert apply.watermark(GZ0) == 1  # k1 once; the duplicate (seq 2) waits to retry
        assert "UNIQUE constraint failed" in (apply.last_error or "")

    run(main())


def test_a_versioned_upsert_never_overwrites_a_newer_row(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock()
        journal, apply = await opened(tmp_path, RowWriter(), clock)
        await feed(
            journal,
            GZ0,
            msg("a", "row.put", payload=b"k", version=20),
            msg("b", "row.put", payload=b"k", version=10),
        )
        await apply.step()
        assert await table(apply, "SELECT id, version FROM rows") == [("k", 20)]

    run(main())


def test_the_old_writer_is_refused_once_the_fence_moved_and_the_new_one_resumes(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        clock = FakeClock()
        handler = RowWriter()
        journal, apply = await opened(tmp_path, handler, clock, mode="writer")
        await feed(journal, GZ0, msg("a", "row.put"))
        assert await apply.step()
        assert await table(apply, "SELECT writer, epoch FROM ma_db_fence") == [("bj", 1)]
        # The role moves to gz at epoch 2 (what `db failover` writes in the new primary).
        tx = await apply.database.begin()
        await tx.execute("UPDATE ma_db_fence SET writer = 'gz', epoch = 2")
        await tx.commit()
        await feed(journal, GZ0, msg("b", "row.put"))
        assert not await apply.step()
        assert "refused" in (apply.last_error or "")
        assert not apply.statistics().active
        assert apply.summary().fence_refusals == 1
        assert (apply.summary().writer, apply.summary().epoch) == ("gz", 2)
        assert apply.role == WriterRole(2, "gz")
        assert await table(apply, "SELECT id FROM rows") == [("a",)]
        # Back to bj at epoch 3 through the control message: it resumes from the watermark.
        apply.learn_role(WriterRole(3, "bj"))
        assert await apply.step()
        assert sorted(await table(apply, "SELECT id FROM rows")) == [("a",), ("b",)]
        assert await table(apply, "SELECT writer, epoch FROM ma_db_fence") == [("bj", 3)]

    run(main())


def test_the_processor_runs_its_db_apply_and_db_only_types_are_no_dead_letters(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        clock = FakeClock()
        handler = RowWriter()
        journal, apply = await opened(tmp_path, handler, clock, mode="writer")
        registry = HandlerRegistry()
        registry.register_db("row.put", handler)
        registry.register(WRITER_TYPE, apply.on_writer_message)
        state = MemoryState()
        processor = Processor(SITE, journal, state, registry, SETTINGS, clock, apply)
        await processor.load()
        task = asyncio.create_task(processor.run())
        await feed(journal, GZ0, msg("a", "row.put"), msg("b", "row.put"))
        await asyncio.wait_for(apply.wait_caught_up(5.0), 5.0)
        assert await processor.wait_caught_up(5.0)
        assert processor.statistics().parked_messages == 0
        # The control message, applied by the processor, moves the role away from bj.
        payload = WriterRole(2, "gz").encode()
        await feed(journal, GZ1, msg("w", WRITER_TYPE, key="ma:db:writer", payload=payload))
        assert await processor.wait_caught_up(5.0)
        assert apply.role == WriterRole(2, "gz")
        assert not apply.active
        task.cancel()
        await processor.close()

    run(main())
