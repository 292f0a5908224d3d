"""Request ids: globally unique, time-sortable strings (ULID-like).

An id is 128 bits: 48 bits of Unix milliseconds, then 80 bits that are random at the first id
of each millisecond and incremented for the next ones, so ids made by one generator sort in the
order they were made. They are written as 22 characters of base64 over an alphabet in ASCII
order (`.`, digits, upper case, `_`, lower case), so comparing ids as plain strings compares
their bits. (Not `-`: ids of this era start with the first character of the alphabet, and an
id starting with `-` reads as an option on a command line.) Encoding runs in C (binascii and
bytes.translate): about 0.3 us per id, which matters to a client making 100 000 of them a
second.
"""

from __future__ import annotations

import binascii
import os
import time

ID_LENGTH = 22
ALPHABET = ".0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
_STANDARD = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_SORTED = ALPHABET.encode("ascii")
_ENCODE = bytes.maketrans(_STANDARD, _SORTED)
_DECODE = bytes.maketrans(_SORTED, _STANDARD)
_RANDOM_BITS = 80
_RANDOM_MASK = (1 << _RANDOM_BITS) - 1
_CHARS = frozenset(ALPHABET)


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
        raw = ((self._last_ms << _RANDOM_BITS) | self._last_random).to_bytes(16, "big")
        return binascii.b2a_base64(raw, newline=False)[:ID_LENGTH].translate(_ENCODE).decode()


def id_time_ms(request_id: str) -> int:
    """The millisecond timestamp an id was made at (for ids made by `IdGenerator`)."""
    raw = binascii.a2b_base64(request_id.encode("ascii").translate(_DECODE) + b"==")
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
    return len(request_id) == ID_LENGTH and set(request_id) <= _CHARS
