"""The router's keep-alive upstream pool over real TCP, against raw HTTP/1.1 servers that
misbehave on purpose: connections are reused; an idle connection the upstream closed is
replaced without failing the request; a silent upstream times out; a broken or cut answer is a
protocol error or a lost connection, and the connection is not reused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from multiactive.errors import ConnectionLost, ProtocolError
from multiactive.model.topology import Address
from multiactive.routing.upstream import UpstreamPool

pytestmark = pytest.mark.routing

GET = b"GET /x HTTP/1.1\r\nHost: up\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def upstream(answer: Answer) -> AsyncIterator[tuple[Address, list[int]]]:
    """A raw upstream on a free port; `connections` counts the connections it accepted."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Address("127.0.0.1", port), connections
    finally:
        server.close()


async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK)


async def one_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(OK)  # says nothing of closing, then closes: an idle timeout upstream
    await writer.drain()


def test_connections_are_reused_and_a_closed_idle_one_is_replaced() -> None:
    async def main() -> None:
        pool = UpstreamPool(timeout_s=5.0)
        async with upstream(keep_alive) as (address, connections):
            for _ in range(50):
                answer = await pool.exchange(address, GET)
                assert (answer.status, answer.body) == (200, b"ok")
            assert len(connections) == pool.opened == 1
        async with upstream(one_then_close) as (address, connections):
            for _ in range(5):
                assert (await pool.exchange(address, GET)).body == b"ok"
            assert len(connections) == 5  # each request on a fresh one, none failed
        pool.close()

    asyncio.run(main())


def test_a_write_is_not_sent_again_nor_given_a_connection_idle_too_long() -> None:
    post = b"POST /x HTTP/1.1\r\nHost: up\r\nContent-Length: 1\r\n\r\nx"

    async def read_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:  # answers one request in full, then takes the next without answering it
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(1)
            writer.write(OK)
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")
            return  # and closes: the second request got no byte of an answer

    async def main() -> None:
        async with upstream(keep_alive) as (address, connections):
            pool = UpstreamPool(timeout_s=5.0, fresh_for_writes_s=0.0)
            await pool.exchange(address, GET)
            await pool.exchange(address, post, replayable=False)  # idle > 0 s: a new one
            assert len(connections) == 2
            await pool.exchange(address, GET)  # a read takes any idle connection
            assert len(connections) == 2
            pool.close()
        async with upstream(read_one) as (address, connections):
            pool = UpstreamPool(timeout_s=5.0)
            await pool.exchange(address, post, replayable=False)
            with pytest.raises(ConnectionLost):
                await pool.exchange(address, GET[:-2] + b"X: 1\r\n\r\n", replayable=False)
            assert len(connections) == 1  # not sent again
            pool.close()

    asyncio.run(main())


def test_a_silent_upstream_times_out_and_its_connection_is_dropped() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async def main() -> None:
        pool = UpstreamPool(timeout_s=0.3)
        async with upstream(silent) as (address, _):
            with pytest.raises(TimeoutError, match=r"within 0\.3 s"):
                await pool.exchange(address, GET)
            assert pool.idle(address) == 0
        pool.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("sent", "error", "text"),
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", ProtocolError, "not an HTTP/1.x status line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", ConnectionLost, "before its"),
    ],
)
def test_a_broken_or_cut_answer_fails_and_is_not_reused(
    sent: bytes, error: type[Exception], text: str
) -> None:
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(sent)
        await writer.drain()

    async def main() -> None:
        pool = UpstreamPool(timeout_s=5.0)
        async with upstream(broken) as (address, _):
            with pytest.raises(error, match=text):
                await pool.exchange(address, GET)
            assert pool.idle(address) == 0
        pool.close()

    asyncio.run(main())
