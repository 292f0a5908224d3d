"""Record batches: build, parse, split, slice, codecs and every decoding failure."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from multiactive.errors import DecodeError
from multiactive.model.batch import (
    CODEC_NONE,
    CODEC_ZSTD,
    HEADER_SIZE,
    MAGIC,
    RecordBatch,
    build_batch,
    encode_body,
    parse_batch,
    slice_batch,
    split_batches,
)
from multiactive.model.message import Message, Position, Row, StreamId


def make_row(n: int, version: int | None = None, payload: bytes = b"v") -> Row:
    return (
        f"id-{n}",
        "kv.set",
        f"key-{n}",
        n if version is None else version,
        1000 + n,
        {},
        payload,
    )


def make_batch(
    origin: str = "bj", partition: int = 3, first_seq: int = 1, count: int = 3, codec: int = 0
) -> RecordBatch:
    rows = [make_row(first_seq + i) for i in range(count)]
    return build_batch(origin, partition, first_seq, rows, created_ms=5000, codec=codec)


def recrc(data: bytes) -> bytes:
    """Recompute the checksum after a deliberate edit, so a later check is reached."""
    return data[:4] + struct.pack(">I", zlib.crc32(data[8:])) + data[8:]


def test_build_then_parse_returns_an_equal_batch() -> None:
    """parse_batch reads back every header field and the exact bytes build_batch wrote."""
    batch = make_batch(origin="gz-telecom", partition=7, first_seq=41, count=4)
    parsed = parse_batch(batch.data)
    assert parsed == batch
    assert (parsed.origin, parsed.partition, parsed.first_seq, parsed.count) == (
        "gz-telecom",
        7,
        41,
        4,
    )
    assert parsed.last_seq == 44
    assert parsed.created_ms == 5000
    assert parsed.stream == StreamId("gz-telecom", 7)
    assert parsed.size == len(batch.data)


def test_batch_header_layout_starts_with_magic_format_and_codec() -> None:
    """The stored bytes start with the documented magic, format 1 and the codec byte."""
    batch = make_batch(codec=CODEC_NONE)
    assert batch.data[:2] == MAGIC
    assert batch.data[2] == 1
    assert batch.data[3] == CODEC_NONE
    assert struct.unpack_from(">I", batch.data, 4)[0] == zlib.crc32(batch.data[8:])


def test_max_version_is_the_greatest_row_version() -> None:
    """A batch header carries the greatest version of its rows, whatever their order."""
    rows = [make_row(1, version=30), make_row(2, version=90), make_row(3, version=10)]
    batch = build_batch("bj", 0, 1, rows, created_ms=1)
    assert batch.max_version == 90
    assert parse_batch(batch.data).max_version == 90


def test_messages_carry_origin_partition_and_dense_seqs_from_the_header() -> None:
    """Decoded messages take origin, partition and seq from the header, in row order."""
    rows: list[Row] = [
        ("a", "kv.set", "k1", 7, 100, {"trace": "t1"}, b"one"),
        ("b", "kv.del", "k2", 8, 101, {}, b""),
    ]
    batch = parse_batch(build_batch("sh", 2, 10, rows, created_ms=1).data)
    assert list(batch.messages()) == [
        Message("a", "sh", 2, 10, "kv.set", "k1", 7, 100, b"one", {"trace": "t1"}),
        Message("b", "sh", 2, 11, "kv.del", "k2", 8, 101, b"", {}),
    ]
    assert next(batch.messages()).position == Position("sh", 2, 10)


def test_build_refuses_an_empty_batch() -> None:
    """A batch holds at least one message."""
    with pytest.raises(ValueError, match="at least one"):
        build_batch("bj", 0, 1, [], created_ms=1)


def test_split_batches_returns_each_concatenated_batch() -> None:
    """A BATCHES body (batches back to back) splits into the same batches, in order."""
    batches = [
        make_batch(partition=0, first_seq=1, count=2),
        make_batch(origin="other", partition=5, first_seq=9, count=1),
        make_batch(partition=0, first_seq=3, count=4, codec=CODEC_ZSTD),
    ]
    joined = b"".join(b.data for b in batches)
    assert split_batches(joined) == batches
    assert split_batches(memoryview(joined)) == batches
    assert split_batches(b"") == []


def test_split_batches_refuses_a_cut_short_last_batch() -> None:
    """A run whose last batch is cut short raises DecodeError instead of dropping it."""
    joined = make_batch().data + make_batch(first_seq=4).data
    with pytest.raises(DecodeError, match="cut short"):
        split_batches(joined[:-1])


@given(
    st.lists(
        st.tuples(st.text(max_size=8), st.integers(0, 2**63 - 1), st.binary(max_size=64)),
        min_size=1,
        max_size=20,
    ),
    st.sampled_from([CODEC_NONE, CODEC_ZSTD]),
)
def test_rows_round_trip_through_build_and_parse(
    values: list[tuple[str, int, bytes]], codec: int
) -> None:
    """Any rows come back unchanged from a parsed batch, with either codec."""
    rows: list[Row] = [
        (f"id{i}", "kv.set", key, version, i, {"h": key}, payload)
        for i, (key, version, payload) in enumerate(values)
    ]
    batch = parse_batch(build_batch("bj", 1, 1, rows, created_ms=1, codec=codec).data)
    assert [tuple(r) for r in batch.rows()] == rows


def test_zstd_codec_compresses_and_round_trips() -> None:
    """A zstd batch is marked codec 1, is smaller for repetitive payloads and decodes the same."""
    rows = [make_row(i, payload=b"abc" * 300) for i in range(1, 21)]
    plain = build_batch("bj", 0, 1, rows, created_ms=1, codec=CODEC_NONE)
    packed = build_batch("bj", 0, 1, rows, created_ms=1, codec=CODEC_ZSTD)
    assert packed.data[3] == CODEC_ZSTD
    assert packed.size < plain.size // 4
    parsed = parse_batch(packed.data)
    assert parsed.codec == CODEC_ZSTD
    assert list(parsed.messages()) == list(plain.messages())


def test_parse_refuses_a_checksum_mismatch() -> None:
    """One flipped body byte makes parse_batch raise a DecodeError naming the checksum."""
    data = bytearray(make_batch(partition=3, first_seq=1).data)
    data[-1] ^= 0xFF
    with pytest.raises(DecodeError, match=r"checksum mismatch \(partition 3, seq 1\)"):
        parse_batch(bytes(data))


def test_parse_refuses_a_changed_header_field_through_the_checksum() -> None:
    """The checksum covers the header fields after it: an edited first_seq is caught."""
    data = bytearray(make_batch(first_seq=1).data)
    struct.pack_into(">Q", data, 12, 2)
    with pytest.raises(DecodeError, match="checksum mismatch"):
        parse_batch(bytes(data))


def test_parse_refuses_bad_magic() -> None:
    """Bytes that do not start with the batch magic are refused, naming the magic."""
    data = b"XY" + make_batch().data[2:]
    with pytest.raises(DecodeError, match=r"magic is b'XY', expected b'MB'"):
        parse_batch(data)


def test_parse_refuses_an_unknown_format() -> None:
    """A batch format this build does not read is refused, naming the format."""
    data = bytearray(make_batch().data)
    data[2] = 9
    with pytest.raises(DecodeError, match="format 9 is not supported"):
        parse_batch(bytes(data))


def test_parse_refuses_an_unknown_codec() -> None:
    """A codec number other than none or zstd is refused, naming the codec."""
    data = bytearray(make_batch().data)
    data[3] = 7
    with pytest.raises(DecodeError, match="codec 7 is unknown"):
        parse_batch(bytes(data))


@pytest.mark.parametrize("keep", [0, 1, HEADER_SIZE - 1])
def test_parse_refuses_a_truncated_header(keep: int) -> None:
    """Fewer bytes than a header raise DecodeError saying how many the header needs."""
    with pytest.raises(DecodeError, match=f"header needs {HEADER_SIZE} bytes, only {keep}"):
        parse_batch(make_batch().data[:keep])


def test_parse_refuses_a_truncated_body() -> None:
    """A batch cut inside its body raises DecodeError saying it is cut short."""
    data = make_batch().data
    with pytest.raises(DecodeError, match="cut short"):
        parse_batch(data[:-3])


def test_parse_refuses_trailing_bytes() -> None:
    """Bytes after the declared end of a single batch raise DecodeError counting them."""
    with pytest.raises(DecodeError, match="2 trailing bytes"):
        parse_batch(make_batch().data + b"\x00\x00")


def test_parse_refuses_seqs_that_do_not_start_at_one() -> None:
    """A header declaring seq 0 or an empty batch is refused even with a valid checksum."""
    data = bytearray(make_batch().data)
    struct.pack_into(">Q", data, 12, 0)
    with pytest.raises(DecodeError, match="seqs start at 1"):
        parse_batch(recrc(bytes(data)))
    data = bytearray(make_batch().data)
    struct.pack_into(">I", data, 20, 0)
    with pytest.raises(DecodeError, match="seqs start at 1"):
        parse_batch(recrc(bytes(data)))


def test_parse_refuses_an_origin_that_is_not_utf8() -> None:
    """An origin name whose bytes are not UTF-8 is refused, naming the origin."""
    data = bytearray(make_batch(origin="ab").data)
    data[HEADER_SIZE] = 0xFF
    with pytest.raises(DecodeError, match="origin name is not UTF-8"):
        parse_batch(recrc(bytes(data)))


def test_rows_refuses_a_body_whose_count_differs_from_the_header() -> None:
    """Decoding a body holding fewer rows than the header declares raises DecodeError."""
    rows = [make_row(1), make_row(2)]
    batch = build_batch("bj", 0, 1, rows, created_ms=1, body=encode_body(rows[:1]))
    with pytest.raises(DecodeError, match="declares 2 messages, its body holds 1"):
        parse_batch(batch.data).rows()


def test_rows_refuses_a_body_that_is_not_msgpack() -> None:
    """A body that is not msgpack raises DecodeError naming the batch, not a msgpack error."""
    batch = build_batch("bj", 0, 1, [make_row(1)], created_ms=1, body=b"\xc1")
    with pytest.raises(DecodeError, match="body"):
        parse_batch(batch.data).rows()


def test_rows_refuses_a_zstd_body_that_does_not_decompress() -> None:
    """A zstd batch whose body is not zstd data raises DecodeError, not a zstandard error."""
    batch = build_batch("bj", 0, 1, [make_row(1)], created_ms=1)
    data = bytearray(batch.data)
    data[3] = CODEC_ZSTD
    with pytest.raises(DecodeError, match="zstd"):
        parse_batch(bytes(data)).rows()


def test_slice_batch_keeps_the_part_from_a_seq_on() -> None:
    """slice_batch re-encodes the tail of a batch with the right first_seq, count and rows."""
    batch = make_batch(partition=4, first_seq=10, count=5)
    tail = slice_batch(batch, 13)
    assert (tail.origin, tail.partition, tail.first_seq, tail.count) == ("bj", 4, 13, 2)
    assert tail.created_ms == batch.created_ms
    assert [m.id for m in tail.messages()] == ["id-13", "id-14"]
    assert [m.seq for m in tail.messages()] == [13, 14]
    assert list(tail.messages()) == list(batch.messages())[3:]
    assert tail.max_version == 14
    assert parse_batch(tail.data) == tail


def test_slice_batch_keeps_the_codec() -> None:
    """A sliced zstd batch is still zstd-compressed."""
    tail = slice_batch(make_batch(count=4, codec=CODEC_ZSTD), 2)
    assert tail.codec == CODEC_ZSTD
    assert [m.seq for m in tail.messages()] == [2, 3, 4]


@pytest.mark.parametrize("seq", [0, 10, 15, 20])
def test_slice_batch_refuses_a_seq_not_strictly_inside(seq: int) -> None:
    """Slicing at the first seq or outside the batch is a caller error."""
    with pytest.raises(ValueError, match=r"is not inside batch 10\.\.14"):
        slice_batch(make_batch(first_seq=10, count=5), seq)


def test_a_zstd_bomb_is_refused_before_it_is_decompressed() -> None:
    """A few KiB of zstd that claim 300 MiB: a DecodeError, not 300 MiB of memory."""
    import zstandard

    from multiactive.model.batch import CODEC_ZSTD, MAX_DECOMPRESSED_BYTES, _assemble

    bomb = zstandard.ZstdCompressor().compress(b"\0" * (MAX_DECOMPRESSED_BYTES + (44 << 20)))
    batch = _assemble("bj", 0, 1, 1, 1, 1, CODEC_ZSTD, bomb)  # a valid checksum over it
    with pytest.raises(DecodeError, match="zstd body claims 300 MiB"):
        list(parse_batch(batch.data).messages())
