"""The DB apply: runs DB handlers exactly once, committed with the DB watermark.

The DB has its own cursor per stream (origin, partition): the DB watermark, a row of
`ma_db_watermarks` in the database itself. It is independent of the cache's watermark: the
database may be down or read-only (a failover in progress) while caches go on, and a site that
becomes the writer starts from the watermark that replicated with the binlog, reading the rest
from its own journal. A round:

    BEGIN
      SELECT writer, epoch FROM ma_db_fence ... FOR UPDATE     writer mode: the epoch check
      SELECT origin, part, seq FROM ma_db_watermarks FOR UPDATE
      for each message after its stream's watermark: its DB handler's writes
      upsert the watermark rows; dead letters of messages that kept failing
    COMMIT

A message at or below the watermark read in the transaction is skipped, so two appliers (a
restart, an old writer) can never apply a step twice. Failures:
- a handler raises: the round is rolled back and redone without that stream's tail; the
  stream waits with exponential backoff (`apply_retry_backoff_ms`), and after
  `apply_max_attempts` the message is parked in `ma_db_dead_letters` and the stream goes on;
- the database is unreachable or read-only (transient): the round waits and is redone, with
  nothing counted against the messages;
- the fence names another writer or a higher epoch: this site stops writing (FencedError).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from multiactive.aio import Pulse
from multiactive.clock import Clock
from multiactive.db.base import FENCE_ROW, Database, DbTransaction
from multiactive.db.config import DbMode
from multiactive.db.control import WriterRole, decode_writer
from multiactive.db.handlers import DbDelivery, DbHandler
from multiactive.errors import DatabaseError, FencedError
from multiactive.journal.base import Journal
from multiactive.logs import get_logger
from multiactive.model.message import Message, StreamId, message_from_row
from multiactive.model.record import Record
from multiactive.model.topology import ReplicationSettings

ROUND_BYTES = 8 * 1024 * 1024  # journal bytes one DB round reads, across streams
READ_BYTES = 4 * 1024 * 1024  # from one stream
UNAVAILABLE_BACKOFF_MIN_S = 0.05
UNAVAILABLE_BACKOFF_MAX_S = 1.0
HOLE_RECHECK_S = 1.0
# A site that is not the writer reads the fence in its own database this often: the fence a
# failover writes into the promoted replica starts its DB apply without waiting for the
# control message to come through its processor (which may be busy with a backlog).
FENCE_POLL_S = 0.05

log = get_logger("db")

HandlerLookup = Callable[[str], DbHandler | None]
Work = dict[StreamId, list[tuple[int, Sequence[Any]]]]


@dataclass(frozen=True, slots=True)
class DbApplyStatistics:
    mode: str
    active: bool  # this site runs DB handlers now
    writer: str | None
    epoch: int
    applied_messages: int
    parked_messages: int
    handler_failures: int
    transactions: int
    watermarks: dict[StreamId, int]
    last_error: str | None
    retries: int = 0  # handler attempts to be retried, and transactions retried after the
    # database was unavailable
    fence_refusals: int = 0  # transactions refused by the fence (an older epoch)


@dataclass(frozen=True, slots=True)
class DbApplySummary(Record):
    """The DB apply's figures in `/status` (field `db`) and `multiactive status`."""

    mode: str
    active: bool  # this site runs DB handlers now (the writer, or any site independent)
    writer: str | None
    epoch: int
    applied_messages: int
    transactions: int
    retries: int
    parked_messages: int
    handler_failures: int
    fence_refusals: int
    last_error: str | None


@dataclass(slots=True)
class _Failing:
    attempts: int
    error: str


@dataclass(slots=True)
class _Outcome:
    base: dict[StreamId, int]  # the watermarks as locked at the start of the transaction
    marks: dict[StreamId, int] = field(default_factory=dict)
    applied: int = 0
    parked: int = 0


class _HandlerFailed(Exception):
    def __init__(self, stream: StreamId, seq: int, error: BaseException) -> None:
        super().__init__(f"{stream}#{seq}: {error}")
        self.stream, self.seq, self.error = stream, seq, error


