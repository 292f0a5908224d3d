"""Keep-alive HTTP/1.1 to the upstreams: a sans-I/O response parser and a pool of connections
per upstream, what the live router forwards over (a general-purpose HTTP client spent most of
the router's time per request: docs/benchmarks.md).

    pool = UpstreamPool(timeout_s=30.0)
    answer = await pool.exchange(address, request_bytes)   # an UpstreamResponse
    pool.close()

One request in flight per connection; a connection goes back to the pool when its answer is
complete and both sides keep it alive. A replayable request (an idempotent method) sent on a
reused connection that the upstream had closed meanwhile (no byte of the answer came) is sent
once more on a new connection; one that is not (POST, PATCH: the upstream may have acted on it)
is never sent again, and is only given an idle connection used within the last
`FRESH_FOR_WRITES_S` (shorter than the idle timeouts of common app servers, 2-75 s), else a
new one. A
failure raises `ConnectionLost` (the connection closed before the answer was complete),
`ProtocolError` (the upstream's answer is not HTTP/1.x), `OSError` (no connection) or
`TimeoutError` (no connection, or no complete answer, within `timeout_s`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import cast

from multiactive.errors import ConnectionLost, ProtocolError
from multiactive.model.topology import Address

MAX_HEAD_BYTES = 64 * 1024
MAX_IDLE_PER_UPSTREAM = 512
FRESH_FOR_WRITES_S = 1.0
NO_BODY_STATUSES = frozenset({204, 304})
_HEAD_END = b"\r\n\r\n"


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    headers: list[tuple[str, str]]  # as sent, in order (names as the upstream spelled them)
    body: bytes
    keep_alive: bool


class ResponseParser:
    """Bytes in, one complete `UpstreamResponse` out (sans-I/O): Content-Length, chunked or
    read-until-close bodies; interim 1xx answers skipped. `head_only`: the answer to a HEAD."""

    __slots__ = ("_body", "_buffer", "_head_only", "_headers", "_keep_alive", "_mode",
                 "_remaining", "_status", "started")  # fmt: skip

    def __init__(self, head_only: bool = False) -> None:
        self._buffer = bytearray()
        self._body = bytearray()
        self._head_only = head_only
        self._headers: list[tuple[str, str]] = []
        self._status = 0
        self._keep_alive = True
        self._mode = "head"  # head | length | chunk-size | chunk-data | trailers | close
        self._remaining = 0
        self.started = False  # a byte of the answer came

    def feed(self, data: bytes) -> UpstreamResponse | None:
        """The answer once it is complete, else None."""
        if data:
            self.started = True
        self._buffer += data
        if self._mode == "head" and not self._parse_head():
            return None
        return self._parse_body()

    def end(self) -> UpstreamResponse:
        """The upstream closed the connection: the answer if its body ran up to the close."""
        if self._mode != "close":
            raise ConnectionLost(
                "the upstream closed the connection before its answer was complete"
            )
        self._body += self._buffer
        self._buffer.clear()
        return self._done(bytes(self._body), keep_alive=False)

    # -- the head -----------------------------------------------------------------------

    def _parse_head(self) -> bool:
        while True:
            end = self._buffer.find(_HEAD_END)
            if end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    raise ProtocolError(f"the upstream's answer head is over {MAX_HEAD_BYTES} B")
                return False
            head = self._buffer[:end].decode("latin-1")
            del self._buffer[: end + 4]
            self._read_head(head)
            if not 100 <= self._status < 200 or self._status == 101:
                return True  # interim answers (100 Continue, 103 Early Hints) are skipped

    def _read_head(self, head: str) -> None:
        status_line, *lines = head.split("\r\n")
        version, _, rest = status_line.partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise ProtocolError(f"not an HTTP/1.x status line from the upstream: {status_line!r}")
        self._status = int(code)
        headers = []
        length: str | None = None
        chunked = False
        connection = ""
        for line in lines:
            name, colon, value = line.partition(":")
            if not colon:
                raise ProtocolError(f"not an HTTP header line from the upstream: {line!r}")
            name, value = name.strip(), value.strip()
            headers.append((name, value))
            lower = name.lower()
            if lower == "content-length":
                length = value
            elif lower == "transfer-encoding":
                chunked = "chunked" in value.lower()
            elif lower == "connection":
                connection = value.lower()
        self._headers = headers
        self._keep_alive = ("close" not in connection if version == "HTTP/1.1"
                            else "keep-alive" in connection)  # fmt: skip
        self._choose_body(length, chunked)

    def _choose_body(self, length: str | None, chunked: bool) -> None:
        if self._head_only or self._status in NO_BODY_STATUSES or self._status < 200:
            self._mode, self._remaining = "length", 0
        elif chunked:
            self._mode = "chunk-size"
        elif length is not None:
            if not length.isdigit():
                raise ProtocolError(f"the upstream sent Content-Length {length!r}")
            self._mode, self._remaining = "length", int(length)
        else:
            self._mode, self._keep_alive = "close", False

    # -- the body -----------------------------------------------------------------------

    def _parse_body(self) -> UpstreamResponse | None:
        if self._mode == "length":
            if len(self._buffer) < self._remaining:
                return None
            extra = len(self._buffer) > self._remaining  # bytes nobody asked for: do not reuse
            with memoryview(self._buffer) as view:
                body = bytes(view[: self._remaining])
            return self._done(body, keep_alive=self._keep_alive and not extra)
        if self._mode == "close":
            self._body += self._buffer
            self._buffer.clear()
            return None
        return self._parse_chunks()

    def _parse_chunks(self) -> UpstreamResponse | None:
        buffer = self._buffer
        while True:
            if self._mode == "chunk-size":
                end = buffer.find(b"\r\n")
                if end < 0:
                    return None
                size = buffer[:end].split(b";")[0].strip()
                del buffer[: end + 2]
                try:
                    self._remaining = int(size, 16)
                except ValueError:
                    raise ProtocolError(f"the upstream sent chunk size {bytes(size)!r}") from None
                self._mode = "chunk-data" if self._remaining else "trailers"
            elif self._mode == "chunk-data":
                if len(buffer) < self._remaining + 2:
                    return None
                self._body += buffer[: self._remaining]
                del buffer[: self._remaining + 2]
                self._mode = "chunk-size"
            else:
                return self._parse_trailers()

    def _parse_trailers(self) -> UpstreamResponse | None:
        if self._buffer.startswith(b"\r\n"):
            end = 2
        else:
            found = self._buffer.find(_HEAD_END)
            if found < 0:
                return None
            end = found + 4
        extra = len(self._buffer) > end
        return self._done(bytes(self._body), keep_alive=self._keep_alive and not extra)

    def _done(self, body: bytes, keep_alive: bool) -> UpstreamResponse:
        self._mode = "done"
        self._buffer, self._body = bytearray(), bytearray()  # an idle connection holds no body
        return UpstreamResponse(self._status, self._headers, body, keep_alive)


class _UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to an upstream; one request at a time."""

    def __init__(self, timeout_s: float) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0  # loop time it went back to the pool
        self._timeout_s = timeout_s
        self._parser = ResponseParser()
        self._waiter: asyncio.Future[UpstreamResponse] | None = None
        self._timer: asyncio.TimerHandle | None = None  # cheaper than asyncio.timeout()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def send(self, request: bytes, head_only: bool) -> asyncio.Future[UpstreamResponse]:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._parser = ResponseParser(head_only)
        self._waiter = loop.create_future()
        self._timer = loop.call_later(self._timeout_s, self._expire)
        self.transport.write(request)
        return self._waiter

    def _settle(self) -> asyncio.Future[UpstreamResponse] | None:
        """The waiting request's future, if any, no longer waiting (its timer stopped)."""
        waiter, self._waiter = self._waiter, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return None if waiter is None or waiter.done() else waiter

    def _expire(self) -> None:
        self._timer = None
        waiter = self._settle()
        if waiter is not None:
            waiter.set_exception(
                TimeoutError(f"no complete answer from the upstream within {self._timeout_s} s")
            )
        self.close()

    @property
    def answer_started(self) -> bool:
        return self._parser.started

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            self.close()  # bytes while no request waits: the connection cannot be trusted
            return
        try:
            answer = self._parser.feed(data)
        except ProtocolError as exc:
            self._settle()
            waiter.set_exception(exc)
            self.close()
            return
        if answer is not None:
            self._settle()
            waiter.set_result(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._settle()
        if waiter is None:
            return
        try:
            waiter.set_result(self._parser.end())
        except ConnectionLost as lost:
            waiter.set_exception(lost)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class UpstreamPool:
    """Keep-alive connections per upstream address, opened on demand and reused."""

    def __init__(
        self, timeout_s: float, max_idle: int = MAX_IDLE_PER_UPSTREAM,
        fresh_for_writes_s: float = FRESH_FOR_WRITES_S,
    ) -> None:  # fmt: skip
        self._timeout_s = timeout_s
        self._max_idle = max_idle
        self._fresh_for_writes_s = fresh_for_writes_s
        self._idle: dict[Address, list[_UpstreamConnection]] = {}
        self._open: set[_UpstreamConnection] = set()
        self.opened = 0  # connections opened, for statistics and tests

    async def exchange(
        self, address: Address, request: bytes, head_only: bool = False, replayable: bool = True
    ) -> UpstreamResponse:
        """Send `request` (a whole HTTP/1.1 request) to `address`; its complete answer
        (`timeout_s` for the connection, and again for the answer). `replayable`: it may be
        sent again when a reused connection turns out closed (an idempotent method)."""
        reused = self._idle_connection(address, None if replayable else self._fresh_for_writes_s)
        if reused is not None:
            try:
                return await self._over(reused, address, request, head_only)
            except ConnectionLost:
                if reused.answer_started or not replayable:
                    raise
                # the upstream closed the idle connection meanwhile: a new one
        fresh = await self._connect(address)
        return await self._over(fresh, address, request, head_only)

    def _idle_connection(
        self, address: Address, used_within_s: float | None
    ) -> _UpstreamConnection | None:
        """The most recently used idle connection (None: open one), if used within
        `used_within_s` when that is given."""
        idle = self._idle.get(address)
        while idle:
            connection = idle[-1]
            if connection.closed:
                idle.pop()
                self._open.discard(connection)
                continue
            if used_within_s is not None and (
                asyncio.get_running_loop().time() - connection.idle_since > used_within_s
            ):
                return None  # left in the pool for replayable requests
            return idle.pop()
        return None

    async def _connect(self, address: Address) -> _UpstreamConnection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._timeout_s):
            _, connection = await loop.create_connection(
                lambda: _UpstreamConnection(self._timeout_s), address.host, address.port
            )
        self.opened += 1
        self._open.add(connection)
        return connection

    async def _over(
        self, connection: _UpstreamConnection, address: Address, request: bytes, head_only: bool
    ) -> UpstreamResponse:
        try:
            answer = await connection.send(request, head_only)
        except BaseException:
            self._discard(connection)
            raise
        idle = self._idle.setdefault(address, [])
        if answer.keep_alive and not connection.closed and len(idle) < self._max_idle:
            connection.idle_since = asyncio.get_running_loop().time()
            idle.append(connection)
        else:
            self._discard(connection)
        return answer

    def _discard(self, connection: _UpstreamConnection) -> None:
        connection.close()
        self._open.discard(connection)

    def idle(self, address: Address) -> int:
        return sum(1 for c in self._idle.get(address, ()) if not c.closed)

    def close(self) -> None:
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        self._idle.clear()
