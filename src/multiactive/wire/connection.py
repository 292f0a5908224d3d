"""A framed connection over asyncio streams: sockets only move bytes, `frames` parses them."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from multiactive.errors import ConnectionLost, ProtocolError
from multiactive.model.topology import Address
from multiactive.wire.frames import Frame, FrameDecoder
from multiactive.wire.protocol import encode_error

READ_CHUNK_BYTES = 256 * 1024
WRITE_HIGH_WATER_BYTES = 4 * 1024 * 1024


class FrameConnection:
    """One TCP connection carrying frames; `recv()` raises `ConnectionLost` at end of stream."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_frame_bytes: int
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._decoder = FrameDecoder(max_frame_bytes)
        self._ready: deque[Frame] = deque()
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.bytes_in = 0
        self.bytes_out = 0

    @classmethod
    async def connect(
        cls, address: Address, max_frame_bytes: int, timeout_s: float = 5.0
    ) -> FrameConnection:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(address.host, address.port, limit=READ_CHUNK_BYTES),
                timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            raise ConnectionLost(f"cannot connect to {address}: {exc or 'timed out'}") from exc
        _tune_socket(writer)
        return cls(reader, writer, max_frame_bytes)

    async def recv(self) -> Frame:
        while not self._ready:
            try:
                data = await self._reader.read(READ_CHUNK_BYTES)
            except OSError as exc:
                raise ConnectionLost(f"connection to {self.peer} failed: {exc}") from exc
            if not data:
                raise ConnectionLost(f"connection to {self.peer} closed by the peer")
            self.bytes_in += len(data)
            self._ready.extend(self._decoder.feed(data))
        return self._ready.popleft()

    def send(self, data: bytes) -> None:
        if self._writer.is_closing():
            raise ConnectionLost(f"connection to {self.peer} is closed")
        self._writer.write(data)
        self.bytes_out += len(data)

    async def send_and_drain(self, data: bytes) -> None:
        self.send(data)
        await self.drain()

    async def drain(self) -> None:
        try:
            await self._writer.drain()
        except OSError as exc:
            raise ConnectionLost(f"connection to {self.peer} failed: {exc}") from exc

    @property
    def write_buffered(self) -> int:
        transport = self._writer.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    async def fail(self, error: ProtocolError | str, code: str = "protocol") -> None:
        """Tell the peer why, then close (best effort: the peer may be gone already)."""
        with contextlib.suppress(ConnectionLost, OSError):
            self.send(encode_error(code, str(error)))
        await self.close()

    async def close(self) -> None:
        if not self._writer.is_closing():
            self._writer.close()
        with contextlib.suppress(OSError, asyncio.CancelledError, ConnectionError):
            await asyncio.wait_for(self._writer.wait_closed(), 2.0)


def _tune_socket(writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    transport.set_write_buffer_limits(high=WRITE_HIGH_WATER_BYTES)
