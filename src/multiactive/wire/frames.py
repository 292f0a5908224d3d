"""Framing, sans-I/O: bytes in, frames out; frames in, bytes out. No sockets here.

Every frame is

    offset size field
    0      4    body length (big-endian), at most the connection's max_frame_bytes
    4      1    frame type (see `FrameType`)
    5      4    crc32 of the type byte and the body
    9      n    body

A decoder raises `ProtocolError` with the reason on an unknown type, an oversized length or a
checksum mismatch; the connection that fed it is then closed and nothing else is touched.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum

from multiactive.errors import ProtocolError, format_bytes

_HEADER = struct.Struct(">IBI")
FRAME_HEADER_SIZE = _HEADER.size


class FrameType(IntEnum):
    HELLO = 1  # msgpack map: who is speaking, for what, and (for links) the receiver's heads
    BATCHES = 2  # concatenated record batches, as stored
    ACK = 3  # msgpack: the receiver's durable heads after appending
    HEARTBEAT = 4  # msgpack: sender's clock; keeps idle links known alive
    ERROR = 5  # msgpack: code and text; the sender closes after it
    PUBLISH = 6  # client -> site: a numbered list of drafts
    PUBLISHED = 7  # site -> client: one result per draft, same order


_TYPES = frozenset(int(t) for t in FrameType)
_TYPE_CRC = {int(t): zlib.crc32(bytes((t,))) for t in FrameType}


@dataclass(frozen=True, slots=True)
class Frame:
    type: FrameType
    body: bytes | memoryview  # a view into the received bytes: decoded without a copy


def encode_frame(frame_type: FrameType, body: bytes) -> bytes:
    crc = zlib.crc32(body, zlib.crc32(bytes((frame_type,))))
    return _HEADER.pack(len(body), frame_type, crc) + body


class FrameDecoder:
    """Incremental parser: `feed()` any slices of the byte stream, get whole frames back.

    Bytes of an incomplete frame are kept as a list of chunks and joined once, when the frame
    is complete; frame bodies are memoryviews into the joined bytes, so a large frame is
    copied once between the socket and the journal.
    """

    __slots__ = ("_chunks", "_max_frame_bytes", "_need", "_setting", "_size")

    def __init__(self, max_frame_bytes: int, setting: str = "max_frame_bytes in [limits]") -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._need = FRAME_HEADER_SIZE
        self._max_frame_bytes = max_frame_bytes
        self._setting = setting

    @property
    def buffered(self) -> int:
        return self._size

    def feed(self, data: bytes) -> list[Frame]:
        if self._chunks:
            self._chunks.append(data)
            self._size += len(data)
            if self._size < self._need:
                return []
            data = b"".join(self._chunks)
            self._chunks.clear()
        view = memoryview(data)
        frames: list[Frame] = []
        offset = 0
        size = len(data)
        self._need = FRAME_HEADER_SIZE
        while size - offset >= FRAME_HEADER_SIZE:
            length, type_code, crc = _HEADER.unpack_from(data, offset)
            self._check_header(length, type_code)
            end = offset + FRAME_HEADER_SIZE + length
            if end > size:
                self._need = end - offset
                break
            body = view[offset + FRAME_HEADER_SIZE : end]
            if zlib.crc32(body, _TYPE_CRC[type_code]) != crc:
                raise ProtocolError(
                    f"frame checksum mismatch ({FrameType(type_code).name}, {length} bytes)"
                )
            frames.append(Frame(FrameType(type_code), body))
            offset = end
        if offset < size:
            self._chunks.append(data[offset:] if offset else data)
        self._size = size - offset
        return frames

    def _check_header(self, length: int, type_code: int) -> None:
        if type_code not in _TYPES:
            raise ProtocolError(f"unknown frame type {type_code}")
        if length > self._max_frame_bytes:
            raise ProtocolError(
                f"frame of {format_bytes(length)} is over the limit of "
                f"{format_bytes(self._max_frame_bytes)} (set {self._setting})"
            )
