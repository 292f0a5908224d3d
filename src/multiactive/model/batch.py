"""Record batches: the unit of storage, shipping and acknowledgement (ARCHITECTURE.md section 4).

A batch is one byte string, stored and shipped as it is:

    offset size field
    0      2    magic b"MB"
    2      1    format (1)
    3      1    codec: 0 = none, 1 = zstd
    4      4    crc32 of every byte from offset 8 to the end
    8      4    partition
    12     8    first_seq
    20     4    count (>= 1)
    24     8    created_ms (origin wall clock when the batch was built)
    32     8    max_version (greatest message version inside)
    40     4    body_len
    44     1    origin_len
    45     n    origin (UTF-8)
    45+n   m    body: msgpack array of message rows (see `model.message`), maybe compressed

All integers are big-endian. A receiver checks the header and the checksum and appends the bytes
without decoding a single message; only processors decode bodies.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack

from multiactive.checksum import crc32
from multiactive.errors import DecodeError, format_bytes
from multiactive.model.message import Message, Row, StreamId, message_from_row

MAGIC = b"MB"
FORMAT = 1
CODEC_NONE = 0
CODEC_ZSTD = 1
CODEC_NAMES = {"none": CODEC_NONE, "zstd": CODEC_ZSTD}

_PREFIX = struct.Struct(">2sBBI")
_FIELDS = struct.Struct(">IQIQQIB")
HEADER_SIZE = _PREFIX.size + _FIELDS.size  # without the origin name
_INT64_LIMIT = 1 << 63  # seqs, times and versions are stored as SQLite/Redis int64
ROW_OVERHEAD_BYTES = 48  # msgpack framing of a row and its fixed-size fields, at most
HEADER_OVERHEAD_BYTES = 6  # msgpack framing of one header name and value, at most


@dataclass(frozen=True, slots=True)
class RecordBatch:
    origin: str
    partition: int
    first_seq: int
    count: int
    created_ms: int
    max_version: int
    codec: int
    data: bytes | memoryview = field(repr=False)  # received batches are views into a frame
    # The decoded rows, when this process built the batch from them (local appends): the
    # origin's own processor then skips decoding what it has just encoded.
    built_from: Sequence[Row] | None = field(default=None, repr=False, compare=False)

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.count - 1

    @property
    def stream(self) -> StreamId:
        return StreamId(self.origin, self.partition)

    @property
    def size(self) -> int:
        return len(self.data)

    def rows(self) -> Sequence[Any]:
        """The message rows of the body, decoded (processors only)."""
        if self.built_from is not None:
            return self.built_from
        return _decode_body(self)

    def messages(self) -> Iterator[Message]:
        for offset, row in enumerate(self.rows()):
            yield message_from_row(row, self.origin, self.partition, self.first_seq + offset)


def row_bytes(id_: str, type_: str, key: str, headers: dict[str, str], payload: bytes) -> int:
    """An upper bound of the bytes a row takes in a batch body (every field counts: headers,
    ids and types can outweigh small payloads, and a batch must fit in a frame)."""
    size = len(payload) + len(id_) + _utf8_len(type_) + _utf8_len(key) + ROW_OVERHEAD_BYTES
    return size + headers_bytes(headers) if headers else size


def headers_bytes(headers: dict[str, str]) -> int:
    """The headers' share of `row_bytes`."""
    size = 0
    for name, value in headers.items():
        size += _utf8_len(name) + _utf8_len(value) + HEADER_OVERHEAD_BYTES
    return size


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


def encode_body(rows: Sequence[Row]) -> bytes:
    return msgpack.packb(rows, use_bin_type=True)


def build_batch(
    origin: str,
    partition: int,
    first_seq: int,
    rows: Sequence[Row],
    created_ms: int,
    codec: int = CODEC_NONE,
    *,
    body: bytes | None = None,
) -> RecordBatch:
    """Encode rows (or a body already encoded from them) into a stored batch."""
    if not rows:
        raise ValueError("a batch holds at least one message")
    raw = encode_body(rows) if body is None else body
    if codec == CODEC_ZSTD:
        raw = _zstd().ZstdCompressor(level=1).compress(raw)
    max_version = max(row[3] for row in rows)
    batch = _assemble(origin, partition, first_seq, len(rows), created_ms, max_version, codec, raw)
    return replace(batch, built_from=rows)


def _assemble(
    origin: str,
    partition: int,
    first_seq: int,
    count: int,
    created_ms: int,
    max_version: int,
    codec: int,
    body: bytes,
) -> RecordBatch:
    name = origin.encode("utf-8")
    fields = _FIELDS.pack(
        partition, first_seq, count, created_ms, max_version, len(body), len(name)
    )
    head = fields + name
    data = b"".join((_PREFIX.pack(MAGIC, FORMAT, codec, crc32(body, crc32(head))), head, body))
    return RecordBatch(origin, partition, first_seq, count, created_ms, max_version, codec, data)


def parse_batch(data: bytes) -> RecordBatch:
    """Check a stored or received batch (header, lengths, checksum) without decoding its body."""
    batch, end = _parse_at(memoryview(data), 0)
    if end != len(data):
        raise DecodeError(f"batch has {len(data) - end} trailing bytes after its body")
    return batch


