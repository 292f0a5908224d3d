"""Request ids: globally unique, time-sortable strings (ULID-like).

An id is 128 bits: 48 bits of Unix milliseconds, then 80 bits that are random at the first id
of each millisecond and incremented for the next ones, so ids made by one generator sort in the
order they were made. They are written in base32hex (RFC 4648, alphabet `0-9A-V`), whose order
is the order of the bits: 26 characters, comparable as plain strings.
"""

from __future__ import annotations

import base64
import os
import time

ID_LENGTH = 26
_RANDOM_BITS = 80
_RANDOM_MASK = (1 << _RANDOM_BITS) - 1
_ALPHABET = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUV")


class IdGenerator:
    """Makes request ids; monotonic within one generator, unique across processes."""

    __slots__ = ("_last_ms", "_last_random")

    def __init__(self) -> None:
        self._last_ms = -1
        self._last_random = 0

    def new(self) -> str:
        now_ms = time.time_ns() // 1_000_000
        if now_ms > self._last_ms:
            self._last_ms = now_ms
            self._last_random = int.from_bytes(os.urandom(10), "big") >> 1
        else:
            self._last_random = (self._last_random + 1) & _RANDOM_MASK
        value = (self._last_ms << _RANDOM_BITS) | self._last_random
        return base64.b32hexencode(value.to_bytes(16, "big"))[:ID_LENGTH].decode("ascii")


def id_time_ms(request_id: str) -> int:
    """The millisecond timestamp an id was made at (for ids made by `IdGenerator`)."""
    raw = base64.b32hexdecode(request_id + "======")
    return int.from_bytes(raw[:6], "big")


def is_valid_id(request_id: str) -> bool:
    """Whether a client-supplied id is usable: 1..128 printable ASCII characters, no spaces."""
    return (
        0 < len(request_id) <= 128
        and request_id.isascii()
        and request_id.isprintable()
        and (" " not in request_id)
    )


def looks_generated(request_id: str) -> bool:
    """Whether an id has the shape `IdGenerator` makes (so `id_time_ms` applies)."""
    return len(request_id) == ID_LENGTH and set(request_id) <= _ALPHABET
