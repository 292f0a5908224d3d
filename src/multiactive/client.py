"""The Python publisher: `multiactive.Client`.

    async with Client("10.0.1.10:7100", fallback=["10.2.1.10:7100"]) as client:
        ack = await client.publish("kv.set", "user:42", b"hello")
        print(ack.id, ack.partition, ack.seq)

`publish` returns once the site has journaled the message durably (J3). Publishes made in the
same event-loop turn travel in one PUBLISH frame, and many frames may be in flight at once, so
throughput comes from concurrency (`asyncio.gather`, or `publish_batch`), not from waiting.

Surviving restarts. Every write carries a request id (made here unless given). When the
connection drops, the client reconnects with backoff (its own site first, then the `fallback`
addresses, only when some are given) and sends every unacknowledged write again with its same
id: a site answers an id it journaled before with that first position, so the write takes
effect once. The id index is per site, so a write that may have reached a site is sent again
only to that site; only writes known not to be journaled (never sent, or refused as
`unavailable`) may go to a fallback. A write still unanswered `deadline_s` after it was made
fails with `OutcomeUnknown`, which names the ids whose outcome is unknown (also ids that
`publish_batch` generated) and those certainly not journaled. At most `max_in_flight`
messages are unacknowledged at once; past that, publishing waits for room (back-pressure).

Causal sessions. The client keeps `causal_token`, the highest version it has seen (its
writes' versions and the sites' clocks as they answered), and sends it with every PUBLISH: the
site moves its clock past it, so every later write of this client gets a greater version, at
any site. Hand `client.causal_token` to another client (`follow(token)` or
`Client(..., causal_token=)`) and its writes win over everything the first one had written,
even within the same millisecond.

Over TLS (a site whose topology has `[tls]`): pass `tls=` a context that trusts the cluster
CA (`multiactive.security.tls.client_context(ca, cert, key)`, with a client certificate when
the site asks for one), `server_name=` the site's name, and `token=` the application's token
when the site wants tokens. `guard=` (or `Client.for_user`) publishes only what the routing
policy lets this user write at the site connected to (`multiactive.routing.guard`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, NamedTuple

from multiactive.aio import Backoff, Pulse
from multiactive.errors import (
    BatchRejected,
    ConnectionLost,
    OutcomeUnknown,
    PayloadTooLarge,
    ProtocolError,
    RejectedError,
    RoutingRefused,
)
from multiactive.model.ids import IdGenerator, is_valid_id
from multiactive.model.topology import DEFAULT_MAX_FRAME_BYTES, Address, Topology, parse_address
from multiactive.routing.gate import KEY_HEADER, REGION_HEADER
from multiactive.routing.guard import WriteGuard
from multiactive.routing.policy import Policy
from multiactive.state.ops import BUILTIN_TYPES, check_payload
from multiactive.wire.base import Connection
from multiactive.wire.connection import FrameConnection
from multiactive.wire.frames import FrameType
from multiactive.wire.protocol import (
    RESULT_OK,
    RESULT_UNKNOWN,
    Draft,
    Hello,
    decode_error,
    decode_hello,
    decode_published,
    encode_hello,
    encode_publish,
)

MAX_DRAFTS_PER_FRAME = 2000
MAX_FRAME_PAYLOAD_BYTES = 4 * 1024 * 1024
MAX_TYPE_LENGTH = 128
DEFAULT_DEADLINE_S = 30.0
DEFAULT_MAX_IN_FLIGHT = 100_000  # messages sent or queued and not answered yet
DEFAULT_RECONNECT_MIN_S = 0.05
DEFAULT_RECONNECT_MAX_S = 2.0

# Answers after which the client sends the same draft again, with its id, after a backoff and
# until its deadline: an outcome-unknown result (kind 2: the site's storage failed mid-write;
# the write may be journaled, so it goes again only to the same site, whose id index answers
# with the first position if it was), and refusals with a code in RETRY_CODES (`unavailable`:
# nothing was journaled; the site is draining or its storage is down). With
# `retry_unavailable=False` those refusals raise `RejectedError` at once instead.
RETRY_CODES = frozenset({"unavailable"})

Dialer = Callable[[Address, float], Awaitable[Connection]]


class Ack(NamedTuple):
    """A durable acceptance: where the message sits in its origin's journal.

    (A named tuple: bulk publishers get one per message, and it is built in a quarter of the
    time of a frozen dataclass.)"""

    id: str
    site: str
    partition: int
    seq: int
    duplicate: bool  # the id had been accepted before; this is that first acceptance
    version: int | None = None  # the write's hybrid-logical-clock version (None if duplicate)


class _Batch:
    """The caller's side of one `publish_batch`: an outcome per draft, one future."""

    __slots__ = ("expired", "future", "outcomes", "remaining", "why")

    def __init__(self, size: int) -> None:
        self.future: asyncio.Future[list[Ack]] = asyncio.get_running_loop().create_future()
        self.outcomes: list[Ack | RejectedError | None] = [None] * size
        self.remaining = size
        self.expired: list[tuple[str, bool]] = []  # (id, may be journaled) past the deadline
        self.why = ""


