"""Request ids: unique, sortable in generation order, carrying their millisecond."""

from __future__ import annotations

import itertools
import time

import pytest

from multiactive.model.ids import (
    ALPHABET,
    ID_LENGTH,
    IdGenerator,
    id_time_ms,
    is_valid_id,
    looks_generated,
)


def test_ids_are_unique() -> None:
    """Many ids from one generator, most in the same millisecond, never repeat."""
    generator = IdGenerator()
    ids = [generator.new() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)


def test_ids_sort_in_generation_order() -> None:
    """Ids compared as plain strings sort in the order one generator made them."""
    generator = IdGenerator()
    ids = [generator.new() for _ in range(20_000)]
    assert sorted(ids) == ids
    assert all(a < b for a, b in itertools.pairwise(ids))


def test_two_generators_do_not_collide() -> None:
    """Separate generators (as in separate processes) draw different random parts."""
    first, second = IdGenerator(), IdGenerator()
    ids = {first.new() for _ in range(1000)} | {second.new() for _ in range(1000)}
    assert len(ids) == 2000


def test_id_shape_is_22_characters_of_the_ascii_ordered_alphabet() -> None:
    """A generated id is 22 characters of the ASCII-ordered base64 alphabet, recognised by
    looks_generated; the alphabet is sorted, so string order is bit order."""
    request_id = IdGenerator().new()
    assert len(request_id) == ID_LENGTH == 22
    assert set(request_id) <= set(ALPHABET)
    assert list(ALPHABET) == sorted(ALPHABET)
    assert looks_generated(request_id)


def test_id_time_ms_is_when_the_id_was_made() -> None:
    """id_time_ms gives back the wall-clock millisecond the id was generated at."""
    before = time.time_ns() // 1_000_000
    request_id = IdGenerator().new()
    after = time.time_ns() // 1_000_000
    assert before <= id_time_ms(request_id) <= after


def test_ids_made_later_sort_after_ids_made_earlier_by_another_generator() -> None:
    """Time leads the id, so an id from a later millisecond sorts after, across generators."""
    early = IdGenerator().new()
    later_generator = IdGenerator()
    while id_time_ms(later := later_generator.new()) <= id_time_ms(early):
        pass
    assert early < later


@pytest.mark.parametrize(
    ("request_id", "valid"),
    [
        ("order-42", True),
        ("x", True),
        ("a" * 128, True),
        ("", False),
        ("a" * 129, False),
        ("has space", False),
        ("tab\there", False),
        ("café", False),
    ],
)
def test_is_valid_id_accepts_printable_ascii_up_to_128(request_id: str, valid: bool) -> None:
    """Client-supplied ids must be 1..128 printable ASCII characters without spaces."""
    assert is_valid_id(request_id) is valid


@pytest.mark.parametrize("request_id", ["order-42", "0" * 25, "W" * 26, "a" * 26])
def test_looks_generated_refuses_other_shapes(request_id: str) -> None:
    """Ids of another length or outside the base32hex alphabet are not taken as generated."""
    assert not looks_generated(request_id)
