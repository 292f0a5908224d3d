"""An in-process pair of connected `Connection`s: bytes sent on one end are decoded into frames
at the other by the same `FrameDecoder` that TCP uses. For tests of link sessions, ingress
and the client without sockets.

    left, right = memory_pair()
    left.send(encode_heartbeat(...))
    frame = await right.recv()
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from multiactive.errors import ConnectionLost, ProtocolError
from multiactive.wire.frames import Frame, FrameDecoder
from multiactive.wire.protocol import encode_error

DEFAULT_MAX_FRAME_BYTES = 4 * 1024 * 1024


class MemoryConnection:
    """One end of a `memory_pair`."""

    def __init__(self, peer: str, max_frame_bytes: int) -> None:
        self.peer = peer
        self.peer_names: tuple[str, ...] | None = None  # no TLS in memory
        self._decoder = FrameDecoder(max_frame_bytes)
        self._ready: deque[Frame] = deque()
        self._error: ConnectionLost | ProtocolError | None = None
        self._arrived = asyncio.Event()
        self._other: MemoryConnection | None = None
        self.closed = False
        self.sent: list[bytes] = []  # every send, in order (tests read what went out)

    def send(self, data: bytes) -> None:
        if self.closed or self._other is None or self._other.closed:
            raise ConnectionLost(f"connection to {self.peer} is closed")
        self.sent.append(bytes(data))
        self._other._feed(data)

    def _feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            buffer = self._decoder.buffer()
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            view = view[size:]
            try:
                self._ready.extend(self._decoder.filled(size))
            except ProtocolError as exc:
                self._end(exc)
                return
            if self._decoder.error is not None:
                self._end(self._decoder.error)
                return
        self._arrived.set()

    def _end(self, error: ConnectionLost | ProtocolError) -> None:
        if self._error is None:
            self._error = error
        self._arrived.set()

    async def drain(self) -> None:
        await asyncio.sleep(0)
        if isinstance(self._error, ConnectionLost):
            raise self._error

    async def recv(self, timeout_s: float | None = None) -> Frame:
        while not self._ready:
            if self._error is not None:
                raise self._error
            self._arrived.clear()
            async with asyncio.timeout(timeout_s):
                await self._arrived.wait()
        return self._ready.popleft()

    async def fail(self, error: ProtocolError | str, code: str = "protocol") -> None:
        with contextlib.suppress(ConnectionLost):
            self.send(encode_error(code, str(error)))
        await self.close()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._end(ConnectionLost(f"connection to {self.peer} closed"))
        if self._other is not None:
            self._other._end(ConnectionLost(f"connection to {self.peer} closed by the peer"))


def memory_pair(
    left: str = "left", right: str = "right", max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> tuple[MemoryConnection, MemoryConnection]:
    """Two connected ends; `left.peer` is `right`'s name and the other way round."""
    a, b = MemoryConnection(right, max_frame_bytes), MemoryConnection(left, max_frame_bytes)
    a._other, b._other = b, a
    return a, b