class _Request:
    """Drafts sent (and sent again) together, and who waits for each: one future per draft
    (`publish`), or slots of a `_Batch` (`publish_batch`)."""

    __slots__ = (
        "attempts", "batch", "deadline", "drafts", "futures", "maybe", "number", "retry",
        "site", "slots", "timer",
    )  # fmt: skip

    def __init__(
        self,
        drafts: list[Draft],
        futures: list[asyncio.Future[Ack]] | None,
        batch: _Batch | None,
        slots: list[int] | None,
    ) -> None:
        self.drafts = drafts
        self.futures = futures
        self.batch = batch
        self.slots = slots
        self.site: str | None = None  # bound to the site it may have reached
        self.maybe = False  # it may be journaled there (sent and unanswered, or "unknown")
        self.number: int | None = None  # its PUBLISH number on the current session
        self.attempts = 0
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.retry: asyncio.TimerHandle | None = None

    def subset(self, indexes: list[int]) -> _Request:
        futures = None if self.futures is None else [self.futures[i] for i in indexes]
        slots = None if self.slots is None else [self.slots[i] for i in indexes]
        part = _Request([self.drafts[i] for i in indexes], futures, self.batch, slots)
        part.site, part.maybe, part.attempts = self.site, self.maybe, self.attempts
        part.deadline = self.deadline
        return part


class _Session:
    """One connection to one site and the requests in flight on it."""

    __slots__ = ("address", "conn", "in_flight", "next_number", "reader", "site")

    def __init__(self, conn: Connection, site: str, address: Address) -> None:
        self.conn = conn
        self.site = site
        self.address = address
        self.in_flight: dict[int, _Request] = {}
        self.next_number = 1
        self.reader: asyncio.Task[None] | None = None


def _refusal(result: list[Any]) -> RejectedError:
    """The error of a refusal (nothing journaled), by its code."""
    if result[1] == "routing":  # the site's routing policy: [1, "routing", text, home site]
        return RoutingRefused(str(result[2]), str(result[3]) if len(result) > 3 else "", "", "")
    kind = PayloadTooLarge if result[1] == "payload_too_large" else RejectedError
    return kind(str(result[2]), str(result[1]))


