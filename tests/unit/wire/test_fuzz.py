"""The wire protocol under fuzzing: every input decodes or raises DecodeError/ProtocolError
(`multiactive.testing.fuzz`), the corpus of found inputs under tests/fuzz_corpus/ replays
clean, and Hypothesis drives the frame decoder, every body decoder, the batch parser and the
HELLO handshake."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from multiactive.errors import ProtocolError
from multiactive.testing.fuzz import (
    TARGETS,
    fuzz_batches,
    fuzz_bodies,
    fuzz_frames,
    fuzz_hello,
    run_one,
    seeds,
)
from multiactive.wire.frames import Frame, FrameType, encode_frame
from multiactive.wire.protocol import decode_hello

CORPUS = Path(__file__).resolve().parents[2] / "fuzz_corpus"

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8)
    | st.binary(max_size=8) | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(max_size=4) | st.integers(0, 9), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip


@pytest.mark.parametrize("path", sorted(CORPUS.iterdir()), ids=lambda p: p.name)
def test_the_corpus_replays_without_a_crash(path: Path) -> None:
    run_one(path.read_bytes())


def test_the_corpus_holds_every_seed_and_reaches_every_target() -> None:
    held = {p.read_bytes() for p in CORPUS.iterdir()}
    assert set(seeds()) <= held
    assert {data[0] % len(TARGETS) for data in held if data} == set(range(len(TARGETS)))


def test_a_map_key_that_is_a_map_is_a_protocol_error() -> None:
    """Found by the fuzzer: msgpack raised TypeError (unhashable key), not our error."""
    with pytest.raises(ProtocolError, match="not msgpack"):
        decode_hello(Frame(FrameType.HELLO, b"\x81\x80\xc0"))


@given(st.binary(max_size=512))
def test_any_bytes_through_every_target(data: bytes) -> None:
    run_one(data)


@given(st.lists(st.tuples(st.sampled_from(list(FrameType)), st.binary(max_size=64)), max_size=6),
       st.integers(0, 255))  # fmt: skip
def test_valid_framing_with_any_bodies(frames: list[tuple[FrameType, bytes]], step: int) -> None:
    fuzz_frames(bytes([step]) + b"".join(encode_frame(kind, body) for kind, body in frames))


@given(msgpack_values)
@settings(max_examples=100, deadline=None)
def test_any_msgpack_value_in_any_body(value: Any) -> None:
    fuzz_bodies(msgpack.packb(value, use_bin_type=True))  # each of BODY_DECODERS


@given(st.fixed_dictionaries({}, optional={
    "site": msgpack_values | st.sampled_from(["a", "b", "c", "evil"]),
    "role": msgpack_values | st.sampled_from(["push", "pull", "client", "reply"]),
    "cluster": msgpack_values | st.just("fuzz"), "origin": msgpack_values | st.just("c"),
    "heads": msgpack_values, "version": msgpack_values | st.just(1), "token": msgpack_values,
}), st.integers(0, 4))  # fmt: skip
@settings(max_examples=100, deadline=None)
def test_the_hello_handshake_refuses_or_accepts(body: dict[str, Any], names: int) -> None:
    fuzz_hello(bytes([names]) + msgpack.packb(body, use_bin_type=True))


@given(st.integers(0, 200), st.integers(0, 255), st.data())
def test_a_damaged_batch_is_a_decode_error(where: int, value: int, data: st.DataObject) -> None:
    batch = bytearray(seeds()[5][1:])
    batch[where % len(batch)] = value
    cut = data.draw(st.integers(0, len(batch)))
    fuzz_batches(bytes(batch[:cut]))
