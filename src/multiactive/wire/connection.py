"""A framed connection over an asyncio transport: sockets only move bytes, `frames` parses them.

The transport reads straight into the decoder's buffer (`asyncio.BufferedProtocol`), so a
large frame arrives in place, with no copy between the kernel and its consumer. Received
frames wait in a queue for `recv()`; past `READ_PAUSE_BYTES` of them the transport stops
reading until the consumer catches up, so a slow consumer pushes back on the sender through
TCP. Writes go to the transport at once; `drain()` waits while it is over its high-water mark.
"""

from __future__ import annotations

import asyncio
import contextlib
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
        self.conn._ended(ConnectionLost(f"connection to {self.conn.peer} {reason}"))
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
        self.bytes_in = 0
        self.bytes_out = 0

    @classmethod
    async def connect(
        cls, address: Address, max_frame_bytes: int, timeout_s: float = 5.0
    ) -> FrameConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                _, protocol = await loop.create_connection(
                    lambda: _FrameProtocol(max_frame_bytes, _ignore), address.host, address.port
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
    address: Address, max_frame_bytes: int, on_connected: Callable[[FrameConnection], Any]
) -> asyncio.Server:
    """Listen on `address`; `on_connected` is called with each new connection."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: _FrameProtocol(max_frame_bytes, on_connected), address.host, address.port
    )


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def _ignore(conn: FrameConnection) -> None:
    """Dialed connections are used by whoever dialed them."""
