"""Sans-I/O framing: frames survive any split of the byte stream; bad frames are refused."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from multiactive.errors import ProtocolError
from multiactive.wire.frames import (
    FRAME_HEADER_SIZE,
    SPILL_BYTES,
    Frame,
    FrameDecoder,
    FrameType,
    encode_frame,
)

LIMIT = 64 * 1024

frames_strategy = st.lists(
    st.builds(Frame, st.sampled_from(list(FrameType)), st.binary(max_size=300)),
    max_size=8,
)


def test_frame_layout_is_length_type_crc_body() -> None:
    """An encoded frame is body length, type byte, crc32 of type and body, then the body."""
    data = encode_frame(FrameType.ACK, b"hello")
    assert FRAME_HEADER_SIZE == 9
    assert struct.unpack_from(">IBI", data) == (5, 3, zlib.crc32(b"\x03hello"))
    assert data[9:] == b"hello"


def test_decoder_returns_whole_frames_fed_at_once() -> None:
    """Several frames fed in one chunk come back in order, with types and bodies intact."""
    sent = [Frame(FrameType.HELLO, b"a"), Frame(FrameType.BATCHES, b""), Frame(FrameType.ACK, b"c")]
    decoder = FrameDecoder(LIMIT)
    assert decoder.feed(b"".join(encode_frame(f.type, f.body) for f in sent)) == sent
    assert decoder.buffered == 0


@given(frames_strategy)
def test_decoder_fed_one_byte_at_a_time(frames: list[Frame]) -> None:
    """Feeding the stream one byte at a time yields exactly the frames that were encoded."""
    stream = b"".join(encode_frame(f.type, f.body) for f in frames)
    decoder = FrameDecoder(LIMIT)
    received: list[Frame] = []
    for i in range(len(stream)):
        received += decoder.feed(stream[i : i + 1])
    assert received == frames
    assert decoder.buffered == 0


@given(frames_strategy, st.data())
def test_decoder_fed_in_random_splits(frames: list[Frame], data: st.DataObject) -> None:
    """Any split of the byte stream into chunks yields exactly the frames that were encoded."""
    stream = b"".join(encode_frame(f.type, f.body) for f in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    decoder = FrameDecoder(LIMIT)
    received: list[Frame] = []
    for chunk in chunks:
        received += decoder.feed(chunk)
    assert received == frames


def test_decoder_keeps_a_partial_frame_buffered() -> None:
    """A frame missing its last byte is held back until that byte arrives."""
    data = encode_frame(FrameType.HEARTBEAT, b"body")
    decoder = FrameDecoder(LIMIT)
    assert decoder.feed(data[:-1]) == []
    assert decoder.buffered == len(data) - 1
    assert decoder.feed(data[-1:]) == [Frame(FrameType.HEARTBEAT, b"body")]


def test_decoder_refuses_an_unknown_frame_type() -> None:
    """A type byte outside FrameType raises ProtocolError naming the type."""
    data = struct.pack(">IBI", 0, 99, zlib.crc32(b"\x63"))
    with pytest.raises(ProtocolError, match="unknown frame type 99"):
        FrameDecoder(LIMIT).feed(data)


def test_decoder_refuses_an_oversized_length_before_the_body_arrives() -> None:
    """A declared length over the limit is refused from the header alone, naming the setting."""
    header = struct.pack(">IBI", 2 * 1024 * 1024, int(FrameType.BATCHES), 0)
    with pytest.raises(ProtocolError) as caught:
        FrameDecoder(1024 * 1024).feed(header)
    message = str(caught.value)
    assert "frame of 2 MiB is over the limit of 1 MiB" in message
    assert "max_frame_bytes" in message


def test_decoder_accepts_a_frame_exactly_at_the_limit() -> None:
    """The limit is inclusive: a body of exactly max_frame_bytes decodes."""
    body = b"x" * 100
    assert FrameDecoder(100).feed(encode_frame(FrameType.BATCHES, body)) == [
        Frame(FrameType.BATCHES, body)
    ]
    with pytest.raises(ProtocolError, match="over the limit"):
        FrameDecoder(99).feed(encode_frame(FrameType.BATCHES, body))


def test_decoder_names_a_custom_setting_in_the_limit_error() -> None:
    """The setting named in an oversize error is the one the decoder was built with."""
    with pytest.raises(ProtocolError, match=r"set client_max_frame"):
        FrameDecoder(4, setting="client_max_frame").feed(encode_frame(FrameType.ACK, b"12345"))


def test_decoder_refuses_a_checksum_mismatch() -> None:
    """A flipped body byte raises ProtocolError naming the checksum and the frame type."""
    data = bytearray(encode_frame(FrameType.PUBLISH, b"payload"))
    data[-1] ^= 0x01
    with pytest.raises(ProtocolError, match=r"checksum mismatch \(PUBLISH, 7 bytes\)"):
        FrameDecoder(LIMIT).feed(bytes(data))


def test_checksum_covers_the_type_byte() -> None:
    """Changing only the type byte of a valid frame is caught as a checksum mismatch."""
    data = bytearray(encode_frame(FrameType.ACK, b"{}"))
    data[4] = int(FrameType.ERROR)
    with pytest.raises(ProtocolError, match="checksum mismatch"):
        FrameDecoder(LIMIT).feed(bytes(data))


def test_a_large_body_is_received_in_place_and_never_overwritten() -> None:
    """A large frame's body is a view into the buffer the bytes were read into (no copy), and
    bytes read after it never overwrite it: the view stays intact."""
    first = encode_frame(FrameType.BATCHES, bytes(range(256)) * 1024)  # 256 KiB body
    second = encode_frame(FrameType.BATCHES, b"\xff" * (300 * 1024))
    decoder = FrameDecoder(1 << 24)
    frames: list[Frame] = []
    stream = memoryview(first + second)
    while stream:
        space = decoder.buffer()
        count = min(len(space), len(stream), 100_000)  # the socket's reads are any size
        space[:count] = stream[:count]
        stream = stream[count:]
        frames += decoder.filled(count)
    assert [f.body for f in frames] == [first[9:], second[9:]]
    assert isinstance(frames[0].body, memoryview)
    assert len(frames[0].body.obj) >= len(first)  # type: ignore[arg-type]  # in place


def feed_in_reads(decoder: FrameDecoder, data: bytes, read: int = 65_536) -> list[Frame]:
    """Feed `data` as a socket would, through `buffer()` and `filled()`, in reads of `read`."""
    frames: list[Frame] = []
    stream = memoryview(data)
    while stream:
        space = decoder.buffer()
        count = min(len(space), len(stream), read)
        space[:count] = stream[:count]
        stream = stream[count:]
        del space
        frames += decoder.filled(count)
    return frames


def test_receive_buffers_are_used_again_once_no_body_refers_to_them() -> None:
    """Large bodies dropped after use: their buffers take the next frames (no fresh memory,
    so no page faults); twenty 1 MiB frames go through three buffers or fewer."""
    decoder = FrameDecoder(1 << 24)
    frame = encode_frame(FrameType.BATCHES, b"\x01" * (1 << 20))
    for _ in range(20):
        (got,) = feed_in_reads(decoder, frame)
        assert isinstance(got.body, memoryview)
        assert got.body == frame[9:]
        del got
    assert decoder.allocations <= 3


def test_a_buffer_a_body_still_refers_to_is_never_written_again() -> None:
    """Bodies kept (as a journal's queue keeps them until stored) keep their bytes while forty
    more frames arrive, each of other bytes."""
    decoder = FrameDecoder(1 << 24)
    frames = [encode_frame(FrameType.BATCHES, bytes([n]) * 300_000) for n in range(40)]
    kept = [f for data in frames for f in feed_in_reads(decoder, data, read=70_000)]
    assert [bytes(f.body) for f in kept] == [data[9:] for data in frames]
    assert decoder.allocations > 10  # the buffers could not be used again


def test_small_bodies_are_copies_and_the_buffer_is_reused() -> None:
    """Small frames come out as bytes of their own, so the receive buffer is filled again
    from its start instead of growing."""
    decoder = FrameDecoder(LIMIT)
    for _ in range(1000):
        (frame,) = decoder.feed(encode_frame(FrameType.ACK, b"x" * 500))
        assert isinstance(frame.body, bytes)
    assert decoder.buffered == 0
    assert decoder.allocations == 1
    assert len(decoder.buffer()) == SPILL_BYTES


def test_reads_stop_at_the_end_of_a_large_frame_and_take_the_next_header_alone() -> None:
    """A read never reaches past a large frame's end, and the next read takes a header only:
    the next large frame then starts a buffer of its own with no received body bytes to copy
    over (a read far into it copied them, 15-50 % of a catch-up's bytes)."""
    body = bytes(range(256)) * 1024  # 256 KiB
    stream = encode_frame(FrameType.BATCHES, body) * 3
    decoder = FrameDecoder(1024 * 1024)
    frames, offered, pos = [], [], 0
    while pos < len(stream):
        space = decoder.buffer()
        offered.append(len(space))
        count = min(len(space), len(stream) - pos)
        space[:count] = stream[pos : pos + count]
        pos += count
        frames += decoder.filled(count)
    assert [bytes(f.body) == body for f in frames] == [True, True, True]
    assert (
        offered
        == [SPILL_BYTES, len(body) + FRAME_HEADER_SIZE - SPILL_BYTES]
        + [
            FRAME_HEADER_SIZE,
            len(body),
        ]
        * 2
    )


def test_small_frames_after_a_large_one_are_read_in_spill_sized_reads_again() -> None:
    """Only the header right after a large frame is read alone: once a small frame follows,
    reads take up to SPILL_BYTES again (a header and a body read per small frame would double
    the reads of a link's ACKs and heartbeats)."""
    decoder = FrameDecoder(1024 * 1024)
    decoder.feed(encode_frame(FrameType.BATCHES, b"b" * (128 * 1024)))
    assert len(decoder.buffer()) == FRAME_HEADER_SIZE
    decoder.feed(encode_frame(FrameType.ACK, b"small"))
    assert len(decoder.buffer()) == SPILL_BYTES


def test_frames_before_a_bad_one_are_returned_then_the_error() -> None:
    """A good frame and a corrupted one in one read: the good one is returned, the error is
    kept in `error` and raised by the next call, so nothing received intact is dropped."""
    good = encode_frame(FrameType.ACK, b"ok")
    bad = bytearray(encode_frame(FrameType.ACK, b"body"))
    bad[-1] ^= 0xFF
    decoder = FrameDecoder(LIMIT)
    assert decoder.feed(good + bytes(bad)) == [Frame(FrameType.ACK, b"ok")]
    assert decoder.error is not None
    with pytest.raises(ProtocolError, match="checksum mismatch"):
        decoder.feed(b"")
    with pytest.raises(ProtocolError, match="checksum mismatch"):
        decoder.filled(0)


def test_an_http_answer_says_this_is_an_admin_port() -> None:
    """Bytes of an HTTP response where a frame should be: the admin port was dialed."""
    decoder = FrameDecoder(1 << 20)
    with pytest.raises(ProtocolError, match="this is an admin port"):
        decoder.feed(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")


def test_an_http_request_says_the_admin_api_is_elsewhere() -> None:
    """A browser pointed at a site's listen port is told where the admin API is."""
    decoder = FrameDecoder(1 << 20)
    with pytest.raises(ProtocolError, match="admin API and the dashboard are on the site's"):
        decoder.feed(b"GET /dashboard HTTP/1.1\r\nHost: x\r\n\r\n")
