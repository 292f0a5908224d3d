"""A control channel between a site process and its applier process.

Messages are msgpack lists `[kind, ...]`, each sent as a 4-byte big-endian length and the
msgpack bytes, over one end of a Unix socket pair that the site made and the applier
inherited. Only the two processes of one site ever speak on it, so there is no handshake; a
message over MAX_MESSAGE_BYTES or one that is not a msgpack list is a `ProtocolError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Any

import msgpack

from multiactive.errors import ConnectionLost, ProtocolError

_LENGTH = struct.Struct(">I")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class Channel:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        return cls(reader, writer)

    def send(self, message: list[Any]) -> None:
        if self._writer.is_closing():
            raise ConnectionLost("the applier channel is closed")
        data = msgpack.packb(message, use_bin_type=True)
        self._writer.write(_LENGTH.pack(len(data)) + data)

    async def recv(self) -> list[Any]:
        try:
            (length,) = _LENGTH.unpack(await self._reader.readexactly(_LENGTH.size))
            if length > MAX_MESSAGE_BYTES:
                raise ProtocolError(f"applier channel message of {length} bytes is over the limit")
            data = await self._reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise ConnectionLost("the other end of the applier channel closed it") from exc
        try:
            message = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except (ValueError, msgpack.UnpackException) as exc:
            raise ProtocolError(f"applier channel message is not msgpack: {exc}") from exc
        if not isinstance(message, list) or not message or not isinstance(message[0], str):
            raise ProtocolError("applier channel message must be a list [kind, ...]")
        return message

    async def drain(self) -> None:
        try:
            await self._writer.drain()
        except ConnectionError as exc:
            raise ConnectionLost("the applier channel closed while sending") from exc

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError, TimeoutError):
            await asyncio.wait_for(self._writer.wait_closed(), 2.0)
