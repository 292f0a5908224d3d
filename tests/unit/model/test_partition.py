"""Key to partition: CRC-32 of the UTF-8 key modulo P, the same in every process."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from multiactive.model.partition import partition_for


@pytest.mark.parametrize(
    ("key", "partitions", "expected"),
    [
        ("user:1", 8, 2),
        ("user:2", 8, 0),
        ("status:42", 8, 6),
        ("status:42", 16, 14),
        ("北京", 8, 1),
        ("", 8, 0),
    ],
)
def test_partition_for_known_values(key: str, partitions: int, expected: int) -> None:
    """Placement is pinned: zlib.crc32(utf-8 key) % P, values computed once and frozen here."""
    assert partition_for(key, partitions) == expected


@given(st.text(), st.integers(1, 4096))
def test_partition_for_is_crc32_modulo_and_in_range(key: str, partitions: int) -> None:
    """Every key lands in 0..P-1, exactly where CRC-32 of its UTF-8 bytes says."""
    partition = partition_for(key, partitions)
    assert 0 <= partition < partitions
    assert partition == zlib.crc32(key.encode("utf-8")) % partitions
