"""Ingress with group commit: accept drafts, batch them per partition, journal, acknowledge.

A draft is checked (id, type, key, headers, payload size), stamped with the site's clock and
queued for its partition. The flusher takes everything queued and journals it in one durable
append (one transaction, one fsync); only then are the publishers answered (J3). While one
append runs, the next group gathers, so batches grow with load and the fsync cost is shared;
an idle flusher appends at once, or after `limits.linger_ms` when that is set.

When the journal's storage fails (a Redis server restarting), the drafts of that append are
answered truthfully: `RESULT_UNKNOWN` when the append may have been stored
(`StoreOutcomeUnknown`: a publish with the same id tells which), `RESULT_REFUSED` with code
`unavailable` when nothing was. Until `journal.check()` answers again (tried with backoff),
every new draft is refused `unavailable` at once; nothing is queued that cannot be journaled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from multiactive.aio import Pulse, store_backoff
from multiactive.checksum import crc32
from multiactive.clock import SYSTEM_CLOCK, Clock
from multiactive.errors import (
    JournalError,
    RejectedError,
    StoreError,
    StoreOutcomeUnknown,
    format_bytes,
)
from multiactive.journal.base import Journal, LocalGroup
from multiactive.logs import get_logger
from multiactive.model.batch import ROW_OVERHEAD_BYTES, headers_bytes
from multiactive.model.clock import HybridClock, version_ms, wall_ms
from multiactive.model.ids import IdGenerator, is_valid_id
from multiactive.model.message import Row
from multiactive.model.record import Record
from multiactive.model.topology import Limits
from multiactive.state.ops import (
    BUILTIN_TYPES,
    COUNTER_ADD,
    ZSET_ADD,
    ZSET_REM,
    check_payload,
)
from multiactive.wire.protocol import RESULT_OK, RESULT_REFUSED, RESULT_UNKNOWN

MAX_TYPE_LENGTH = 128
MAX_ID_LENGTH = 128  # as `is_valid_id` checks
RESERVED_PREFIX = "ma."
MAX_KEY_BYTES = 1024
MAX_HEADER_BYTES = 4096
MAX_FLOOR_AHEAD_MS = 300_000  # how far a causal token may be ahead of this site's wall clock

Result = list[Any]  # [0, partition, seq, duplicate, version], [1 or 2, code, text]
_DRAFT_CLASSES = (list, tuple)
_PAYLOAD_CHECKED = frozenset({COUNTER_ADD, ZSET_ADD, ZSET_REM})  # `check_payload` reads these

log = get_logger("ingress")


@dataclass(frozen=True, slots=True)
class IngressStatistics(Record):
    accepted: int
    duplicates: int
    refused: int
    flushes: int
    pending: int
    journal_errors: int
    unknown: int = 0  # drafts answered "outcome unknown" (storage failed mid-append)
    unavailable: str = ""  # why the journal cannot be written now ("" when it can)


class _Pending:
    """Drafts queued for one partition: rows, who asked for each, and their sizes."""

    __slots__ = ("bytes", "refs", "rows", "sizes")

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.refs: list[tuple[_Request, int]] = []
        self.sizes: list[int] = []
        self.bytes = 0


class _Request:
    __slots__ = ("done", "remaining", "results")

    def __init__(self, results: list[Result], remaining: int) -> None:
        self.results = results
        self.remaining = remaining
        self.done: asyncio.Future[list[Result]] = asyncio.get_running_loop().create_future()
        if remaining == 0:
            self.done.set_result(results)

    def settle(self, index: int, result: Result) -> None:
        self.results[index] = result
        self.remaining -= 1
        if self.remaining == 0 and not self.done.done():
            self.done.set_result(self.results)


class Ingress:
    def __init__(
        self,
        site: str,
        journal: Journal,
        clock: HybridClock,
        partitions: int,
        limits: Limits,
        timer: Clock = SYSTEM_CLOCK,
    ) -> None:
        """`clock` stamps versions; `timer` paces the retries while the journal is down."""
        self.site = site
        self._time = timer
        self.unavailable = ""  # why the journal cannot be written now
        self._journal = journal
        self._clock = clock
        self._partitions = partitions
        self._limits = limits
        self._ids = IdGenerator()
        self._rows: dict[int, _Pending] = {}
        self._pending = 0
        self._pending_bytes = 0
        self._arrived = Pulse()
        self.room = Pulse()
        self._closing = False
        self._flushing = False
        self._counts = dict.fromkeys(
            ("accepted", "duplicates", "refused", "flushes", "errors", "unknown"), 0
        )
        # Routed writes (headers with a routing key) the site's routing policy forbids here:
        # (reason, home site) or None (`multiactive.routing.gate`).
        self.gate: Callable[[Mapping[str, str]], tuple[str, str] | None] | None = None

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def full(self) -> bool:
        return self._pending >= self._limits.max_pending_messages

    def submit(
        self, drafts: Sequence[Any], *, internal: bool = False, floor: int = 0
    ) -> asyncio.Future[list[Result]]:
        """Queue drafts; the future resolves with one result per draft once durable.
        Types starting with `ma.` are reserved for the site's own messages (`internal`).
        `floor`: a causal session's token; the drafts get versions above it."""
        if self._closing:
            raise RejectedError(
                f"site {self.site} is shutting down; publish to another site", "unavailable"
            )
        if self.unavailable:
            raise RejectedError(
                f"site {self.site} cannot journal now ({self.unavailable}); nothing was "
                "journaled, publish again later",
                "unavailable",
            )
        if floor and (problem := self._observe_floor(floor)) is not None:
            return _Request([[RESULT_REFUSED, "bad_floor", problem]] * len(drafts), 0).done
        results: list[Result] = [[]] * len(drafts)
        checked = [self._check(draft, internal) for draft in drafts]
        valid = sum(1 for c in checked if isinstance(c, tuple))
        request = _Request(results, valid)
        if valid:
            self._enqueue(request, checked, valid)
        for index, outcome in enumerate(checked):
            if isinstance(outcome, list):
                results[index] = outcome
                self._counts["refused"] += 1
        return request.done

    def _observe_floor(self, floor: int) -> str | None:
        """Move the clock past a session's token; or why not, if the token is implausibly far
        ahead of this site's wall clock (a corrupt token must not drag every version on)."""
        ahead_ms = version_ms(floor) - wall_ms()
        if ahead_ms > MAX_FLOOR_AHEAD_MS:
            self._counts["refused"] += 1
            return (
                f"the causal token is {ahead_ms} ms ahead of site {self.site}'s clock "
                f"(at most {MAX_FLOOR_AHEAD_MS} ms): a token of another cluster, or a clock "
                "far off"
            )
        self._clock.observe(floor)
        return None

    def _enqueue(self, request: _Request, checked: list[Any], valid: int) -> None:
        """Stamp versions and queue each valid draft for its partition (`partition_for` and
        `row_bytes` inlined: this runs once per message, on the event loop)."""
        version = self._clock.tick(valid)
        created_ms = wall_ms()
        partitions, rows, overhead = self._partitions, self._rows, ROW_OVERHEAD_BYTES
        added = 0
        for index, outcome in enumerate(checked):
            if outcome.__class__ is not tuple:
                continue
            id_, type_, key, headers, payload = outcome
            raw_key = key.encode()
            partition = crc32(raw_key) % partitions
            pending = rows.get(partition)
            if pending is None:
                pending = rows[partition] = _Pending()
            pending.rows.append((id_, type_, key, version, created_ms, headers, payload))
            pending.refs.append((request, index))
            size = len(payload) + len(id_) + len(type_.encode()) + len(raw_key) + overhead
            if headers:
                size += headers_bytes(headers)
            pending.sizes.append(size)
            pending.bytes += size
            added += size
            version += 1
        self._pending_bytes += added
        self._pending += valid
        self._arrived.fire()

    def _check(
        self, draft: Any, internal: bool = False
    ) -> tuple[str, str, str, dict[str, str], bytes] | Result:
        """A valid draft as a tuple, or the refusal result naming what is wrong. The common
        draft (an id given, no headers, a type whose payload needs no check, ASCII) passes
        one quick test; any other is checked field by field."""
        if draft.__class__ in _DRAFT_CLASSES and len(draft) == 5:
            id_, type_, key, headers, payload = draft
            if (
                id_.__class__ is str
                and type_.__class__ is str
                and key.__class__ is str
                and payload.__class__ is bytes
                and headers.__class__ is dict
                and not headers
                and 0 < len(id_) <= MAX_ID_LENGTH
                and id_.isascii()
                and id_.isprintable()
                and " " not in id_
                and 0 < len(type_) <= MAX_TYPE_LENGTH
                and type_ not in _PAYLOAD_CHECKED
                and not type_.startswith(RESERVED_PREFIX)
                and 0 < len(key) <= MAX_KEY_BYTES
                and key.isascii()
                and len(payload) <= self._limits.max_payload_bytes
            ):
                return (id_, type_, key, headers, payload)
        return self._check_each(draft, internal)

    def _check_each(
        self, draft: Any, internal: bool
    ) -> tuple[str, str, str, dict[str, str], bytes] | Result:
        if not isinstance(draft, list | tuple) or len(draft) != 5:
            return [RESULT_REFUSED, "malformed", "a draft is [id, type, key, headers, payload]"]
        id_, type_, key, headers, payload = draft
        if id_ == "":
            id_ = self._ids.new()
        elif not isinstance(id_, str) or not is_valid_id(id_):
            return [RESULT_REFUSED, "bad_id", f"request id {id_!r} is not 1..128 printable ASCII"]
        if isinstance(type_, str) and type_.startswith(RESERVED_PREFIX) and not internal:
            return [RESULT_REFUSED, "bad_type", f"types starting {RESERVED_PREFIX!r} are reserved"]
        if not isinstance(type_, str) or not 0 < len(type_) <= MAX_TYPE_LENGTH:
            return [RESULT_REFUSED, "bad_type", f"type must be 1..{MAX_TYPE_LENGTH} characters"]
        if not isinstance(key, str) or not key or len(key.encode()) > MAX_KEY_BYTES:
            return [
                RESULT_REFUSED,
                "bad_key",
                f"key must be a non-empty string of at most {MAX_KEY_BYTES} bytes",
            ]
        if not isinstance(payload, bytes):
            return [RESULT_REFUSED, "bad_payload", "payload must be bytes"]
        if len(payload) > self._limits.max_payload_bytes:
            return [
                RESULT_REFUSED,
                "payload_too_large",
                payload_too_large(len(payload), self._limits),
            ]
        if type_ in BUILTIN_TYPES and (problem := check_payload(type_, payload)) is not None:
            return [RESULT_REFUSED, "bad_payload", problem]
        if not _headers_ok(headers):
            return [
                RESULT_REFUSED,
                "bad_headers",
                f"headers must map str to str, at most {MAX_HEADER_BYTES} bytes",
            ]
        if self.gate is not None and headers and (refused := self.gate(headers)) is not None:
            return [RESULT_REFUSED, "routing", refused[0], refused[1]]
        return (id_, type_, key, headers, payload)

    async def run(self) -> None:
        """The flusher: one durable append per gathered group."""
        linger_s = self._limits.linger_ms / 1000
        while True:
            while not self._pending:
                await self._arrived.wait()
            if linger_s and self._pending_bytes < self._limits.max_batch_bytes:
                await asyncio.sleep(linger_s)
            await self._flush()
            if self.unavailable:
                await self._recover()

    async def _recover(self) -> None:
        """Refuse what is queued, then try the journal with backoff until it answers."""
        backoff = store_backoff()  # how soon, and at most how often, `check()` is tried
        log.warning("journal_unavailable", site=self.site, reason=self.unavailable)
        while True:
            self._refuse_queued()
            await self._time.sleep(backoff.next_delay())
            try:
                await self._journal.check()
            except StoreError as exc:
                self.unavailable = str(exc)
                continue
            break
        self._refuse_queued()
        self.unavailable = ""
        log.info("journal_available", site=self.site)

    def _refuse_queued(self) -> None:
        """Drafts queued while the journal failed were never sent: a plain refusal."""
        queued, self._rows = self._rows, {}
        self._pending = self._pending_bytes = 0
        refusal = [RESULT_REFUSED, "unavailable", f"journal unavailable: {self.unavailable}"]
        for pending in queued.values():
            for request, index in pending.refs:
                request.settle(index, refusal)
            self._counts["refused"] += len(pending.refs)
        self.room.fire()

    async def _flush(self) -> None:
        self._flushing = True
        try:
            await self._flush_queued()
        finally:
            self._flushing = False
            self.room.fire()

    async def _flush_queued(self) -> None:
        queued, self._rows = self._rows, {}
        self._pending = 0
        self._pending_bytes = 0
        groups, order = self._groups(queued)
        self._counts["flushes"] += 1
        try:
            outcome = await self._journal.append_local(groups)
        except Exception as exc:
            self._counts["errors"] += 1
            self._settle_failed(order, exc)
            if not isinstance(exc, StoreError):
                raise
            self.unavailable = str(exc)
            return
        duplicates = outcome.duplicates
        self._counts["duplicates"] += len(duplicates)
        self._counts["accepted"] += len(order) - len(duplicates)
        versions: list[int | None] = [row[3] for group in groups for row in group.rows]
        if duplicates:
            versions = [None if n in duplicates else v for n, v in enumerate(versions)]
        for (request, index), partition, seq, version in zip(
            order, outcome.partitions, outcome.seqs, versions, strict=True
        ):
            request.settle(index, [RESULT_OK, partition, seq, version is None, version])

    def _settle_failed(self, order: list[tuple[_Request, int]], exc: Exception) -> None:
        """Unknown when the append may be stored (a JournalError of Redis may come after
        other partitions were stored); a refusal only when nothing was."""
        if isinstance(exc, StoreOutcomeUnknown | JournalError):
            self._counts["unknown"] += len(order)
            result = [RESULT_UNKNOWN, "store_unknown", f"journal append outcome unknown: {exc}"]
        else:
            self._counts["refused"] += len(order)
            result = [RESULT_REFUSED, "unavailable", f"journal append failed: {exc}"]
        for request, index in order:
            request.settle(index, result)

    def _groups(
        self, queued: dict[int, _Pending]
    ) -> tuple[list[LocalGroup], list[tuple[_Request, int]]]:
        """Split each partition's rows into batches under max_batch_bytes, keeping order."""
        groups: list[LocalGroup] = []
        order: list[tuple[_Request, int]] = []
        created_ms = wall_ms()
        limit = self._limits.max_batch_bytes - 1024
        for partition, pending in queued.items():
            order.extend(pending.refs)
            rows = pending.rows
            if pending.bytes <= limit:
                groups.append(LocalGroup(partition, rows, created_ms))
                continue
            start, size = 0, 0
            for i, row_size in enumerate(pending.sizes):
                if size + row_size > limit and i > start:
                    groups.append(LocalGroup(partition, rows[start:i], created_ms))
                    start, size = i, 0
                size += row_size
            groups.append(LocalGroup(partition, rows[start:], created_ms))
        return groups, order

    async def drain(self) -> None:
        """Refuse new drafts and wait until the flusher has journaled what is queued."""
        self._closing = True
        while self._pending or self._flushing:
            await self.room.wait()

    def statistics(self) -> IngressStatistics:
        c = self._counts
        return IngressStatistics(
            c["accepted"], c["duplicates"], c["refused"], c["flushes"], self._pending,
            c["errors"], c["unknown"], self.unavailable,
        )  # fmt: skip


def payload_too_large(size: int, limits: Limits) -> str:
    return (
        f"payload is {format_bytes(size)}; the limit is {format_bytes(limits.max_payload_bytes)} "
        "(set max_payload_bytes in [limits])"
    )


def _headers_ok(headers: Any) -> bool:
    if not isinstance(headers, dict):
        return False
    if not headers:
        return True
    size = 0
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            return False
        size += len(name) + len(value)
    return size <= MAX_HEADER_BYTES