def check_draft(type: str, key: str, payload: bytes, headers: object, id: str) -> None:
    """Refuse a draft here, before anything is queued, naming the argument that is wrong."""
    if not isinstance(type, str):
        raise TypeError(f"type must be a str, got {_kind(type)}")
    if not 0 < len(type) <= MAX_TYPE_LENGTH:
        raise ValueError(f"type must be 1..{MAX_TYPE_LENGTH} characters, got {type!r}")
    if not isinstance(key, str):
        raise TypeError(f"key must be a str, got {_kind(key)}")
    if not key:
        raise ValueError("key must not be empty")
    if not isinstance(payload, bytes):
        raise TypeError(
            f"payload must be bytes, got {_kind(payload)} (counter.add takes an ASCII "
            "integer such as b'5'; encode text with .encode())"
        )
    if type in BUILTIN_TYPES and (problem := check_payload(type, payload)) is not None:
        raise ValueError(f"payload: {problem}")
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise TypeError("headers must map str to str")
    if not isinstance(id, str):
        raise TypeError(f"id must be a str, got {_kind(id)}")
    if id and not is_valid_id(id):
        raise ValueError(f"id {id!r} is not 1..128 printable ASCII characters without spaces")


_PAYLOAD_CHECKED = BUILTIN_TYPES - {"kv.set", "kv.del"}  # built-ins whose payload has a format


def _plainly_valid(
    id_: object, type_: object, key: object, headers: object, payload: object
) -> bool:
    """The bulk path's quick test (about 0.3 us): True for the common valid draft (fresh id or
    none, no headers, a type whose payload is free). False means: ask `check_draft`, which
    either passes the draft too or names what is wrong."""
    return (
        payload.__class__ is bytes
        and key.__class__ is str
        and type_.__class__ is str
        and id_ == ""
        and not headers
        and headers.__class__ is dict
        and bool(key)
        and 0 < len(type_) <= MAX_TYPE_LENGTH
        and type_ not in _PAYLOAD_CHECKED
    )


def _kind(value: object) -> str:
    return f"{value.__class__.__name__} {value!r:.40}"


