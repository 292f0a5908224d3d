"""A framed connection over an asyncio transport: sockets only move bytes, `frames` parses them.

The transport reads straight into the decoder's buffer (`asyncio.BufferedProtocol`), so a
large frame arrives in place, with no copy between the kernel and its consumer. Received
frames wait in a queue for `recv()`; past `READ_PAUSE_BYTES` of them the transport stops
reading until the consumer catches up, so a slow consumer pushes back on the sender through
TCP. Writes go to the transport at once; `drain()` waits while it is over its high-water mark.

With an `ssl.SSLContext` (from `multiactive.security`), `connect` dials TLS and `serve`
watches each server handshake, so that a refused one is reported to `on_refused` with its
reason instead of vanishing into the event loop's debug log; a connection's `peer_names` are
then the DNS names of the peer's verified certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from asyncio import sslproto
from collections import deque
from collections.abc import Callable
from typing import Any, cast

from multiactive.errors import ConnectionLost, ProtocolError
from multiactive.model.topology import Address
from multiactive.wire.frames import Frame, FrameDecoder
from multiactive.wire.protocol import encode_error

WRITE_HIGH_WATER_BYTES = 4 * 1024 * 1024
READ_PAUSE_BYTES = 8 * 1024 * 1024  # received frames not taken by `recv()` yet
READ_RESUME_BYTES = 2 * 1024 * 1024
CLOSE_TIMEOUT_S = 2.0
HANDSHAKE_TIMEOUT_S = 10.0
Refused = Callable[[str, BaseException], Any]  # (peer, why) for a failed server handshake


class _FrameProtocol(asyncio.BufferedProtocol):
    """Feeds the decoder from the transport and hands frames to its `FrameConnection`."""

    def __init__(self, max_frame_bytes: int, on_connected: Callable[[FrameConnection], Any]):
        self._decoder = FrameDecoder(max_frame_bytes)
        self._on_connected = on_connected
        self.conn: FrameConnection | None = None
        self.made: asyncio.Future[FrameConnection] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = cast(asyncio.Transport, transport)  # uvloop's do not subclass asyncio's
        stream.set_write_buffer_limits(high=WRITE_HIGH_WATER_BYTES)
        self.conn = FrameConnection(stream)
        self.made.set_result(self.conn)
        self._on_connected(self.conn)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._decoder.buffer()

    def buffer_updated(self, nbytes: int) -> None:
        assert self.conn is not None
        try:
            frames = self._decoder.filled(nbytes)
        except ProtocolError as exc:
            self.conn._received_error(exc)
            return
        self.conn._received(frames, nbytes)
        if self._decoder.error is not None:  # after the frames before the bad one
            self.conn._received_error(self._decoder.error)

    def eof_received(self) -> bool:
        assert self.conn is not None
        self.conn._ended(ConnectionLost(f"connection to {self.conn.peer} closed by the peer"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is None:
            return
        reason = f"failed: {exc}" if exc is not None else "closed"
        error = ConnectionLost(f"connection to {self.conn.peer} {reason}")
        error.__cause__ = exc  # the TLS alert that ended it, for `refusal_reason`
        self.conn._ended(error)
        self.conn._lost()

    def pause_writing(self) -> None:
        assert self.conn is not None
        self.conn._pause_writing()

    def resume_writing(self) -> None:
        assert self.conn is not None
        self.conn._resume_writing()


class FrameConnection:
    """One TCP connection carrying frames; `recv()` raises `ConnectionLost` at end of stream
    and `ProtocolError` after a malformed frame (frames before it are delivered first)."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._ready: deque[Frame] = deque()
        self._ready_bytes = 0
        self._reading_paused = False
        self._error: ConnectionLost | ProtocolError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._closed = asyncio.get_running_loop().create_future()
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.peer_names = _peer_names(transport.get_extra_info("ssl_object"))
        self.bytes_in = 0
        self.bytes_out = 0

    @classmethod
    async def connect(
        cls,
        address: Address,
        max_frame_bytes: int,
        timeout_s: float = 5.0,
        tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
    ) -> FrameConnection:
        """Dial `address`; with `tls`, a TLS connection whose server certificate must name
        `server_name` (the site dialed)."""
        loop = asyncio.get_running_loop()
        extra: dict[str, Any] = {}
        if tls is not None:
            extra = {"ssl": tls, "server_hostname": server_name or address.host}
        try:
            async with asyncio.timeout(timeout_s):
                _, protocol = await loop.create_connection(
                    lambda: _FrameProtocol(max_frame_bytes, _ignore),
                    address.host,
                    address.port,
                    **extra,
                )
                return await protocol.made
        except (OSError, TimeoutError) as exc:
            raise ConnectionLost(f"cannot connect to {address}: {exc or 'timed out'}") from exc

    # -- receiving ---------------------------------------------------------------------------

    async def recv(self, timeout_s: float | None = None) -> Frame:
        """The next frame; `TimeoutError` if none arrives within `timeout_s` (a timer only
        while waiting: a frame already received costs no task and no timer)."""
        while not self._ready:
            if self._error is not None:
                raise self._error
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = None if timeout_s is None else loop.call_later(timeout_s, _time_out, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        frame = self._ready.popleft()
        self._ready_bytes -= len(frame.body)
        if self._reading_paused and self._ready_bytes <= READ_RESUME_BYTES:
            self._reading_paused = False
            self._transport.resume_reading()
        return frame

    def _received(self, frames: list[Frame], nbytes: int) -> None:
        self.bytes_in += nbytes
        if not frames:
            return
        self._ready.extend(frames)
        self._ready_bytes += sum(len(f.body) for f in frames)
        if self._ready_bytes >= READ_PAUSE_BYTES and not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()
        self._wake()

    def _received_error(self, error: ProtocolError) -> None:
        if self._error is None:
            self._error = error
        with contextlib.suppress(RuntimeError):
            self._transport.pause_reading()
        self._wake()

    def _ended(self, error: ConnectionLost) -> None:
        if self._error is None:
            self._error = error
        self._wake()
        self._resume_writing()  # a writer waiting in `drain()` learns the connection is gone

    def _lost(self) -> None:
        if not self._closed.done():
            self._closed.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- sending -----------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if self._transport.is_closing():
            raise ConnectionLost(f"connection to {self.peer} is closed")
        self._transport.write(data)
        self.bytes_out += len(data)

    async def send_and_drain(self, data: bytes) -> None:
        self.send(data)
        await self.drain()

    async def drain(self) -> None:
        if self._drained is not None:
            await asyncio.shield(self._drained)
        if isinstance(self._error, ConnectionLost):
            raise self._error

    def _pause_writing(self) -> None:
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()

    def _resume_writing(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    @property
    def write_buffered(self) -> int:
        return self._transport.get_write_buffer_size()

    async def fail(self, error: ProtocolError | str, code: str = "protocol") -> None:
        """Tell the peer why, then close (best effort: the peer may be gone already)."""
        with contextlib.suppress(ConnectionLost, OSError):
            self.send(encode_error(code, str(error)))
        await self.close()

    async def close(self) -> None:
        if not self._transport.is_closing():
            self._transport.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._closed), CLOSE_TIMEOUT_S)


