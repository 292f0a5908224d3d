"""The Python publisher: `multiactive.Client`.

    async with Client("127.0.0.1:7101") as client:
        ack = await client.publish("kv.set", "user:42", b"hello")
        print(ack.id, ack.partition, ack.seq)

`publish` returns once the site has journaled the message durably (J3). Publishes made in the
same event-loop turn travel in one PUBLISH frame, and many frames may be in flight at once, so
throughput comes from concurrency (`asyncio.gather`, or `publish_many`), not from waiting.

Every message carries a request id (made here unless given). If the connection drops before
the answer, the publish raises `ConnectionLost`: the outcome is unknown, and publishing again
with the same `id` is safe, because the site acknowledges a known id again instead of
journaling it twice. The same holds for `OutcomeUnknown`: the site's storage failed while
the write was being journaled (a Redis server restarting); it is stored once or not at all.
`RejectedError` (with its `code`) means nothing was journaled.

Over TLS (a site whose topology has `[tls]`): pass `tls=` a context that trusts the cluster
CA (`multiactive.security.tls.client_context(ca, cert, key)`, with a client certificate when
the site asks for one), `server_name=` the site's name, and `token=` the application's token
when the site wants tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, NamedTuple

from multiactive.errors import (
    BatchRejected,
    ConnectionLost,
    OutcomeUnknown,
    PayloadTooLarge,
    ProtocolError,
    RejectedError,
    RoutingRefused,
)
from multiactive.model.ids import IdGenerator
from multiactive.model.topology import DEFAULT_MAX_FRAME_BYTES, Address, Topology, parse_address
from multiactive.routing.gate import KEY_HEADER, REGION_HEADER
from multiactive.routing.guard import WriteGuard
from multiactive.routing.policy import Policy
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


class _Request:
    """One PUBLISH frame in flight: per-message futures, or one future for a batch."""

    __slots__ = ("batch", "futures", "ids")

    def __init__(
        self,
        ids: list[str],
        futures: list[asyncio.Future[Ack]] | None,
        batch: asyncio.Future[list[Ack]] | None,
    ) -> None:
        self.ids = ids
        self.futures = futures
        self.batch = batch


def _refusal(result: list[Any]) -> RejectedError | OutcomeUnknown:
    """The error of a result that is not an acceptance: a refusal (nothing journaled), or an
    unknown outcome (`RESULT_UNKNOWN`: publish again with the same id)."""
    if result[0] == RESULT_UNKNOWN:
        return OutcomeUnknown(str(result[2]))
    if result[1] == "routing":  # the site's routing policy: [1, "routing", text, home site]
        return RoutingRefused(str(result[2]), str(result[3]) if len(result) > 3 else "", "", "")
    kind = PayloadTooLarge if result[1] == "payload_too_large" else RejectedError
    return kind(str(result[2]), str(result[1]))


class Client:
    def __init__(
        self,
        address: str | Address,
        *,
        connect_timeout_s: float = 5.0,
        tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
        token: str = "",
        guard: WriteGuard | None = None,
    ) -> None:
        """`guard`: publish only what the routing policy lets this user write at the site
        connected to (`multiactive.routing.guard`); otherwise RoutingRefused names the site."""
        self.address = (
            address if isinstance(address, Address) else parse_address(address, "address")
        )
        self.guard = guard
        self._timeout = connect_timeout_s
        self._tls = tls
        self._server_name = server_name
        self._token = token
        self._ids = IdGenerator()
        self._conn: FrameConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._queue: list[tuple[Draft, asyncio.Future[Ack]]] = []
        self._queue_bytes = 0
        self._scheduled = False
        self._in_flight: dict[int, _Request] = {}
        self._next_request = 1
        self._lost: ConnectionLost | None = None
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

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._lost is None

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        conn = await FrameConnection.connect(
            self.address, DEFAULT_MAX_FRAME_BYTES, self._timeout, self._tls, self._server_name
        )
        conn.send(encode_hello(Hello("", "client", "", token=self._token)))
        try:
            frame = await conn.recv(self._timeout)
        except ConnectionLost:
            await conn.close()
            raise
        if frame.type == FrameType.ERROR:
            await conn.close()
            raise ConnectionLost(
                f"{self.address} refused the client: {decode_error(frame).message}"
            )
        self.site = decode_hello(frame).site
        self._conn = conn
        self._lost = None
        self._reader = asyncio.create_task(self._read_answers())

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
        fields = dict(headers or {})
        if self.guard is not None:
            self.guard.check(self.site)
            fields[KEY_HEADER] = self.guard.routing_key
            fields[REGION_HEADER] = self.guard.region
        draft: Draft = (id or self._ids.new(), type, key, fields, payload)
        return await self._enqueue(draft)

    async def publish_many(self, drafts: Sequence[tuple[str, str, bytes]]) -> list[Ack]:
        """Publish (type, key, payload) triples as one batch; see `publish_batch`."""
        return await self.publish_batch([(self._ids.new(), t, k, {}, p) for t, k, p in drafts])

    async def publish_batch(self, drafts: Sequence[Draft]) -> list[Ack]:
        """Publish drafts `(id, type, key, headers, payload)` in as few frames as fit, with one
        future per frame instead of one per message: the fast path for bulk writers. An empty
        id gets a fresh one here. Returns one Ack per draft, in order; if the site refuses any
        draft, raises `BatchRejected` carrying every outcome (the others were journaled)."""
        self._check_connected()
        if self.guard is not None:
            self.guard.check(self.site)
            routed = {KEY_HEADER: self.guard.routing_key, REGION_HEADER: self.guard.region}
            drafts = [(d[0], d[1], d[2], {**d[3], **routed}, d[4]) for d in drafts]
        new_id = self._ids.new
        waits = []
        for start in range(0, len(drafts), MAX_DRAFTS_PER_FRAME):
            chunk = [
                d if d[0] else (new_id(), d[1], d[2], d[3], d[4])
                for d in drafts[start : start + MAX_DRAFTS_PER_FRAME]
            ]
            batch: asyncio.Future[list[Ack]] = asyncio.get_running_loop().create_future()
            self._send(_Request([d[0] for d in chunk], None, batch), chunk)
            waits.append(batch)
        acks: list[Ack] = []
        for part in await asyncio.gather(*waits):
            acks.extend(part)
        return acks

    def _check_connected(self) -> None:
        if self._conn is None or self._lost is not None:
            raise self._lost or ConnectionLost("the client is not connected; call connect()")

    def _enqueue(self, draft: Draft) -> asyncio.Future[Ack]:
        self._check_connected()
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self._queue.append((draft, future))
        self._queue_bytes += len(draft[4]) + len(draft[2]) + 64
        if len(self._queue) >= MAX_DRAFTS_PER_FRAME or self._queue_bytes >= MAX_FRAME_PAYLOAD_BYTES:
            self._send_queued()
        elif not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._send_queued)
        return future

    def _send_queued(self) -> None:
        self._scheduled = False
        if not self._queue or self._conn is None:
            return
        queued, self._queue, self._queue_bytes = self._queue, [], 0
        request = _Request([d[0] for d, _ in queued], [f for _, f in queued], None)
        self._send(request, [draft for draft, _ in queued])

    def _send(self, request: _Request, drafts: list[Draft]) -> None:
        number = self._next_request
        self._next_request += 1
        self._in_flight[number] = request
        try:
            assert self._conn is not None
            self._conn.send(encode_publish(number, drafts))
        except ConnectionLost as exc:
            self._fail_all(exc)

    async def _read_answers(self) -> None:
        assert self._conn is not None
        try:
            while True:
                frame = await self._conn.recv()
                if frame.type == FrameType.PUBLISHED:
                    self._settle(*decode_published(frame))
                elif frame.type == FrameType.ERROR:
                    error = decode_error(frame)
                    raise ConnectionLost(f"{self.site} closed the connection: {error.message}")
                elif frame.type != FrameType.HEARTBEAT:
                    raise ProtocolError(f"unexpected {frame.type.name} frame from {self.site}")
        except (ConnectionLost, ProtocolError) as exc:
            self._fail_all(ConnectionLost(f"{exc}; outcome of unanswered publishes is unknown"))

    def _settle(self, number: int, results: list[Any]) -> None:
        request = self._in_flight.pop(number, None)
        if request is None or len(request.ids) != len(results):
            raise ProtocolError(f"answer to unknown request {number}")
        site = self.site
        outcomes: list[Ack | RejectedError | OutcomeUnknown] = [
            Ack(id_, site, r[1], r[2], bool(r[3]), r[4] if len(r) > 4 else None)
            if r[0] == RESULT_OK
            else _refusal(r)
            for id_, r in zip(request.ids, results, strict=True)
        ]
        if request.batch is not None:
            if not request.batch.done():
                refused = [o for o in outcomes if isinstance(o, RejectedError)]
                unknown = [o for o in outcomes if isinstance(o, OutcomeUnknown)]
                if refused:
                    request.batch.set_exception(BatchRejected(outcomes))
                elif unknown:
                    message = f"{len(unknown)} of {len(outcomes)} drafts: {unknown[0]}"
                    request.batch.set_exception(OutcomeUnknown(message, outcomes))
                else:
                    request.batch.set_result(outcomes)  # type: ignore[arg-type]
            return
        assert request.futures is not None
        for future, outcome in zip(request.futures, outcomes, strict=True):
            if future.done():
                continue
            if isinstance(outcome, RejectedError | OutcomeUnknown):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def _fail_all(self, exc: ConnectionLost) -> None:
        self._lost = exc
        pending: list[asyncio.Future[Any]] = [f for _, f in self._queue]
        for request in self._in_flight.values():
            pending += request.futures or []
            if request.batch is not None:
                pending.append(request.batch)
        self._in_flight.clear()
        self._queue.clear()
        for future in pending:
            if not future.done():
                future.set_exception(exc)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
        self._fail_all(ConnectionLost("the client was closed"))
