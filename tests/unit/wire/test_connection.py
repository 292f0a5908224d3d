"""FrameConnection over real loopback TCP: frames in order, timeouts, bad frames, the end."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from multiactive.errors import ConnectionLost, ProtocolError
from multiactive.model.topology import Address
from multiactive.wire.connection import READ_PAUSE_BYTES, FrameConnection, serve
from multiactive.wire.frames import Frame, FrameType, encode_frame

LIMIT = 64 * 1024 * 1024

Body = Callable[[FrameConnection, FrameConnection], Awaitable[None]]


def _pair(body: Body) -> None:
    """Run `body(dialer, accepted)` on a fresh loopback connection, then close both."""

    async def main() -> None:
        accepted: asyncio.Queue[FrameConnection] = asyncio.Queue()
        server = await serve(Address("127.0.0.1", 0), LIMIT, accepted.put_nowait)
        port = server.sockets[0].getsockname()[1]
        dialer = await FrameConnection.connect(Address("127.0.0.1", port), LIMIT)
        other = await asyncio.wait_for(accepted.get(), 5)
        try:
            await body(dialer, other)
        finally:
            await dialer.close()
            await other.close()
            server.close()

    asyncio.run(main())


def test_frames_arrive_whole_and_in_order_small_and_large() -> None:
    """Small and multi-megabyte frames sent back to back come out whole, in order."""

    async def body(dialer: FrameConnection, other: FrameConnection) -> None:
        sent = [(FrameType.ACK, b"a"), (FrameType.BATCHES, b"x" * (3 << 20)), (FrameType.ACK, b"")]
        for kind, data in sent:
            dialer.send(encode_frame(kind, data))
        got = [await other.recv(5) for _ in sent]
        assert got == [Frame(kind, data) for kind, data in sent]

    _pair(body)


def test_recv_times_out_when_nothing_arrives() -> None:
    """recv(timeout) raises TimeoutError after the timeout; the connection stays usable."""

    async def body(dialer: FrameConnection, other: FrameConnection) -> None:
        with pytest.raises(TimeoutError):
            await other.recv(0.05)
        dialer.send(encode_frame(FrameType.HEARTBEAT, b"late"))
        assert (await other.recv(5)).body == b"late"

    _pair(body)


def test_a_malformed_frame_ends_receiving_with_its_reason() -> None:
    """Frames before a bad one are delivered; then recv raises ProtocolError naming why."""

    async def body(dialer: FrameConnection, other: FrameConnection) -> None:
        good = encode_frame(FrameType.ACK, b"ok")
        bad = bytearray(encode_frame(FrameType.ACK, b"payload"))
        bad[-1] ^= 0xFF
        dialer.send(good + bytes(bad))
        assert (await other.recv(5)).body == b"ok"
        with pytest.raises(ProtocolError, match="checksum mismatch"):
            await other.recv(5)

    _pair(body)


def test_the_peer_closing_is_connection_lost() -> None:
    """When the other end closes, recv raises ConnectionLost after what was sent before."""

    async def body(dialer: FrameConnection, other: FrameConnection) -> None:
        dialer.send(encode_frame(FrameType.ACK, b"last"))
        await dialer.close()
        assert (await other.recv(5)).body == b"last"
        with pytest.raises(ConnectionLost, match="closed"):
            await other.recv(5)

    _pair(body)


def test_a_slow_reader_pushes_back_and_then_gets_everything() -> None:
    """Past READ_PAUSE_BYTES of frames nobody took, the receiver stops reading (the sender's
    buffer fills, `drain` waits); once frames are taken every one arrives."""

    async def body(dialer: FrameConnection, other: FrameConnection) -> None:
        chunk = b"y" * (1 << 20)
        count = READ_PAUSE_BYTES // len(chunk) * 4
        for _ in range(count):
            dialer.send(encode_frame(FrameType.BATCHES, chunk))
        drained = asyncio.ensure_future(dialer.drain())
        await asyncio.sleep(0)
        assert dialer.write_buffered > 0  # 32 MiB: more than the pause point and TCP's buffers
        assert not drained.done()
        got = [await other.recv(10) for _ in range(count)]
        await asyncio.wait_for(drained, 10)
        assert all(frame.body == chunk for frame in got)

    _pair(body)