class Client:
    """A publisher to one site, with fallbacks; see the module docstring."""

    def __init__(
        self,
        address: str | Address,
        *,
        fallback: Sequence[str | Address] = (),
        connect_timeout_s: float = 5.0,
        deadline_s: float = DEFAULT_DEADLINE_S,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        reconnect_min_s: float = DEFAULT_RECONNECT_MIN_S,
        reconnect_max_s: float = DEFAULT_RECONNECT_MAX_S,
        causal_token: int = 0,
        retry_unavailable: bool = True,
        tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
        token: str = "",
        guard: WriteGuard | None = None,
        dial: Dialer | None = None,
    ) -> None:
        """`token`: the application's token, for a site that wants one (security);
        `causal_token`: start the causal session after a token another client handed over;
        `guard`: publish only what the routing policy lets this user write at the site
        connected to, otherwise RoutingRefused names the site; `dial`: how to open a
        connection (tests pass in-memory ones)."""
        if deadline_s <= 0 or max_in_flight <= 0:
            raise ValueError("deadline_s and max_in_flight must be positive")
        self.addresses = [
            a if isinstance(a, Address) else parse_address(a, "address")
            for a in [address, *fallback]
        ]
        self.address = self.addresses[0]
        self._timeout = connect_timeout_s
        self.deadline_s = deadline_s
        self.max_in_flight = max_in_flight
        self._backoff = (reconnect_min_s, reconnect_max_s)
        self._dial = dial or self._dial_tcp
        self._tls = tls
        self._server_name = server_name
        self._token = token
        self.guard = guard
        self._retry_codes = RETRY_CODES if retry_unavailable else frozenset()
        self._ids = IdGenerator()
        self._session: _Session | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._unacked: dict[_Request, None] = {}  # in order of creation
        self._queue: list[tuple[Draft, asyncio.Future[Ack]]] = []
        self._queue_bytes = 0
        self._scheduled = False
        self._outstanding = 0
        self._room = Pulse()
        self._closed = False
        self.last_error: Exception | None = None  # why the last connection ended or failed
        self.sessions = 0  # connections opened so far (1 + reconnects)
        self.causal_token = causal_token
        self.site = ""

    @classmethod
    def for_user(
        cls, topology: Topology, policy: Policy, routing_key: str, *, region: str,
        connect_timeout_s: float = 5.0,
    ) -> Client:  # fmt: skip
        """A guarded client connected (on `connect`) to the site that takes this user's
        writes; RoutingRefused at once if no site may take them now."""
        guard = WriteGuard(policy, routing_key, region)
        home = guard.home_site()
        if not home or guard.decision().mode != "read-write":
            guard.check(home)
        return cls(topology.site(home).listen, connect_timeout_s=connect_timeout_s, guard=guard)

    async def _dial_tcp(self, address: Address, timeout_s: float) -> Connection:
        return await FrameConnection.connect(
            address, DEFAULT_MAX_FRAME_BYTES, timeout_s, self._tls, self._server_name
        )

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._session is not None

    @property
    def outstanding(self) -> int:
        """Messages queued or sent and not answered yet."""
        return self._outstanding

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect to the first address that answers; `ConnectionLost` if none does. From
        then on the client reconnects by itself until `close()`."""
        if self._keeper is not None:
            return
        self._closed = False
        self._adopt(await self._open_any())
        self._keeper = asyncio.create_task(self._keep_connected())

    async def close(self) -> None:
        """Stop; writes not answered yet fail with `OutcomeUnknown`."""
        self._closed = True
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
            self._keeper = None
        session, self._session = self._session, None
        if session is not None:
            self._end_session(session, ConnectionLost("the client was closed"))
            await session.conn.close()
        self._send_queued()
        for request in list(self._unacked):
            self._expire(request, "the client was closed")

    def follow(self, token: int) -> None:
        """Order this client's next writes after everything the holder of this causal token
        (another client's `causal_token`) had seen."""
        self.causal_token = max(self.causal_token, token)

    # -- publishing --------------------------------------------------------------------------

    async def publish(
        self,
        type: str,
        key: str,
        payload: bytes = b"",
        *,
        headers: Mapping[str, str] | None = None,
        id: str | None = None,
    ) -> Ack:
        """Publish one message; returns when it is durable at the site."""
        header_map = dict(headers or {})
        check_draft(type, key, payload, header_map, id or "")
        if self.guard is not None:  # refused here, before anything is queued or sent
            self.guard.check(self.site)
            header_map[KEY_HEADER] = self.guard.routing_key
            header_map[REGION_HEADER] = self.guard.region
        self._check_open()
        if self._outstanding >= self.max_in_flight:
            await self._wait_for_room(1)
        draft: Draft = (id or self._ids.new(), type, key, header_map, payload)
        return await self._enqueue(draft)

    async def publish_many(self, drafts: Sequence[tuple[str, str, bytes]]) -> list[Ack]:
        """Publish (type, key, payload) triples as one batch; see `publish_batch`."""
        return await self.publish_batch([("", t, k, {}, p) for t, k, p in drafts])

    async def publish_batch(self, drafts: Sequence[Draft]) -> list[Ack]:
        """Publish drafts `(id, type, key, headers, payload)` in as few frames as fit, with one
        future per batch instead of one per message: the fast path for bulk writers. An empty
        id gets a fresh one here. Returns one Ack per draft, in order; if the site refuses any
        draft, raises `BatchRejected` carrying every outcome (the others were journaled)."""
        new_id = self._ids.new
        checked = []
        for index, draft in enumerate(drafts):
            try:
                id_, type_, key, headers, payload = draft
                if not _plainly_valid(id_, type_, key, headers, payload):
                    check_draft(type_, key, payload, headers, id_)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"drafts[{index}]: {exc}") from None
            checked.append(draft if id_ else (new_id(), type_, key, headers, payload))
        if self.guard is not None:  # refused here, before anything is queued or sent
            self.guard.check(self.site)
            routed = {KEY_HEADER: self.guard.routing_key, REGION_HEADER: self.guard.region}
            checked = [(d[0], d[1], d[2], {**d[3], **routed}, d[4]) for d in checked]
        self._check_open()
        if not checked:
            return []
        if self._outstanding + len(checked) > self.max_in_flight:
            await self._wait_for_room(len(checked))
        batch = _Batch(len(checked))
        for start in range(0, len(checked), MAX_DRAFTS_PER_FRAME):
            chunk = checked[start : start + MAX_DRAFTS_PER_FRAME]
            slots = list(range(start, start + len(chunk)))
            self._submit(_Request(chunk, None, batch, slots))
        return await batch.future

    def _check_open(self) -> None:
        if self._keeper is None or self._closed:
            raise ConnectionLost("the client is not connected; call connect()")

    async def _wait_for_room(self, size: int) -> None:
        """Back-pressure: wait until `size` more messages fit (a batch larger than the limit
        waits until nothing else is outstanding)."""
        limit = max(0, self.max_in_flight - size)
        while self._outstanding > limit:
            await self._room.wait()
            self._check_open()

    def _enqueue(self, draft: Draft) -> asyncio.Future[Ack]:
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self._queue.append((draft, future))
        self._outstanding += 1
        self._queue_bytes += len(draft[4]) + len(draft[2]) + 64
        if len(self._queue) >= MAX_DRAFTS_PER_FRAME or self._queue_bytes >= MAX_FRAME_PAYLOAD_BYTES:
            self._send_queued()
        elif not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._send_queued)
        return future

    def _send_queued(self) -> None:
        self._scheduled = False
        if not self._queue:
            return
        queued, self._queue, self._queue_bytes = self._queue, [], 0
        self._outstanding -= len(queued)  # counted again by _submit
        request = _Request([d for d, _ in queued], [f for _, f in queued], None, None)
        self._submit(request)

    def _submit(self, request: _Request) -> None:
        loop = asyncio.get_running_loop()
        request.deadline = loop.time() + self.deadline_s
        request.timer = loop.call_at(request.deadline, self._expire, request, "")
        self._unacked[request] = None
        self._outstanding += len(request.drafts)
        self._send_if_possible(request)

    # -- sending and answers -----------------------------------------------------------------

    def _send_if_possible(self, request: _Request) -> None:
        request.retry = None
        session = self._session
        if request not in self._unacked or request.number is not None or session is None:
            return
        if request.site is not None and request.site != session.site:
            return  # it may be journaled at request.site: only that site may take it again
        number = session.next_number
        session.next_number += 1
        session.in_flight[number] = request
        request.number = number
        request.site = session.site
        request.attempts += 1
        try:
            session.conn.send(encode_publish(number, request.drafts, self.causal_token))
        except ConnectionLost as exc:
            self._end_session(session, exc)

    def _answered(self, session: _Session, number: int, results: list[Any], clock: int) -> None:
        request = session.in_flight.pop(number, None)
        if request is None:
            return  # expired or cancelled meanwhile: a late answer
        if len(request.drafts) != len(results):
            raise ProtocolError(f"{session.site} answered {len(results)} of {len(request.drafts)}")
        request.number = None
        self.follow(clock)
        if request.batch is not None and all(result[0] == RESULT_OK for result in results):
            self._settle_batch(request, session.site, results)
            self._retry_or_forget(request, [])
            return
        again: list[int] = []
        earlier = request.maybe  # an earlier attempt may have been journaled
        for index, (draft, result) in enumerate(zip(request.drafts, results, strict=True)):
            if result[0] == RESULT_OK:
                version = result[4] if len(result) > 4 else None
                if version is not None and version > self.causal_token:
                    self.causal_token = version
                ack = Ack(draft[0], session.site, result[1], result[2], bool(result[3]), version)
                self._settle(request, index, ack)
            elif result[0] == RESULT_UNKNOWN:
                request.maybe = True
                again.append(index)
            elif result[1] in self._retry_codes or (earlier and result[1] == "unavailable"):
                again.append(index)
            elif earlier:  # refused now, but an earlier attempt may be journaled
                why = f"refused when sent again ({result[1]}: {result[2]})"
                self._settle(request, index, _unknown(why, [(draft[0], True)], None))
            else:
                self._settle(request, index, _refusal(result))
        self._retry_or_forget(request, again)

    def _settle_batch(self, request: _Request, site: str, results: list[Any]) -> None:
        """Every draft of a `publish_batch` request acknowledged, the bulk path's usual case:
        its slots filled in one pass (what `_settle` does one draft at a time)."""
        batch, slots = request.batch, request.slots
        assert batch is not None
        assert slots is not None
        outcomes, top = batch.outcomes, self.causal_token
        for slot, draft, result in zip(slots, request.drafts, results, strict=True):
            version = result[4] if len(result) > 4 else None
            if version is not None and version > top:
                top = version
            outcomes[slot] = Ack(draft[0], site, result[1], result[2], bool(result[3]), version)
        self.causal_token = top
        batch.remaining -= len(results)
        if batch.remaining == 0:
            _finish_batch(batch)

    def _retry_or_forget(self, request: _Request, again: list[int]) -> None:
        settled = len(request.drafts) - len(again)
        self._forget(request, settled if again else len(request.drafts))
        if not again:
            return
        part = request if len(again) == len(request.drafts) else request.subset(again)
        if not part.maybe:
            part.site = None  # known not journaled: any site may take it
        loop = asyncio.get_running_loop()
        part.timer = loop.call_at(part.deadline, self._expire, part, "")
        self._unacked[part] = None
        low, high = self._backoff
        delay = min(high, low * 2 ** min(part.attempts, 10))
        part.retry = loop.call_later(delay, self._send_if_possible, part)

    def _settle(
        self, request: _Request, index: int, outcome: Ack | RejectedError | OutcomeUnknown
    ) -> None:
        if request.futures is not None:
            future = request.futures[index]
            if not future.done():
                if isinstance(outcome, Exception):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
            return
        assert request.batch is not None
        assert request.slots is not None
        batch = request.batch
        if isinstance(outcome, OutcomeUnknown):
            batch.expired.append((request.drafts[index][0], True))
            batch.why = str(outcome)
        else:
            batch.outcomes[request.slots[index]] = outcome
        batch.remaining -= 1
        if batch.remaining == 0:
            _finish_batch(batch)

    def _forget(self, request: _Request, settled: int) -> None:
        """Drop a request from the unacknowledged ones; `settled` of its drafts are done."""
        self._unacked.pop(request, None)
        for handle in (request.timer, request.retry):
            if handle is not None:
                handle.cancel()
        request.timer = request.retry = None
        self._outstanding -= settled
        self._room.fire()

    def _expire(self, request: _Request, reason: str) -> None:
        """The deadline passed (or the client closed): fail what is still unanswered."""
        if request not in self._unacked:
            return
        session = self._session
        if request.number is not None and session is not None:
            session.in_flight.pop(request.number, None)
            request.maybe = True
        request.number = None
        self._forget(request, len(request.drafts))
        why = reason or f"no answer within deadline_s={self.deadline_s:g}"
        ids = [draft[0] for draft in request.drafts]
        if request.futures is not None:
            for id_, future in zip(ids, request.futures, strict=True):
                if not future.done():
                    future.set_exception(_unknown(why, [(id_, request.maybe)], None))
            return
        assert request.batch is not None
        assert request.slots is not None
        batch = request.batch
        batch.expired += [(id_, request.maybe) for id_ in ids]
        batch.why = why
        batch.remaining -= len(ids)
        if batch.remaining == 0:
            _finish_batch(batch)

    # -- connections -------------------------------------------------------------------------

    async def _open_any(self) -> _Session:
        """A session with the first address that answers, this client's own site first."""
        problems = []
        for address in self.addresses:
            try:
                return await self._open(address)
            except ConnectionLost as exc:
                problems.append(str(exc))
        raise ConnectionLost("; ".join(problems))

    async def _open(self, address: Address) -> _Session:
        conn = await self._dial(address, self._timeout)
        try:
            conn.send(encode_hello(Hello("", "client", "", token=self._token)))
            frame = await conn.recv(self._timeout)
            if frame.type == FrameType.ERROR:
                raise ConnectionLost(f"{address} refused the client: {decode_error(frame).message}")
            site = decode_hello(frame).site
        except (ConnectionLost, ProtocolError, TimeoutError) as exc:
            await conn.close()
            reason = exc if str(exc) else "no HELLO answer in time"
            raise ConnectionLost(f"{address}: {reason}") from exc
        return _Session(conn, site, address)

    def _adopt(self, session: _Session) -> None:
        self._session = session
        self.sessions += 1
        self.site = session.site
        session.reader = asyncio.create_task(self._read_answers(session))
        for request in list(self._unacked):
            if request.retry is not None:
                request.retry.cancel()
            self._send_if_possible(request)

    async def _keep_connected(self) -> None:
        backoff = Backoff(*self._backoff)
        while True:
            session = self._session
            if session is not None:
                assert session.reader is not None
                await asyncio.wait([session.reader])
                continue
            await asyncio.sleep(backoff.next_delay())
            try:
                fresh = await self._open_any()
            except ConnectionLost as exc:
                self.last_error = exc
                continue
            backoff.reset()
            self._adopt(fresh)

    async def _read_answers(self, session: _Session) -> None:
        try:
            while True:
                frame = await session.conn.recv()
                if frame.type == FrameType.PUBLISHED:
                    self._answered(session, *decode_published(frame))
                elif frame.type == FrameType.ERROR:
                    error = decode_error(frame)
                    raise ConnectionLost(f"{session.site} closed the connection: {error.message}")
                elif frame.type != FrameType.HEARTBEAT:
                    raise ProtocolError(f"unexpected {frame.type.name} frame from {session.site}")
        except (ConnectionLost, ProtocolError) as exc:
            self._end_session(session, exc)
        except Exception as exc:  # a malformed answer: this connection is unusable
            self._end_session(session, ProtocolError(f"bad answer from {session.site}: {exc!r}"))
        await session.conn.close()

    def _end_session(self, session: _Session, exc: Exception) -> None:
        """The connection is gone: what was in flight on it may be journaled there."""
        self.last_error = exc
        if self._session is session:
            self._session = None
        for request in session.in_flight.values():
            request.number = None
            request.maybe = True
        session.in_flight.clear()


