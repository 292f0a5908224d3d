"""Segment appends: many chunks written with gathered writes land back to back, byte-exact,
at the locations returned (more chunks than one pwritev takes, memoryviews of shared buffers,
empty chunks), and a later append continues where the previous ended."""

from __future__ import annotations

from pathlib import Path

from multiactive.journal import segments
from multiactive.journal.segments import SegmentReader, SegmentWriter, segment_path


def test_an_append_of_many_chunks_is_stored_byte_exact_at_its_locations(tmp_path: Path) -> None:
    writer = SegmentWriter(tmp_path, fsync=False)
    writer.open()
    shared = bytearray(b"".join(bytes([i % 251]) * 97 for i in range(50)))
    chunks: list[bytes | memoryview] = [
        memoryview(shared)[i * 97 : (i + 1) * 97] for i in range(50)
    ]
    chunks += [b"", bytes(range(256)) * 3] + [b"x%d" % i for i in range(segments.IOV_MAX + 5)]
    first = writer.append([b"head"])
    locations = writer.append(chunks)
    reader = SegmentReader(tmp_path)
    assert reader.read(first[0]) == b"head"
    assert [reader.read(loc) for loc in locations] == [bytes(c) for c in chunks]
    assert locations[0].offset == 4
    total = 4 + sum(len(c) for c in chunks)
    assert writer.size == total == segment_path(tmp_path, 1).stat().st_size
    writer.close()
    reader.close()
