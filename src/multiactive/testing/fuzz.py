"""Fuzz targets for the wire protocol: every input decodes, or raises `DecodeError`.

`run_one(data)` is the one entry point that atheris (`benchmarks/fuzz.py`), Hypothesis
(`tests/unit/wire/test_fuzz.py`) and the corpus replay all call. The first byte picks a
target, the rest is its input:

    frames     FrameDecoder fed in chunks (sizes from the input), each frame then decoded
    bodies     every body decoder (HELLO, ACK, HEARTBEAT, ERROR, PUBLISH, PUBLISHED, BATCHES)
               on the same bytes, past the frame checksum
    batches    the batch parser: parse_batch, split_batches, scan_batches, each batch's rows
    hello      the HELLO handshake of a listener: decode, the allow-list, the topology's link
    receiver   a receiving link's state machine fed frames made of the input

Allowed outcomes: a value, or `DecodeError` (its subclass `ProtocolError` included); for the
handshake also the refusals a peer gets (`UnknownSiteError`, `AuthenticationError`). Anything
else escapes `run_one` and is a crash.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import msgpack

from multiactive.errors import AuthenticationError, DecodeError, UnknownSiteError
from multiactive.model.batch import parse_batch, scan_batches, split_batches
from multiactive.model.message import Row
from multiactive.model.topology import Topology, parse_topology
from multiactive.replication.links import LinkMonitor, link_for_hello
from multiactive.replication.receiver import ReceiverSession
from multiactive.security.tls import check_link_peer
from multiactive.wire.frames import Frame, FrameDecoder, FrameType, encode_frame
from multiactive.wire.protocol import (
    decode_ack,
    decode_error,
    decode_heartbeat,
    decode_hello,
    decode_publish,
    decode_published,
)

MAX_FRAME_BYTES = 1 << 20
ROW: Row = ("id1", "kv.set", "k", 1, 1, {}, b"v")  # a message row: id, type, key, version, ...
ALLOWED: tuple[type[BaseException], ...] = (DecodeError,)
HANDSHAKE_REFUSALS: tuple[type[BaseException], ...] = (
    DecodeError, UnknownSiteError, AuthenticationError,
)  # fmt: skip

TOPOLOGY: Topology = parse_topology(
    {
        "cluster": {"name": "fuzz", "partitions": 4},
        "sites": [{"name": n, "listen": f"127.0.0.1:{i + 1}"} for i, n in enumerate("abc")],
        "links": [{"from": "c", "to": "a", "mode": "pull"}],
    },
    source="<fuzz>",
)


def _batches(body: bytes | memoryview) -> None:
    for batch in split_batches(body):
        list(batch.messages())


BODY_DECODERS: dict[FrameType, Callable[[Frame], object]] = {
    FrameType.HELLO: decode_hello,
    FrameType.ACK: decode_ack,
    FrameType.HEARTBEAT: decode_heartbeat,
    FrameType.ERROR: decode_error,
    FrameType.PUBLISH: decode_publish,
    FrameType.PUBLISHED: decode_published,
    FrameType.BATCHES: lambda frame: _batches(frame.body),
}


def _decode(frame: Frame) -> None:
    with contextlib.suppress(*ALLOWED):
        BODY_DECODERS[frame.type](frame)


def fuzz_frames(data: bytes) -> None:
    decoder = FrameDecoder(MAX_FRAME_BYTES)
    step = (data[0] % 64 + 1) if data else 1
    try:
        for start in range(0, len(data), step):
            for frame in decoder.feed(data[start : start + step]):
                _decode(frame)
    except ALLOWED:
        pass


def fuzz_bodies(data: bytes) -> None:
    for kind in FrameType:
        _decode(Frame(kind, data))


def fuzz_batches(data: bytes) -> None:
    for parse in (parse_batch, split_batches):
        try:
            parsed = parse(data)
            for batch in parsed if isinstance(parsed, list) else [parsed]:
                list(batch.messages())
        except ALLOWED:
            pass
    batches, _, _ = scan_batches(data)
    for batch in batches:
        with contextlib.suppress(*ALLOWED):
            list(batch.messages())


def fuzz_hello(data: bytes) -> None:
    """A listener's handshake: a certificate naming one of a few names, then the HELLO."""
    names = (None, (), ("b",), ("evil",), ("a", "c"))[data[0] % 5] if data else None
    try:
        hello = decode_hello(Frame(FrameType.HELLO, data[1:]))
        if hello.role in ("push", "pull"):
            check_link_peer(names, hello.site, TOPOLOGY.site_names)
            link_for_hello(TOPOLOGY, "a", hello)
    except HANDSHAKE_REFUSALS:
        pass


def fuzz_receiver(data: bytes) -> None:
    """A receiving link (c -> a) fed one frame of each type made of the input."""
    session = ReceiverSession(LinkMonitor(TOPOLOGY.link("c", "a"), "receiver"), 10.0)
    session.start({}, 0.0)
    other = FrameType(data[0] % 7 + 1) if data else FrameType.ACK
    for kind in (FrameType.HEARTBEAT, FrameType.BATCHES, FrameType.ERROR, other):
        with contextlib.suppress(*ALLOWED):
            session.receive(Frame(kind, data), 1.0)


TARGETS: tuple[Callable[[bytes], None], ...] = (
    fuzz_frames, fuzz_bodies, fuzz_batches, fuzz_hello, fuzz_receiver,
)  # fmt: skip


def run_one(data: bytes) -> None:
    """Run the target the first byte picks on the rest; an exception escaping is a crash."""
    if not data:
        return
    TARGETS[data[0] % len(TARGETS)](data[1:])


def seeds() -> list[bytes]:
    """Well-formed inputs for every target, to start a corpus from."""
    from multiactive.model.batch import build_batch

    batch = build_batch("c", 0, 1, [ROW], 1).data
    hello = msgpack.packb({"site": "c", "role": "push", "cluster": "fuzz", "origin": "c",
                           "heads": {0: 1}, "version": 1})  # fmt: skip
    beat = msgpack.packb({"t": 5, "heads": {0: 3}, "oldest": None})
    ack = msgpack.packb({"heads": {0: 2}, "gaps": [1]})
    publish = msgpack.packb([1, [["id", "kv.set", "k", {}, b"v"]]])
    frames = b"".join(
        encode_frame(kind, body)
        for kind, body in ((FrameType.HELLO, hello), (FrameType.BATCHES, bytes(batch)),
                           (FrameType.HEARTBEAT, beat), (FrameType.ACK, ack),
                           (FrameType.PUBLISH, publish))
    )  # fmt: skip
    return [
        bytes([0]) + frames, bytes([1]) + hello, bytes([1]) + beat, bytes([1]) + ack,
        bytes([1]) + publish, bytes([2]) + bytes(batch), bytes([3, 2]) + hello,
        bytes([4, 0]) + bytes(batch), bytes([4, 1]) + beat,
    ]  # fmt: skip
