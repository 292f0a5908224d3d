"""CRC-32 (zlib's polynomial) of frames, batches and partition keys.

zlib-ng (the `fast` extra) computes the same values as `zlib.crc32` about 7x faster on a
1 KiB string and 14-22x faster on 64 KiB and more, using carry-less multiplication where the
CPU has it (`benchmarks/checksum.py`, docs/benchmarks.md). Without it the standard library's
is used: the values, and so the stored and shipped bytes, are the same either way.
"""

from __future__ import annotations

try:
    from zlib_ng.zlib_ng import crc32
except ImportError:  # pragma: no cover - the fast extra is not installed
    from zlib import crc32

__all__ = ["crc32"]
