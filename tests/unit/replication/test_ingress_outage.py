"""Ingress while the journal's storage fails: unknown is not refused, a refusal means nothing
was journaled, new drafts are refused "unavailable" until the journal answers again."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from multiactive.errors import RejectedError, StoreError, StoreOutcomeUnknown
from multiactive.journal import Accepted, LocalGroup, MemoryJournal
from multiactive.model.clock import HybridClock
from multiactive.model.topology import Limits
from multiactive.replication.ingress import Ingress
from multiactive.testing import FakeClock
from multiactive.wire.protocol import RESULT_OK, RESULT_REFUSED, RESULT_UNKNOWN

SITE = "bj"


class FlakyJournal(MemoryJournal):
    """Appends and checks fail with `error` while it is set; appends may store first (what a
    Redis pipeline cut mid-way does)."""

    def __init__(self) -> None:
        super().__init__(SITE)
        self.error: Exception | None = None
        self.store_then_fail = False
        self.checks = 0

    async def append_local(self, groups: Sequence[LocalGroup]) -> list[Accepted]:
        if self.error is None:
            return await super().append_local(groups)
        if self.store_then_fail:
            await super().append_local(groups)
        raise self.error

    async def check(self) -> None:
        self.checks += 1
        if self.error is not None:
            raise self.error


def draft(id_: str, key: str = "k") -> list[Any]:
    return [id_, "kv.set", key, {}, b"v"]


async def started(journal: FlakyJournal, clock: FakeClock) -> tuple[Ingress, asyncio.Task[None]]:
    await journal.open()
    ingress = Ingress(SITE, journal, HybridClock(), 8, Limits(), clock)
    return ingress, asyncio.create_task(ingress.run())


def test_lost_answer_is_unknown_then_retry_finds_the_first_position() -> None:
    """A store that may have happened answers [2, "store_unknown", ...]; the same id published
    once the journal is back is a duplicate at its first position: journaled once."""

    async def main() -> None:
        journal, clock = FlakyJournal(), FakeClock()
        ingress, task = await started(journal, clock)
        journal.error = StoreOutcomeUnknown("Connection closed by server")
        journal.store_then_fail = True
        (first,) = await ingress.submit([draft("id-1")])
        assert first[:2] == [RESULT_UNKNOWN, "store_unknown"], first
        assert "Connection closed" in first[2]
        assert ingress.statistics().unknown == 1
        journal.error = None
        await clock.advance(5.0)
        (again,) = await ingress.submit([draft("id-1")])
        assert again[0] == RESULT_OK
        assert again[3] is True  # a duplicate: the first position
        assert journal.statistics().messages_appended == 1
        task.cancel()

    asyncio.run(main())


def test_failure_before_storing_refuses_and_new_drafts_are_refused_until_check_answers() -> None:
    """A StoreError that stored nothing is a refusal; while the journal is down, submit()
    refuses at once with code "unavailable" (nothing queued), and the flusher tries
    journal.check() with backoff; once it answers, drafts are journaled again. It never
    raises out of run()."""

    async def main() -> None:
        journal, clock = FlakyJournal(), FakeClock()
        ingress, task = await started(journal, clock)
        journal.error = StoreError("cannot connect to Redis")
        (refused,) = await ingress.submit([draft("a")])
        assert refused[:2] == [RESULT_REFUSED, "unavailable"]
        await clock.settle()
        assert ingress.unavailable
        with pytest.raises(RejectedError, match="cannot journal now") as refusal:
            ingress.submit([draft("b")])
        assert refusal.value.code == "unavailable"
        await clock.advance(10.0)
        assert journal.checks >= 3  # tried again and again, with backoff
        assert not task.done()
        journal.error = None
        await clock.advance(5.0)
        assert not ingress.unavailable
        (ok,) = await ingress.submit([draft("c")])
        assert ok[0] == RESULT_OK
        assert journal.statistics().messages_appended == 1  # only "c": nothing refused stored
        task.cancel()

    asyncio.run(main())
