"""The router's upstream answer parser (sans-I/O): Content-Length, chunked, read-until-close
and bodiless answers, byte by byte as well as whole; keep-alive as both sides say; interim 1xx
answers skipped; broken answers refused as protocol errors."""

from __future__ import annotations

import pytest

from multiactive.errors import ConnectionLost, ProtocolError
from multiactive.routing.upstream import ResponseParser, UpstreamResponse

LENGTH = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
CHUNKED = (
    b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
    b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n"
)


def whole(data: bytes, head_only: bool = False) -> UpstreamResponse:
    answer = ResponseParser(head_only).feed(data)
    assert answer is not None
    return answer


def byte_by_byte(data: bytes) -> UpstreamResponse:
    parser = ResponseParser()
    for n in range(len(data) - 1):
        assert parser.feed(data[n : n + 1]) is None
    answer = parser.feed(data[-1:])
    assert answer is not None
    return answer


def test_a_content_length_answer_whole_and_byte_by_byte() -> None:
    for answer in (whole(LENGTH), byte_by_byte(LENGTH)):
        assert answer.status == 200
        assert answer.body == b"hello"
        assert ("Content-Type", "text/plain") in answer.headers
        assert answer.keep_alive


def test_a_chunked_answer_is_joined_and_its_trailers_dropped() -> None:
    for answer in (whole(CHUNKED), byte_by_byte(CHUNKED)):
        assert (answer.status, answer.body, answer.keep_alive) == (201, b"hello world", True)
        assert ("X-A", "1") in answer.headers


def test_an_answer_without_length_runs_to_the_close() -> None:
    parser = ResponseParser()
    assert parser.feed(b"HTTP/1.1 200 OK\r\nX: y\r\n\r\nsome") is None
    assert parser.feed(b" more") is None
    answer = parser.end()
    assert (answer.body, answer.keep_alive) == (b"some more", False)


def test_head_204_and_304_answers_have_no_body() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"
    assert whole(head, head_only=True).body == b""
    assert whole(b"HTTP/1.1 204 No Content\r\n\r\n").body == b""
    assert whole(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 4\r\n\r\n").body == b""


def test_keep_alive_follows_the_version_and_connection_header() -> None:
    assert not whole(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    ).keep_alive
    assert not whole(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive
    ten = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
    assert whole(ten).keep_alive
    extra = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab"  # bytes nobody asked for
    assert not whole(extra).keep_alive


def test_an_interim_100_continue_is_skipped() -> None:
    answer = whole(b"HTTP/1.1 100 Continue\r\n\r\n" + LENGTH)
    assert (answer.status, answer.body) == (200, b"hello")


def test_a_close_before_the_answer_is_complete_is_a_lost_connection() -> None:
    parser = ResponseParser()
    assert parser.feed(LENGTH[:-2]) is None
    assert parser.started
    with pytest.raises(ConnectionLost, match="before its answer was complete"):
        parser.end()
    with pytest.raises(ConnectionLost):
        ResponseParser().end()


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"SMTP ready\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 2xx OK\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 200 OK\r\nbroken\r\n\r\n", "not an HTTP header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "Content-Length '-1'"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
    ],
)
def test_a_broken_answer_is_a_protocol_error(data: bytes, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        ResponseParser().feed(data)


def test_an_endless_head_is_refused() -> None:
    with pytest.raises(ProtocolError, match="head is over"):
        ResponseParser().feed(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 20_000)
