"""Typed frame bodies: each round-trips, and a peer's malformed body raises ProtocolError."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from multiactive.errors import ProtocolError
from multiactive.model.batch import build_batch, split_batches
from multiactive.wire.frames import Frame, FrameDecoder, FrameType, encode_frame
from multiactive.wire.protocol import (
    PROTOCOL_VERSION,
    RESULT_OK,
    RESULT_REFUSED,
    Ack,
    Heartbeat,
    Hello,
    decode_ack,
    decode_error,
    decode_heartbeat,
    decode_hello,
    decode_publish,
    decode_published,
    encode_ack,
    encode_batches,
    encode_error,
    encode_heartbeat,
    encode_hello,
    encode_publish,
    encode_published,
)


def one_frame(data: bytes) -> Frame:
    """Decode bytes that hold exactly one frame, as a connection would."""
    (frame,) = FrameDecoder(1 << 20).feed(data)
    return frame


def raw_frame(kind: FrameType, body: Any) -> Frame:
    return one_frame(encode_frame(kind, msgpack.packb(body, use_bin_type=True)))


def good_hello(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "site": "gz",
        "role": "pull",
        "cluster": "weibo",
        "origin": "bj",
        "heads": {0: 5},
        "version": PROTOCOL_VERSION,
    }
    body.update(changes)
    return body


def test_hello_round_trips() -> None:
    """A HELLO with heads comes back equal, partition numbers still ints."""
    hello = Hello("gz", "pull", "weibo", origin="bj", heads={0: 5, 7: 0, 3: 12},
                  partitions=8, sites=("bj", "gz"))  # fmt: skip
    frame = one_frame(encode_hello(hello))
    assert frame.type == FrameType.HELLO
    assert decode_hello(frame) == hello


@pytest.mark.parametrize("role", ["push", "pull", "client", "reply"])
def test_hello_round_trips_every_role(role: Any) -> None:
    """Every declared role survives the round trip; origin and heads default to empty."""
    hello = Hello("bj", role, "weibo")
    assert decode_hello(one_frame(encode_hello(hello))) == hello


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (["not", "a", "map"], "HELLO body must be a map"),
        (good_hello(version=2), "protocol version 2 is not supported"),
        ({k: v for k, v in good_hello().items() if k != "version"}, "protocol version None"),
        (good_hello(role="spy"), "HELLO role 'spy' is unknown"),
        (good_hello(heads=[1, 2]), "HELLO heads must map partition numbers to seqs >= 0"),
        (good_hello(heads={0: -1}), "HELLO heads must map partition numbers to seqs >= 0"),
        (good_hello(heads={"0": 1}), "HELLO heads must map partition numbers"),
        (good_hello(site=5), "HELLO site, cluster, origin and token must be strings"),
        ({k: v for k, v in good_hello().items() if k != "cluster"}, "must be strings"),
        (good_hello(partitions="8"), "HELLO partitions must be an int and sites a list"),
        (good_hello(sites=["a", 1]), "HELLO partitions must be an int and sites a list"),
    ],
)
def test_hello_refuses_malformed_bodies(body: Any, reason: str) -> None:
    """A HELLO of the wrong shape raises ProtocolError saying which part is wrong."""
    with pytest.raises(ProtocolError, match=reason):
        decode_hello(raw_frame(FrameType.HELLO, body))


def test_hello_refuses_another_frame_type() -> None:
    """decode_hello on a frame that is not HELLO raises ProtocolError naming both types."""
    with pytest.raises(ProtocolError, match="expected a HELLO frame, got ACK"):
        decode_hello(one_frame(encode_ack(Ack({0: 1}))))


def test_body_that_is_not_msgpack_is_refused() -> None:
    """A body that does not decode as msgpack raises ProtocolError naming the frame type."""
    for kind, decode in [
        (FrameType.HELLO, decode_hello),
        (FrameType.ACK, decode_ack),
        (FrameType.ERROR, decode_error),
        (FrameType.PUBLISH, decode_publish),
        (FrameType.PUBLISHED, decode_published),
    ]:
        with pytest.raises(ProtocolError, match=f"{kind.name} frame body is not msgpack"):
            decode(one_frame(encode_frame(kind, b"\xc1")))


def test_ack_round_trips() -> None:
    """An ACK's heads and gaps come back equal."""
    ack = Ack({0: 10, 5: 3}, gaps=(5,))
    frame = one_frame(encode_ack(ack))
    assert frame.type == FrameType.ACK
    assert decode_ack(frame) == ack
    assert decode_ack(one_frame(encode_ack(Ack({})))) == Ack({}, ())


@pytest.mark.parametrize(
    "body",
    [
        [1, 2],
        {"gaps": []},
        {"heads": [], "gaps": []},
        {"heads": {}, "gaps": 3},
        {"heads": {"0": 1}},
        {"heads": {0: "1"}},
        {"heads": {0: 1}, "gaps": ["0"]},
    ],
)
def test_ack_refuses_malformed_bodies(body: Any) -> None:
    """An ACK without a heads map of ints, or with gaps that are not partition numbers, fails."""
    with pytest.raises(ProtocolError, match="ACK"):
        decode_ack(raw_frame(FrameType.ACK, body))