def split_batches(data: bytes | memoryview) -> list[RecordBatch]:
    """Parse a run of concatenated batches (the body of a BATCHES frame)."""
    view = memoryview(data)
    batches: list[RecordBatch] = []
    offset = 0
    while offset < len(view):
        batch, offset = _parse_at(view, offset)
        batches.append(batch)
    return batches


def scan_batches(data: bytes | memoryview) -> tuple[list[RecordBatch], int, DecodeError | None]:
    """Parse concatenated batches as far as they are whole and valid: the batches, the offset
    where parsing stopped, and why it stopped there (None at the end of `data`). A journal
    recovering a file whose tail may be torn reads it this way."""
    view = memoryview(data)
    batches: list[RecordBatch] = []
    offset = 0
    while offset < len(view):
        try:
            batch, end = _parse_at(view, offset)
        except DecodeError as exc:
            return batches, offset, exc
        batches.append(batch)
        offset = end
    return batches, offset, None


def _parse_at(view: memoryview, offset: int) -> tuple[RecordBatch, int]:
    if len(view) - offset < HEADER_SIZE:
        raise DecodeError(
            f"batch header needs {HEADER_SIZE} bytes, only {len(view) - offset} remain"
        )
    magic, fmt, codec, crc = _PREFIX.unpack_from(view, offset)
    if magic != MAGIC:
        raise DecodeError(f"batch magic is {bytes(magic)!r}, expected {MAGIC!r}")
    if fmt != FORMAT:
        raise DecodeError(f"batch format {fmt} is not supported (this build reads {FORMAT})")
    if codec not in (CODEC_NONE, CODEC_ZSTD):
        raise DecodeError(f"batch codec {codec} is unknown (0 = none, 1 = zstd)")
    partition, first_seq, count, created_ms, max_version, body_len, name_len = _FIELDS.unpack_from(
        view, offset + _PREFIX.size
    )
    end = offset + HEADER_SIZE + name_len + body_len
    if end > len(view):
        raise DecodeError(f"batch declares {body_len} body bytes but is cut short")
    if count < 1 or first_seq < 1:
        raise DecodeError(f"batch declares seqs {first_seq}..+{count}; seqs start at 1")
    if max(first_seq + count, created_ms, max_version) >= _INT64_LIMIT:
        raise DecodeError(f"batch header field out of int64 range (partition {partition})")
    if crc32(view[offset + _PREFIX.size : end]) != crc:
        raise DecodeError(f"batch checksum mismatch (partition {partition}, seq {first_seq})")
    name_at = offset + HEADER_SIZE
    try:
        origin = bytes(view[name_at : name_at + name_len]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError("batch origin name is not UTF-8") from exc
    data = view[offset:end]
    return RecordBatch(
        origin, partition, first_seq, count, created_ms, max_version, codec, data
    ), end


def slice_batch(batch: RecordBatch, from_seq: int) -> RecordBatch:
    """The part of a batch from `from_seq` on, re-encoded (a rare repair path, not the relay)."""
    skip = from_seq - batch.first_seq
    if not 0 < skip < batch.count:
        raise ValueError(f"seq {from_seq} is not inside batch {batch.first_seq}..{batch.last_seq}")
    rows = [tuple(row) for row in batch.rows()[skip:]]
    return build_batch(
        batch.origin,
        batch.partition,
        from_seq,
        rows,
        batch.created_ms,
        batch.codec,
    )


def _decode_body(batch: RecordBatch) -> list[Any]:
    body = memoryview(batch.data)[HEADER_SIZE + len(batch.origin.encode("utf-8")) :]
    raw: bytes | memoryview = body
    if batch.codec == CODEC_ZSTD:
        zstd = _zstd()
        try:
            _check_zstd_size(batch, zstd.frame_content_size(body))
            raw = zstd.ZstdDecompressor().decompress(body)
        except zstd.ZstdError as exc:
            raise DecodeError(f"batch {batch.stream}@{batch.first_seq}: zstd body: {exc}") from exc
    try:
        rows = msgpack.unpackb(raw, raw=False, use_list=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise DecodeError(f"batch {batch.stream}@{batch.first_seq}: body: {exc}") from exc
    if not isinstance(rows, list) or len(rows) != batch.count:
        raise DecodeError(
            f"batch {batch.stream}@{batch.first_seq} declares {batch.count} messages, "
            f"its body holds {len(rows) if isinstance(rows, list) else 'no list'}"
        )
    return rows


# A zstd body says how large it decompresses to; a few KiB can claim gigabytes (a
# decompression bomb), so a claim past this is refused before any memory is taken for it.
MAX_DECOMPRESSED_BYTES = 256 * 1024 * 1024


def _check_zstd_size(batch: RecordBatch, size: int) -> None:
    if not 0 <= size <= MAX_DECOMPRESSED_BYTES:
        claim = "no size" if size < 0 else format_bytes(size)
        raise DecodeError(
            f"batch {batch.stream}@{batch.first_seq}: zstd body claims {claim}; "
            f"at most {format_bytes(MAX_DECOMPRESSED_BYTES)} with its size in the frame"
        )


def _zstd() -> Any:
    try:
        import zstandard
    except ImportError as exc:
        raise DecodeError(
            "batch codec zstd needs the zstandard package (pip install 'multiactive[zstd]')"
        ) from exc
    return zstandard
