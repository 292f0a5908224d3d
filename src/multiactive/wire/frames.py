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
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from multiactive.checksum import crc32
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
_TYPE_CRC = {int(t): crc32(bytes((t,))) for t in FrameType}


@dataclass(frozen=True, slots=True)
class Frame:
    type: FrameType
    body: bytes | memoryview  # a view into the received bytes: decoded without a copy


def encode_frame(frame_type: FrameType, body: bytes) -> bytes:
    crc = crc32(body, _TYPE_CRC[frame_type])
    return _HEADER.pack(len(body), frame_type, crc) + body


def encode_frame_of(frame_type: FrameType, parts: Sequence[bytes | memoryview]) -> bytes:
    """The frame whose body is `parts` back to back, with one copy of their bytes."""
    crc, size = _TYPE_CRC[frame_type], 0
    for part in parts:
        crc = crc32(part, crc)
        size += len(part)
    return b"".join((_HEADER.pack(size, frame_type, crc), *parts))


READ_CHUNK_BYTES = 256 * 1024  # the receive buffer for small frames
LEND_FROM_BYTES = 64 * 1024  # bodies this large are views into the buffer, smaller ones copies
SPILL_BYTES = 64 * 1024  # a read outside a large frame takes at most this much
# New buffers are sized up to a multiple of this: a frame of 1 MiB and a header gets 1.25 MiB,
# not the next power of two (2 MiB, half of it zeroed and faulted in and never filled, since
# the next large frame starts a buffer of its own).
BUFFER_GRAIN_BYTES = 256 * 1024
# Receive buffers left behind are tracked to be used again once no frame body refers to them
# (bodies live until stored, about a link window): at most SPARE_BUFFERS tracked, of which at
# most SPARE_FREE_KEPT free ones (memory kept while the link is idle).
SPARE_BUFFERS = 256  # 1 MiB frames: a 64 MiB link window and more in flight
SPARE_FREE_KEPT = 4


