"""Stable key -> partition mapping, the same in every process and every language.

`partition = CRC-32 (IEEE 802.3, as zlib computes it) of the UTF-8 key, modulo P`. Python's
`hash()` is salted per process and must never decide placement.
"""

from __future__ import annotations

from multiactive.checksum import crc32


def partition_for(key: str, partitions: int) -> int:
    return crc32(key.encode("utf-8")) % partitions
