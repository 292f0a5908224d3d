"""Routing keys to buckets, exactly as nginx's `split_clients` does it.

A routing key (a user id) is hashed with MurmurHash2 (nginx's `ngx_murmur_hash2`: seed 0,
little-endian blocks) and the 32-bit hash is cut into `UNIT_SPACE` equal buckets the way
`split_clients` cuts it into parts of 0.01 %: bucket `b` holds the hashes below
`(b + 1) * 0xffffffff // UNIT_SPACE`. So the live router and an exported nginx config put
every user in the same bucket, and a range `[from, to)` of buckets is `(to - from) / 100` %
of the users.
"""

from __future__ import annotations

UNIT_SPACE = 10_000  # buckets; split_clients' finest part is 0.01 %, so 10 000 of them
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """nginx's MurmurHash2 of `data` (32 bits)."""
    length = len(data)
    h = length
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length - whole
    if rest:
        if rest == 3:
            h ^= data[whole + 2] << 16
        if rest >= 2:
            h ^= data[whole + 1] << 8
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def bucket_of_hash(value: int) -> int:
    """The bucket of a 32-bit hash: the first b with value < (b + 1) * 0xffffffff // UNIT_SPACE."""
    bucket = min(value * UNIT_SPACE // _MASK, UNIT_SPACE - 1)
    while bucket > 0 and value < bucket * _MASK // UNIT_SPACE:
        bucket -= 1
    while bucket < UNIT_SPACE - 1 and value >= (bucket + 1) * _MASK // UNIT_SPACE:
        bucket += 1
    return bucket


def bucket_of(key: str) -> int:
    """The bucket `[0, UNIT_SPACE)` of a routing key."""
    return bucket_of_hash(murmur2(key.encode()))