class FrameDecoder:
    """Incremental parser that owns the receive buffer.

    A transport reads straight into `buffer()` and reports how much arrived with `filled(n)`,
    which returns the frames completed (`feed(data)` does both, for callers holding bytes).
    Once a frame's header says it is large, the buffer is made at least its size (rounded up
    to BUFFER_GRAIN_BYTES, so that buffers fit the next frames too), so the socket writes its
    body in place and the body is handed out as a view: a large frame is never copied between
    the kernel and the journal; later bytes go after it in the same buffer. Small bodies are
    copied out and the buffer is used again.

    Buffers are used again once nothing refers to them: a buffer left behind goes to a few
    spares, and a spare is taken for new bytes only when no view of it is alive (a bytearray
    with exported views cannot be resized, which `_unshared` tries). Fresh memory costs a page
    fault per 4 KiB on first touch; at 200 MiB/s of catch-up that was half of a receiver's CPU.
    """

    __slots__ = (
        "_after_large", "_buf", "_end", "_lent", "_max_frame_bytes", "_need", "_setting",
        "_spares", "_start", "allocations", "error",
    )  # fmt: skip

    def __init__(self, max_frame_bytes: int, setting: str = "max_frame_bytes in [limits]") -> None:
        self._buf = bytearray(READ_CHUNK_BYTES)
        self._start = 0  # first byte not parsed yet
        self._end = 0  # end of the bytes received
        self._need = FRAME_HEADER_SIZE  # bytes from `_start` that the next frame needs
        self._after_large = False  # the last frame parsed was large
        self._lent = False  # a body handed out is a view into `_buf`: never write it again
        # (new bytes go after it; the buffer is only left once full)
        self._max_frame_bytes = max_frame_bytes
        self._setting = setting
        self._spares: deque[bytearray] = deque(maxlen=SPARE_BUFFERS)  # oldest first
        self.allocations = 1  # receive buffers made (the others were used again)
        self.error: ProtocolError | None = None  # the stream is broken from here on

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def buffered(self) -> int:
        return self._end - self._start

    def buffer(self) -> memoryview:
        """Where the next received bytes go (never empty). Reads stop at the end of a large
        frame, then take the next frame's header alone, and at most SPILL_BYTES otherwise:
        the bytes of a next frame that arrive with the end of one are copied when that frame
        needs a buffer of its own, and reads reaching into the next large frame copied 3.7 %
        of a catch-up's bytes (`benchmarks/receive.py`; 15 % in a simulation of 1 MiB reads)."""
        if len(self._buf) - self._start < self._need or self._end == len(self._buf):
            self._move(max(self._need, READ_CHUNK_BYTES))
        if self._need >= LEND_FROM_BYTES:
            stop = self._start + self._need
        else:  # right after a large frame, probably another: only its header
            stop = self._end + (self._need if self._after_large else SPILL_BYTES)
        return memoryview(self._buf)[self._end : stop]

    def _move(self, size: int) -> None:
        """Continue in another buffer of at least `size` bytes, holding the bytes not parsed
        yet: a spare nothing refers to any more, else a new one."""
        pending = self._buf[self._start : self._end]
        need = max(size, len(pending) + 1)
        self._spares.append(self._buf)
        spare = self._spare(need)
        if spare is None:
            spare = bytearray(-(-need // BUFFER_GRAIN_BYTES) * BUFFER_GRAIN_BYTES)
            self.allocations += 1
        self._buf = spare
        self._buf[: len(pending)] = pending
        self._start, self._end, self._lent = 0, len(pending), False

    def _spare(self, size: int) -> bytearray | None:
        """The oldest tracked buffer of at least `size` bytes that nothing refers to, if there
        is one. Bodies are stored, and let go, in the order they arrived: the scan stops at the
        first buffer still referred to. Free buffers too small for `size` are kept up to
        SPARE_FREE_KEPT."""
        spares, free = self._spares, 0
        for index, buf in enumerate(spares):
            if not _unshared(buf):
                break
            if len(buf) >= size:
                del spares[index]
                return buf
            free += 1
        for _ in range(free - SPARE_FREE_KEPT):
            spares.popleft()
        return None

    def filled(self, count: int) -> list[Frame]:
        """`count` bytes arrived in `buffer()`; return the frames now complete. A malformed
        frame raises `ProtocolError`, after the frames before it: those are returned first
        and the error is raised by the next call (and kept in `error`)."""
        if self.error is not None:
            raise self.error
        self._end += count
        frames: list[Frame] = []
        try:
            self._parse(frames)
        except ProtocolError as exc:
            self.error = exc
            if not frames:
                raise
        return frames

    def _parse(self, frames: list[Frame]) -> None:
        buf, start, end = self._buf, self._start, self._end
        view = memoryview(buf)
        while end - start >= FRAME_HEADER_SIZE:
            length, type_code, crc = _HEADER.unpack_from(buf, start)
            try:
                self._check_header(length, type_code)
            except ProtocolError as exc:
                raise _http_instead(bytes(buf[start : start + FRAME_HEADER_SIZE])) or exc from None
            stop = start + FRAME_HEADER_SIZE + length
            if stop > end:
                self._start, self._need = start, stop - start
                return
            body = view[start + FRAME_HEADER_SIZE : stop]
            if crc32(body, _TYPE_CRC[type_code]) != crc:
                raise ProtocolError(
                    f"frame checksum mismatch ({FrameType(type_code).name}, {length} bytes)"
                )
            self._after_large = length >= LEND_FROM_BYTES
            if self._after_large:
                self._lent = True
                frames.append(Frame(FrameType(type_code), body))
            else:
                frames.append(Frame(FrameType(type_code), bytes(body)))
            start = stop
        self._need = FRAME_HEADER_SIZE
        if start == end and not self._lent:
            start = end = self._end = 0  # all parsed: fill the buffer from its start again
        self._start = start

    def feed(self, data: bytes | memoryview) -> list[Frame]:
        if self.error is not None:
            raise self.error
        frames: list[Frame] = []
        view = memoryview(data)
        while view:
            space = self.buffer()
            count = min(len(space), len(view))
            space[:count] = view[:count]
            view = view[count:]
            frames += self.filled(count)
            if self.failed:
                break
        return frames

    def _check_header(self, length: int, type_code: int) -> None:
        """An unknown type or an oversized length is a ProtocolError naming it."""
        if type_code not in _TYPES:
            raise ProtocolError(f"unknown frame type {type_code}")
        if length > self._max_frame_bytes:
            raise ProtocolError(
                f"frame of {format_bytes(length)} is over the limit of "
                f"{format_bytes(self._max_frame_bytes)} (set {self._setting})"
            )


def _unshared(buf: bytearray) -> bool:
    """True when no view of `buf` is alive: only then may it be resized (here by one byte and
    back, within its allocation, so nothing is copied)."""
    try:
        del buf[-1:]
    except BufferError:
        return False
    buf.append(0)
    return True


HTTP_METHODS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ")


def _http_instead(header: bytes) -> ProtocolError | None:
    """A clearer error when the other end speaks HTTP: the wrong port was dialed."""
    if header.startswith(b"HTTP/"):
        return ProtocolError(
            "the peer answered in HTTP: this is an admin port (a site's `admin` address), "
            "not its `listen` address; connect clients and links to `listen`"
        )
    if header.startswith(HTTP_METHODS):
        return ProtocolError(
            "the peer sent an HTTP request to a site's `listen` port (the wire protocol); "
            "the admin API and the dashboard are on the site's `admin` address"
        )
    return None