class _Isolate(Exception):
    """A batched write failed: redo the round unbatched to find whose it was."""


class DbApply:
    """A site's DB apply; `Processor` loads and runs it beside its own loop."""

    def __init__(
        self,
        site: str,
        mode: DbMode,
        database: Database,
        handlers: HandlerLookup,
        journal: Journal,
        settings: ReplicationSettings,
        clock: Clock,
        initial_writer: str | None = None,
    ) -> None:
        self.site = site
        self.mode = mode
        self.database = database
        self._handlers = handlers
        self._journal = journal
        self._settings = settings
        self._clock = clock
        self.role = WriterRole(1, initial_writer or site)
        self.progress = Pulse()  # fired after each commit and each role change
        self._marks: dict[StreamId, int] = {}
        self._reload = True
        self._failing: dict[tuple[StreamId, int], _Failing] = {}
        self._retry_at: dict[StreamId, float] = {}
        self._blocked_until = 0.0
        self._fence_poll_at = 0.0
        self._unavailable_s = 0.0
        self._rotation = 0
        self._totals = dict.fromkeys(
            ("applied", "parked", "failures", "transactions", "retries", "fence_refusals"), 0
        )
        self.last_error: str | None = None
        self.first_write_ms: int | None = None  # wall ms of the first commit under this role
        self._role_at_ms = 0

    # -- the role ---------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self.mode == "independent" or self.role.writer == self.site

    def learn_role(self, role: WriterRole) -> None:
        """A newer writer role (from the control message or the fence): start or stop."""
        if role <= self.role:
            return
        was = self.active
        self.role = role
        if self.active and not was:
            self._reload = True  # the watermark that replicated with the binlog
            self.first_write_ms = None
            self._role_at_ms = self._clock.wall_ms()
        log.info("db_role", site=self.site, writer=role.writer, epoch=role.epoch)
        self.progress.fire()
        self._journal.appended.fire()  # wake the run loop

    async def on_writer_message(self, delivery: Any) -> None:
        """The cache handler of `ma.db.writer` (registered by `open_db_apply`)."""
        self.learn_role(decode_writer(delivery.message.payload))

    # -- lifecycle --------------------------------------------------------------------------

    async def load(self) -> None:
        """Open the database and read the fence: the role it records wins over the topology's
        initial writer (a failover happened before this start).

        In writer mode a database that does not answer (a dead old primary) does not stop the
        site: its caches go on, the DB apply retries, and the role comes with the control
        message. A bad account, or any failure in independent mode, is raised."""
        try:
            await self.database.open()
        except DatabaseError as exc:
            if self.mode != "writer" or not exc.transient:
                raise
            log.warning("db_unavailable_at_start", site=self.site, error=str(exc))
            self.last_error = str(exc)
            return
        if self.mode == "writer":
            fence = await self._read_fence()
            if fence is not None:
                self.role = max(self.role, fence)

    async def run(self) -> None:
        while True:
            if not await self.step():
                await self._journal.appended.wait(self._next_wake_in())

    async def _poll_fence(self, now: float) -> None:
        self._fence_poll_at = now + FENCE_POLL_S
        try:
            fence = await self._read_fence()
        except DatabaseError:
            return  # the database is down: the control message will tell
        if fence is not None:
            self.learn_role(fence)

    def _next_wake_in(self) -> float | None:
        now = self._clock.monotonic()
        polls = (self._fence_poll_at,) if not self.active and self.mode == "writer" else ()
        waits = (*self._retry_at.values(), self._blocked_until, *polls)
        pending = [w for w in waits if w > now]
        return min(pending) - now if pending else None

    async def close(self) -> None:
        await self.database.close()

    def watermark(self, stream: StreamId) -> int:
        return self._marks.get(stream, 0)

    def caught_up(self) -> bool:
        return all(self.watermark(s) >= h for s, h in self._journal.heads().items())

    # -- one round --------------------------------------------------------------------------

    async def step(self) -> bool:
        """One round: read what is due, apply it in one transaction; False if nothing was."""
        now = self._clock.monotonic()
        if not self.active and self.mode == "writer" and now >= self._fence_poll_at:
            await self._poll_fence(now)
        if not self.active or now < self._blocked_until:
            return False
        try:
            if self._reload:
                self._marks = await self._read_watermarks()
                self._reload = False
            work = await self._collect(now)
            if not work:
                return False
            return await self._apply(work)
        except FencedError as exc:
            self._fenced(exc)
        except DatabaseError as exc:
            self._unavailable(exc)
        return False

    async def _collect(self, now: float) -> Work:
        due = [
            s
            for s, head in self._journal.heads().items()
            if head > self.watermark(s) and self._retry_at.get(s, 0.0) <= now
        ]
        self._rotation += 1
        start = self._rotation % len(due) if due else 0
        for stream in due:
            self._retry_at.pop(stream, None)
        work: Work = {}
        budget = ROUND_BYTES
        for stream in due[start:] + due[:start]:
            if budget <= 0:
                break
            after = self.watermark(stream)
            batches = await self._journal.read(stream, after + 1, min(READ_BYTES, budget))
            budget -= sum(b.size for b in batches) or 1
            items: list[tuple[int, Sequence[Any]]] = []
            for batch in batches:
                if batch.first_seq > after + len(items) + 1:  # a journal hole: never skip it
                    self._retry_at[stream] = now + HOLE_RECHECK_S
                    break
                skip = max(0, after + len(items) - batch.first_seq + 1)
                items.extend(
                    (seq, row)
                    for seq, row in enumerate(batch.rows()[skip:], batch.first_seq + skip)
                )
            if items:
                work[stream] = items
        return work

    async def _apply(self, work: Work) -> bool:
        batched = True
        while work:
            try:
                outcome = await self._transaction(work, batched)
            except _Isolate:
                batched = False
                continue
            except _HandlerFailed as failed:
                self._handler_failed(work, failed)
                continue
            self._committed(outcome)
            return True
        return False

    async def _transaction(self, work: Work, batched: bool) -> _Outcome:
        tx = await self.database.begin(buffered=batched)
        try:
            if self.mode == "writer":
                await self._check_fence(tx)
            base = await self._locked_watermarks(tx)
            outcome = _Outcome(base, dict(base))
            for stream, items in work.items():
                await self._apply_stream(tx, stream, items, outcome, batched)
            await self._write_watermarks(tx, outcome)
            await tx.commit()
        except (_HandlerFailed, _Isolate):
            await tx.rollback()
            raise
        except DatabaseError as exc:
            await tx.rollback()
            if batched and not exc.transient and not isinstance(exc, FencedError):
                raise _Isolate from exc
            raise
        except Exception as exc:
            await tx.rollback()
            if batched:
                raise _Isolate from exc
            raise DatabaseError(f"the DB apply's commit failed: {exc}") from exc
        return outcome

    async def _apply_stream(
        self,
        tx: DbTransaction,
        stream: StreamId,
        items: list[tuple[int, Sequence[Any]]],
        outcome: _Outcome,
        batched: bool,
    ) -> None:
        done = outcome.marks.get(stream, 0)
        origin, partition = stream
        failures = self._failing
        handlers: dict[str, DbHandler | None] = {}  # per type, looked up once a round
        for seq, row in items:
            if seq <= done:
                continue  # already in the DB watermark: applied by an earlier commit
            if seq != done + 1:
                self._reload = True  # the watermark is not where we read from: re-read it
                break
            kind = row[1]
            handler = (
                handlers[kind]
                if kind in handlers
                else handlers.setdefault(kind, self._handlers(kind))
            )
            failing = failures.get((stream, seq)) if failures else None
            if failing is not None and failing.attempts >= self._settings.apply_max_attempts:
                await self._park(tx, message_from_row(row, origin, partition, seq), failing)
                outcome.parked += 1
            elif handler is not None:
                message = message_from_row(row, origin, partition, seq)
                attempt = failing.attempts + 1 if failing else 1
                await self._run_handler(handler, message, attempt, tx, batched)
                outcome.applied += 1
            done = seq
        outcome.marks[stream] = done

    async def _run_handler(
        self, handler: DbHandler, message: Message, attempt: int, tx: DbTransaction, batched: bool
    ) -> None:
        try:
            await handler(DbDelivery(message, self.site, attempt, tx))
        except DatabaseError as exc:
            if exc.transient or isinstance(exc, FencedError):
                raise
            if batched:
                raise _Isolate from exc
            raise _HandlerFailed(message.stream, message.seq, exc) from exc
        except Exception as exc:
            if batched:
                raise _Isolate from exc
            raise _HandlerFailed(message.stream, message.seq, exc) from exc

    def _handler_failed(self, work: Work, failed: _HandlerFailed) -> None:
        """Count the attempt; the stream waits (backoff) or, at the limit, parks the message in
        the redo; the other streams are redone at once."""
        self._totals["failures"] += 1
        key = (failed.stream, failed.seq)
        previous = self._failing.get(key)
        attempts = (previous.attempts if previous else 0) + 1
        error = f"{type(failed.error).__name__}: {failed.error}"
        self._failing[key] = _Failing(attempts, error)
        self.last_error = f"{failed.stream}#{failed.seq}: {error}"
        log.warning("db_handler_failed", stream=str(failed.stream), seq=failed.seq, error=error)
        if attempts >= self._settings.apply_max_attempts:
            return  # the redo parks it and goes on
        self._totals["retries"] += 1
        backoff_s = self._settings.apply_retry_backoff_ms / 1000 * 2 ** (attempts - 1)
        self._retry_at[failed.stream] = self._clock.monotonic() + backoff_s
        items = [item for item in work[failed.stream] if item[0] < failed.seq]
        if items:
            work[failed.stream] = items
        else:
            del work[failed.stream]

    def _committed(self, outcome: _Outcome) -> None:
        for stream, seq in outcome.marks.items():
            self._marks[stream] = seq
            for key in [k for k in self._failing if k[0] == stream and k[1] <= seq]:
                del self._failing[key]
        self._totals["applied"] += outcome.applied
        self._totals["parked"] += outcome.parked
        self._totals["transactions"] += 1
        self._unavailable_s = 0.0
        if self.first_write_ms is None:
            self.first_write_ms = self._clock.wall_ms()
            log.info(
                "db_writing", site=self.site, epoch=self.role.epoch, messages=outcome.applied,
                after_role_ms=self.first_write_ms - self._role_at_ms if self._role_at_ms else None,
            )  # fmt: skip
        self.progress.fire()

    def _unavailable(self, exc: DatabaseError) -> None:
        self._unavailable_s = min(
            UNAVAILABLE_BACKOFF_MAX_S, max(UNAVAILABLE_BACKOFF_MIN_S, self._unavailable_s * 2)
        )
        self._blocked_until = self._clock.monotonic() + self._unavailable_s
        self._totals["retries"] += 1
        self._reload = True  # whatever committed before the error is re-read
        if self.last_error != str(exc):
            log.warning("db_unavailable", site=self.site, error=str(exc))
        self.last_error = str(exc)

    def _fenced(self, exc: FencedError) -> None:
        log.warning("db_fenced", site=self.site, error=str(exc))
        self._totals["fence_refusals"] += 1
        self.last_error = str(exc)
        self.progress.fire()

    # -- our tables -------------------------------------------------------------------------

    def _for_update(self) -> str:
        return " FOR UPDATE" if self.database.dialect == "mysql" else ""

    async def _read_fence(self) -> WriterRole | None:
        tx = await self.database.begin()
        try:
            rows = await tx.fetchall(
                "SELECT writer, epoch FROM ma_db_fence WHERE id = %s", (FENCE_ROW,)
            )
        except DatabaseError as exc:
            if exc.transient:
                raise
            return None  # no fence table yet (a replica before the primary created it)
        finally:
            await tx.rollback()
        return WriterRole(int(rows[0][1]), str(rows[0][0])) if rows else None

    async def _check_fence(self, tx: DbTransaction) -> None:
        """The epoch check: commit only while the fence names this site under our epoch; a
        newer role of ours (the control message arrived first) moves the fence forward."""
        rows = await tx.fetchall(
            "SELECT writer, epoch FROM ma_db_fence WHERE id = %s" + self._for_update(),
            (FENCE_ROW,),
        )
        fence = WriterRole(int(rows[0][1]), str(rows[0][0])) if rows else None
        mine = self.role
        if fence == mine:
            return
        if fence is not None and fence > mine:
            self.learn_role(fence)
            raise FencedError(
                f"{self.site}: the fence names writer {fence.writer!r} at epoch {fence.epoch}; "
                f"this site wrote under epoch {mine.epoch}: its DB transactions are refused"
            )
        if fence is None:
            await tx.execute(
                "INSERT INTO ma_db_fence (id, writer, epoch, changed_ms) VALUES (%s, %s, %s, %s)",
                (FENCE_ROW, mine.writer, mine.epoch, self._clock.wall_ms()),
            )
        else:
            await tx.execute(
                "UPDATE ma_db_fence SET writer = %s, epoch = %s, changed_ms = %s WHERE id = %s",
                (mine.writer, mine.epoch, self._clock.wall_ms(), FENCE_ROW),
            )

    async def _read_watermarks(self) -> dict[StreamId, int]:
        tx = await self.database.begin()
        try:
            rows = await tx.fetchall("SELECT origin, part, seq FROM ma_db_watermarks")
        finally:
            await tx.rollback()
        return {StreamId(str(o), int(p)): int(s) for o, p, s in rows}

    async def _locked_watermarks(self, tx: DbTransaction) -> dict[StreamId, int]:
        rows = await tx.fetchall(
            "SELECT origin, part, seq FROM ma_db_watermarks" + self._for_update()
        )
        return {StreamId(str(o), int(p)): int(s) for o, p, s in rows}

    async def _write_watermarks(self, tx: DbTransaction, outcome: _Outcome) -> None:
        for stream, seq in outcome.marks.items():
            if seq > outcome.base.get(stream, 0):
                await tx.upsert(
                    "ma_db_watermarks",
                    {"origin": stream.origin, "part": stream.partition, "seq": seq},
                    key=["origin", "part"],
                )

    async def _park(self, tx: DbTransaction, message: Message, failing: _Failing) -> None:
        log.error("db_parked", stream=str(message.stream), seq=message.seq, error=failing.error)
        await tx.upsert(
            "ma_db_dead_letters",
            {
                "origin": message.origin,
                "part": message.partition,
                "seq": message.seq,
                "id": message.id,
                "type": message.type,
                "msg_key": message.key,
                "error": failing.error,
                "attempts": failing.attempts,
                "at_ms": self._clock.wall_ms(),
            },
            key=["origin", "part", "seq"],
        )

    def statistics(self) -> DbApplyStatistics:
        t = self._totals
        return DbApplyStatistics(
            self.mode,
            self.active,
            self.role.writer if self.mode == "writer" else None,
            self.role.epoch if self.mode == "writer" else 0,
            t["applied"],
            t["parked"],
            t["failures"],
            t["transactions"],
            dict(self._marks),
            self.last_error,
            t["retries"],
            t["fence_refusals"],
        )

    def summary(self) -> DbApplySummary:
        s = self.statistics()
        return DbApplySummary(
            s.mode, s.active, s.writer, s.epoch, s.applied_messages, s.transactions, s.retries,
            s.parked_messages, s.handler_failures, s.fence_refusals, s.last_error,
        )  # fmt: skip

    async def wait_caught_up(self, timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                while not self.caught_up():
                    await self.progress.wait()
        except TimeoutError:
            return False
        return True
