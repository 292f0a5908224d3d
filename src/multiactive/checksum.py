"""CRC-32 (zlib's polynomial) of frames, batches and partition keys.

zlib-ng (the `fast` extra) computes the same values as `zlib.crc32` 4x faster on a 1 KiB
string and 20-60x faster on a 64 KiB+ one, using carry-less multiplication where the CPU has
it (docs/benchmarks.md). Without it the standard library's is used: the values, and so the
stored and shipped bytes, are the same either way.
"""

from __future__ import annotations

try:
    from zlib_ng.zlib_ng import crc32
except ImportError:  # pragma: no cover - the fast extra is not installed
    from zlib import crc32

__all__ = ["crc32"]