def test_error_round_trips() -> None:
    """An ERROR frame carries its code and text."""
    frame = one_frame(encode_error("gap", "resume from 7"))
    assert frame.type == FrameType.ERROR
    error = decode_error(frame)
    assert (error.code, error.message) == ("gap", "resume from 7")


def test_error_refuses_a_body_that_is_not_a_map() -> None:
    """An ERROR body that is not a map raises ProtocolError."""
    with pytest.raises(ProtocolError, match="ERROR body must be a map"):
        decode_error(raw_frame(FrameType.ERROR, ["gap", "text"]))


def test_publish_round_trips() -> None:
    """A PUBLISH frame carries the request number and the drafts, in order."""
    drafts = [
        ("id1", "kv.set", "k1", {"ct": "text/plain"}, b"v1"),
        ("id2", "kv.del", "k2", {}, b""),
    ]
    frame = one_frame(encode_publish(42, drafts))
    assert frame.type == FrameType.PUBLISH
    request, decoded, floor = decode_publish(frame)
    assert (request, floor) == (42, 0)
    assert [tuple(d) for d in decoded] == drafts


def test_publish_carries_a_causal_floor() -> None:
    """A causal session's token travels as the PUBLISH floor."""
    assert decode_publish(one_frame(encode_publish(1, [], 12345)))[2] == 12345


@pytest.mark.parametrize("body", [{"r": 1}, [1], [1, [], 3, 4], ["1", []], [1, "drafts"]])
def test_publish_refuses_malformed_bodies(body: Any) -> None:
    """A PUBLISH that is not [request number, [drafts], floor?] raises ProtocolError."""
    with pytest.raises(ProtocolError, match=r"PUBLISH body must be \[request number, \[drafts\]"):
        decode_publish(raw_frame(FrameType.PUBLISH, body))


@pytest.mark.parametrize("floor", [-1, "9", 1.5])
def test_publish_refuses_a_floor_that_is_no_version(floor: Any) -> None:
    """A floor must be an int >= 0."""
    with pytest.raises(ProtocolError, match="PUBLISH floor must be a version"):
        decode_publish(raw_frame(FrameType.PUBLISH, [1, [], floor]))


def test_published_round_trips() -> None:
    """A PUBLISHED frame carries the request number and one result per draft, in order."""
    results = [[RESULT_OK, 3, 17, False], [RESULT_OK, 3, 9, True], [RESULT_REFUSED, "big", "x"]]
    frame = one_frame(encode_published(7, results, 99))
    assert frame.type == FrameType.PUBLISHED
    assert decode_published(frame) == (7, results, 99)


@pytest.mark.parametrize("body", [{"r": 1}, [1], [1, [], 3, 4], ["1", []], [1, "results"]])
def test_published_refuses_malformed_bodies(body: Any) -> None:
    """A PUBLISHED that is not [request number, [results], clock?] raises ProtocolError."""
    with pytest.raises(
        ProtocolError, match=r"PUBLISHED body must be \[request number, \[results\]"
    ):
        decode_published(raw_frame(FrameType.PUBLISHED, body))


def test_batches_frame_carries_stored_bytes_unchanged() -> None:
    """A BATCHES frame body is the stored batches back to back, split back into equal ones."""
    rows = [("id", "kv.set", "k", 1, 1, {}, b"v")]
    batches = [build_batch("bj", 0, 1, rows, 1), build_batch("bj", 1, 4, rows * 2, 1)]
    frame = one_frame(encode_batches(batches))
    assert frame.type == FrameType.BATCHES
    assert frame.body == batches[0].data + batches[1].data
    assert split_batches(frame.body) == batches


def test_heartbeat_carries_the_sender_clock_and_origin_heads() -> None:
    """A HEARTBEAT frame holds the sender's clock, the origin's heads and the oldest
    unacknowledged message time, and decodes back to the same values."""
    beat = Heartbeat(123456, {0: 7, 3: 9}, 1000)
    frame = one_frame(encode_heartbeat(beat))
    assert frame.type == FrameType.HEARTBEAT
    assert msgpack.unpackb(frame.body, strict_map_key=False) == {
        "t": 123456,
        "heads": {0: 7, 3: 9},
        "oldest": 1000,
    }
    assert decode_heartbeat(frame) == beat
    assert decode_heartbeat(one_frame(encode_heartbeat(Heartbeat(5)))) == Heartbeat(5)


@pytest.mark.parametrize(
    "body",
    [[1], {"t": "x"}, {"t": 1, "heads": {"0": 1}}, {"t": 1, "heads": [1]}, {"t": 1, "oldest": "x"}],
)
def test_heartbeat_refuses_malformed_bodies(body: object) -> None:
    """A HEARTBEAT body of the wrong shape raises ProtocolError."""
    frame = Frame(FrameType.HEARTBEAT, msgpack.packb(body))
    with pytest.raises(ProtocolError, match="HEARTBEAT"):
        decode_heartbeat(frame)