async def serve(
    address: Address,
    max_frame_bytes: int,
    on_connected: Callable[[FrameConnection], Any],
    tls: Callable[[], ssl.SSLContext] | None = None,
    on_refused: Refused | None = None,
) -> asyncio.Server:
    """Listen on `address`; `on_connected` is called with each new connection. With `tls`
    (called for each connection, so a reloaded context serves the next one), only TLS
    connections are accepted; a failed handshake goes to `on_refused`."""
    loop = asyncio.get_running_loop()
    if tls is None:
        return await loop.create_server(
            lambda: _FrameProtocol(max_frame_bytes, on_connected), address.host, address.port
        )
    refused = on_refused or _ignore_refusal
    return await loop.create_server(
        lambda: _tls_protocol(_FrameProtocol(max_frame_bytes, on_connected), tls(), refused),
        address.host,
        address.port,
    )


def _tls_protocol(
    protocol: _FrameProtocol, context: ssl.SSLContext, refused: Refused
) -> asyncio.BaseProtocol:
    """The event loop's own TLS protocol (uvloop's or asyncio's) around `protocol`, as
    `create_server(ssl=...)` would make it, but with its handshake watched: a failure
    (plaintext peer, unknown CA, expired certificate...) is reported with its exception."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    tls = _watched_tls_class(type(loop).__module__)(
        loop, protocol, context, waiter, server_side=True,
        ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S,
    )  # fmt: skip

    def done(future: asyncio.Future[None]) -> None:
        exc = None if future.cancelled() else future.exception()
        if exc is not None:
            refused(tls.peer_name, exc)

    waiter.add_done_callback(done)
    return cast(asyncio.BaseProtocol, tls)


@functools.cache
def _watched_tls_class(loop_module: str) -> Any:
    """The loop's TLS protocol class, noting who connected (for the refusal's log line)."""
    base: Any = sslproto.SSLProtocol
    if loop_module.startswith("uvloop"):
        import uvloop.loop

        base = getattr(uvloop.loop, "SSLProtocol")  # noqa: B009 - not in its stubs

    class Watched(base):  # type: ignore[misc]
        peer_name = "?"

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            peer = transport.get_extra_info("peername")
            self.peer_name = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
            super().connection_made(transport)

    return Watched


def _peer_names(ssl_object: Any) -> tuple[str, ...] | None:
    """The DNS names of a TLS peer's verified certificate; () without one; None without TLS."""
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    if not cert:
        return ()
    pairs = cert.get("subjectAltName", ())
    return tuple(str(p[1]) for p in pairs if isinstance(p, tuple) and p[0] == "DNS")


def _ignore_refusal(peer: str, exc: BaseException) -> None:
    """A listener without `on_refused` only closes a refused connection."""


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def _ignore(conn: FrameConnection) -> None:
    """Dialed connections are used by whoever dialed them."""