def _unknown(
    why: str, ids: list[tuple[str, bool]], outcomes: list[Ack | RejectedError | None] | None
) -> OutcomeUnknown:
    """The error naming writes whose outcome stayed unknown, and those never journaled."""
    unknown = [id_ for id_, maybe in ids if maybe]
    not_journaled = [id_ for id_, maybe in ids if not maybe]
    parts = [f"{len(unknown)} unknown: {', '.join(unknown[:5])}"] if unknown else []
    if not_journaled:
        parts.append(f"{len(not_journaled)} not journaled: {', '.join(not_journaled[:5])}")
    more = " ..." if max(len(unknown), len(not_journaled)) > 5 else ""
    return OutcomeUnknown(
        f"{why}; {'; '.join(parts)}{more}", outcomes or (),
        unknown=unknown, not_journaled=not_journaled,
    )  # fmt: skip


def _finish_batch(batch: _Batch) -> None:
    if batch.future.done():
        return
    if batch.expired:
        batch.future.set_exception(_unknown(batch.why, batch.expired, batch.outcomes))
    elif any(isinstance(o, RejectedError) for o in batch.outcomes):
        batch.future.set_exception(BatchRejected(batch.outcomes))
    else:
        batch.future.set_result(batch.outcomes)  # type: ignore[arg-type]
