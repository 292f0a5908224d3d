"""The journal's tail cache: serves exactly what the journal holds, bounded in bytes."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from multiactive.journal.tail import TailCache
from multiactive.model.batch import RecordBatch, build_batch
from multiactive.model.message import Row, StreamId

STREAM = StreamId("bj", 0)


def _batch(first_seq: int, count: int = 1, partition: int = 0, payload: int = 10) -> RecordBatch:
    rows: list[Row] = [
        (f"id{seq}", "kv.set", f"k{seq}", seq, 0, {}, b"x" * payload)
        for seq in range(first_seq, first_seq + count)
    ]
    return build_batch("bj", partition, first_seq, rows, 0)


def _reference(batches: list[RecordBatch], from_seq: int, max_bytes: int) -> list[RecordBatch]:
    """What a journal read returns: from the batch holding `from_seq`, at least one, then
    while the total stays within `max_bytes`."""
    out: list[RecordBatch] = []
    size = 0
    for batch in batches:
        if batch.last_seq < from_seq:
            continue
        if out and size + batch.size > max_bytes:
            break
        out.append(batch)
        size += batch.size
    return out


def test_reads_start_at_the_batch_holding_the_seq_and_stop_at_max_bytes() -> None:
    """A read from the middle of a batch returns that batch first; at least one batch even when
    it alone is over `max_bytes`; then no more than `max_bytes` in all."""
    cache = TailCache()
    batches = [_batch(1, 3), _batch(4, 3), _batch(7, 3)]
    cache.add(batches)
    assert cache.read(STREAM, 5, 1 << 20) == batches[1:]
    assert cache.read(STREAM, 4, 1) == [batches[1]]
    assert cache.read(STREAM, 1, batches[0].size + batches[1].size) == batches[:2]


def test_a_seq_outside_the_cached_run_is_not_served() -> None:
    """Below the oldest cached batch or past the newest, the cache answers None (storage has
    the truth)."""
    cache = TailCache()
    cache.add([_batch(10, 5)])
    assert cache.read(STREAM, 9, 1 << 20) is None
    assert cache.read(STREAM, 15, 1 << 20) is None
    assert cache.read(StreamId("bj", 1), 1, 1 << 20) is None


def test_a_batch_that_does_not_follow_on_starts_the_run_over() -> None:
    """The cache never serves across a hole: a non-contiguous batch drops what was cached."""
    cache = TailCache()
    cache.add([_batch(1, 2)])
    cache.add([_batch(10, 2)])
    assert cache.read(STREAM, 1, 1 << 20) is None
    assert cache.read(STREAM, 10, 1 << 20) == [_batch(10, 2)]


def test_eviction_keeps_the_cache_under_its_cap_and_the_run_contiguous() -> None:
    """Oldest batches go first once the bytes pass the cap; what is left is still served."""
    one = _batch(5000).size  # the last hundred batches are all this size
    cache = TailCache(cap_bytes=one * 100)
    batches = [_batch(seq) for seq in range(1, 5001)]
    for batch in batches:
        cache.add([batch])
    assert cache.size <= one * 100
    assert cache.read(STREAM, 4900, 1) is None
    assert cache.read(STREAM, 4901, 1 << 20) == batches[4900:]


def test_an_evicted_batch_is_let_go_at_once() -> None:
    """Nothing of the cache refers to a batch once it is evicted: the receive buffer its
    bytes are a view into can be used again (they were held until 1 024 evictions later)."""
    built = _batch(1)
    buffer = bytearray(built.data)
    cache = TailCache(cap_bytes=built.size * 2)
    cache.add([dataclasses.replace(built, data=memoryview(buffer))])
    cache.add([_batch(2), _batch(3)])
    buffer.append(0)  # resizable again: no view of it is left
    assert cache.read(STREAM, 2, 1 << 20) == [_batch(2), _batch(3)]


def test_dropped_batches_still_count_against_the_cap() -> None:
    """Batches of a run started over stay referenced until evicted, and are counted: the
    memory held never exceeds the cap, whatever the pattern of appends."""
    one = _batch(1).size
    cache = TailCache(cap_bytes=one * 10)
    for round_ in range(50):
        cache.add([_batch(1000 * round_ + seq) for seq in range(5)])  # never contiguous
    assert cache.size <= one * 10


def test_forget_stops_serving_a_stream_until_new_appends() -> None:
    """After a trim the stream is read from storage; new appends are cached again."""
    cache = TailCache()
    cache.add([_batch(1), _batch(2)])
    cache.forget([STREAM])
    assert cache.read(STREAM, 1, 1 << 20) is None
    cache.add([_batch(3)])
    assert cache.read(STREAM, 3, 1 << 20) == [_batch(3)]


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(1, 5), min_size=1, max_size=60),
    cap_batches=st.integers(1, 80),
    from_seq=st.integers(1, 300),
    max_bytes=st.integers(1, 4000),
)
def test_a_read_equals_a_journal_read_of_what_is_still_cached(
    counts: list[int], cap_batches: int, from_seq: int, max_bytes: int
) -> None:
    """For any appends, cap and read: the answer is None or exactly the journal's answer."""
    cache = TailCache(cap_bytes=cap_batches * _batch(1, 1).size)
    batches: list[RecordBatch] = []
    seq = 1
    for count in counts:
        batches.append(_batch(seq, count))
        cache.add([batches[-1]])
        seq += count
    got = cache.read(STREAM, from_seq, max_bytes)
    if got is not None:
        assert got == _reference(batches, from_seq, max_bytes)
    if from_seq <= batches[-1].last_seq and batches[-1].size <= cache.size:
        assert cache.read(STREAM, batches[-1].last_seq, max_bytes) == [batches[-1]]
