"""The link rules, pinned on the state machines alone: no sockets, no event loop, no sleeps.

`SenderSession` (reship's rules) and `ReceiverSession` (the collector's) are fed events with
explicit times; what they answer is checked. The shells around them are tested over an
in-memory connection pair in `test_link_shells.py`.
"""

from __future__ import annotations

import pytest

from multiactive.errors import ProtocolError
from multiactive.journal.base import RemoteResult
from multiactive.model.batch import RecordBatch, build_batch
from multiactive.model.message import StreamId
from multiactive.model.topology import LinkConfig
from multiactive.replication.links import LinkMonitor
from multiactive.replication.receiver import STORE_CHUNK_BYTES, ReceiverSession
from multiactive.replication.sender import SenderSession
from multiactive.replication.window import WindowController
from multiactive.wire.frames import Frame, FrameDecoder, FrameType, encode_frame
from multiactive.wire.protocol import (
    Ack,
    Heartbeat,
    decode_ack,
    decode_heartbeat,
    encode_ack,
    encode_batches,
    encode_error,
    encode_heartbeat,
)

LINK = LinkConfig("east", "west", "push")
FLOOR, CAP = 64 * 1024, 1024 * 1024
TIMEOUT_S = 10.0


def batch(first_seq: int, count: int = 1, partition: int = 0, origin: str = "east",
          size: int = 10) -> RecordBatch:  # fmt: skip
    created, payload = 1000 + first_seq, b"x" * size
    rows = [
        (f"{origin}-{partition}-{first_seq + i}", "kv.set", "k", 1, created, {}, payload)
        for i in range(count)
    ]
    return build_batch(origin, partition, first_seq, rows, created_ms=1000 + first_seq)


def frame(data: bytes) -> Frame:
    decoder = FrameDecoder(16 << 20)
    view = decoder.buffer()
    frames = []
    while data:
        view = decoder.buffer()
        size = min(len(view), len(data))
        view[:size] = data[:size]
        data = data[size:]
        frames += decoder.filled(size)
    (only,) = frames
    return only


def ack(heads: dict[int, int], gaps: tuple[int, ...] = ()) -> Frame:
    return frame(encode_ack(Ack(heads, gaps)))


def sender(partitions: int = 2, floor: int = FLOOR, cap: int = CAP,
           stall_after_s: float = 5.0) -> SenderSession:  # fmt: skip
    monitor = LinkMonitor(LINK, "sender", stall_after_s)
    return SenderSession(monitor, partitions, WindowController(floor, cap), TIMEOUT_S)


def receiver(stall_after_s: float = 5.0) -> ReceiverSession:
    return ReceiverSession(LinkMonitor(LINK, "receiver", stall_after_s), TIMEOUT_S)


# -- sender ------------------------------------------------------------------------------


def test_sender_starts_every_partition_at_the_receivers_head_plus_one() -> None:
    s = sender()
    s.start({0: 4}, {0: 9, 1: 2}, now=0.0)
    assert list(s.reads()) == [(0, 5), (1, 1)]


def test_a_shipped_run_advances_the_cursor_and_is_in_flight_until_acknowledged() -> None:
    s = sender()
    s.start({}, {0: 3}, now=0.0)
    sent = s.ship(0, 1, [batch(1, 2), batch(3)], now=0.1)
    assert sent is not None
    assert frame(sent).type == FrameType.BATCHES
    assert s.cursor[0] == 4
    assert s.monitor.in_flight_bytes == len(sent)
    assert list(s.reads()) == []  # nothing more to send
    s.receive(ack({0: 3}), now=0.14)
    assert s.monitor.in_flight_bytes == 0
    assert s.monitor.receiver_heads[0] == 3
    assert s.heads_to_save() == {0: 3, 1: 0}
    assert s.heads_to_save() is None  # only when changed


def test_batches_that_no_longer_start_at_the_cursor_are_not_shipped() -> None:
    s = sender()
    s.start({0: 2}, {0: 9}, now=0.0)
    assert s.ship(0, 1, [batch(1)], now=0.0) is None  # read from an old cursor
    assert s.ship(0, 3, [batch(4)], now=0.0) is None  # trimmed: starts past the cursor
    assert s.ship(0, 3, [], now=0.0) is None
    assert s.cursor[0] == 3


def test_an_ack_with_a_gap_rewinds_that_partition_to_the_head_it_names() -> None:
    s = sender()
    s.start({}, {0: 10, 1: 10}, now=0.0)
    s.ship(0, 1, [batch(1, 5)], now=0.0)
    s.ship(0, 6, [batch(6, 5)], now=0.0)
    s.ship(1, 1, [batch(1, 5, partition=1)], now=0.0)
    s.receive(ack({0: 2, 1: 5}, gaps=(0,)), now=0.05)
    assert s.cursor == {0: 3, 1: 6}
    assert not s.in_flight[0]
    assert not s.in_flight[1]
    assert s.monitor.in_flight_bytes == 0
    assert list(s.reads()) == [(0, 3), (1, 6)]


def test_the_window_closes_reads_and_an_ack_reopens_it() -> None:
    s = sender(floor=3000, cap=3000)
    s.start({}, {0: 100, 1: 100}, now=0.0)
    sent = s.ship(0, 1, [batch(1, 1, size=4000)], now=0.0)
    assert sent is not None
    assert not s.window_open
    assert list(s.reads()) == []
    assert s.ship_appended([batch(2, 1)], now=0.0) == []  # appended batches wait too
    s.receive(ack({0: 1}), now=0.04)
    assert s.window_open
    assert list(s.reads())[:1] == [(0, 2)]


def test_appended_batches_ship_at_once_only_where_they_continue_the_cursor() -> None:
    s = sender()
    s.start({0: 4, 1: 0}, {0: 4}, now=0.0)
    frames = s.ship_appended([batch(5), batch(7, partition=1)], now=0.0)
    assert len(frames) == 1
    assert s.cursor == {0: 6, 1: 1}


def test_the_window_grows_while_acks_show_a_higher_rate_and_shrinks_when_it_falls() -> None:
    """L2 on a 40 ms path: 2 x delivery rate x min RTT, between floor and cap."""
    s = sender(partitions=1, floor=64 * 1024, cap=64 << 20)
    s.start({}, {0: 1_000_000}, now=0.0)
    now, seq = 0.0, 1
    for _ in range(40):  # 1 MiB per 40 ms round trip: 25 MiB/s
        sent = s.ship(0, seq, [batch(seq, 1, size=1 << 20)], now)
        assert sent is not None
        now += 0.04
        s.receive(ack({0: seq}), now)
        seq += 1
    grown = s.monitor.window_bytes
    assert grown == pytest.approx(2 * 25 * (1 << 20) * 0.04, rel=0.1)
    for _ in range(400):  # 10 s later at a tenth of the rate: old samples expire
        sent = s.ship(0, seq, [batch(seq, 1, size=100 * 1024)], now)
        now += 0.04
        s.receive(ack({0: seq}), now)
        seq += 1
    assert s.monitor.window_bytes < grown / 5
    assert s.monitor.rtt_ms == pytest.approx(40.0)


def test_a_sender_with_messages_owed_and_no_acknowledged_progress_is_stalled() -> None:
    """L3: connected, the origin has more, nothing acknowledged for stall_after_s."""
    s = sender(stall_after_s=5.0)
    s.start({}, {0: 3}, now=0.0)
    s.ship(0, 1, [batch(1, 3)], now=1.0)
    assert s.monitor.state_at(5.9) == "streaming"
    s.receive(frame(encode_heartbeat(Heartbeat(0))), now=5.5)  # alive, but no progress
    assert s.monitor.state_at(6.1) == "stalled"
    s.receive(ack({0: 3}), now=6.2)
    assert s.monitor.state_at(20.0) == "streaming"  # nothing owed: idle is not stalled


def test_a_silent_receiver_ends_the_session() -> None:
    s = sender()
    s.start({}, {}, now=0.0)
    s.check_alive(TIMEOUT_S)
    s.receive(frame(encode_heartbeat(Heartbeat(0))), now=5.0)
    s.check_alive(5.0 + TIMEOUT_S)
    with pytest.raises(ProtocolError, match="no frame from west for 10 s"):
        s.check_alive(5.1 + TIMEOUT_S)


def test_a_sender_refuses_frames_a_receiver_may_not_send() -> None:
    s = sender()
    s.start({}, {0: 1}, now=0.0)
    with pytest.raises(ProtocolError, match="unexpected BATCHES"):
        s.receive(frame(encode_batches([batch(1)])), now=0.0)
    with pytest.raises(ProtocolError, match="partition 7, which does not exist"):
        s.receive(ack({7: 1}), now=0.0)
    with pytest.raises(ProtocolError, match="west closed the link: refused: go away"):
        s.receive(frame(encode_error("refused", "go away")), now=0.0)


def test_the_heartbeat_says_what_the_origin_holds_and_its_oldest_unreceived() -> None:
    s = sender()
    s.start({0: 1}, {0: 5, 1: 2}, now=0.0)
    s.ship(0, 2, [batch(2, 4)], now=0.0)
    oldest, lookups = s.oldest_owed()
    assert oldest == 1002
    assert lookups == [(1, 1)]
    beat = decode_heartbeat(frame(s.heartbeat(now_ms=5000, oldest_ms=900)))
    assert beat.heads == {0: 5, 1: 2}
    assert beat.oldest_ms == 900
    assert s.monitor.oldest_unreceived_ms == 900


# -- receiver ----------------------------------------------------------------------------


def test_the_receiver_queues_checked_batches_and_acks_the_durable_heads() -> None:
    r = receiver()
    r.start({0: 0}, now=0.0)
    assert r.receive(frame(encode_batches([batch(1, 2), batch(3)])), now=0.1)
    taken = r.take()
    assert [b.first_seq for b in taken] == [1, 3]
    assert not r.queued
    result = RemoteResult({StreamId("east", 0): 3}, stored=2, duplicates=0, gaps={})
    answer = decode_ack(frame(r.stored(taken, result, {0: 3}, now=0.2)))
    assert answer.heads == {0: 3}
    assert answer.gaps == ()
    assert r.monitor.receiver_heads[0] == 3
    assert r.monitor.messages == 3


def test_a_batch_of_another_origin_ends_the_session_before_it_is_stored() -> None:
    """L1: a link carries only its origin's own messages."""
    r = receiver()
    r.start({}, now=0.0)
    with pytest.raises(ProtocolError, match="carried a batch of origin 'north'"):
        r.receive(frame(encode_batches([batch(1), batch(1, origin="north")])), now=0.0)
    assert not r.queued


def test_a_corrupted_batch_ends_the_session_before_it_is_stored() -> None:
    """L4: the batch checksum is checked on receipt."""
    data = bytearray(batch(1).data)
    data[-1] ^= 0xFF
    r = receiver()
    r.start({}, now=0.0)
    with pytest.raises(ProtocolError, match="bad batch from east"):
        r.receive(frame(encode_frame(FrameType.BATCHES, bytes(data))), now=0.0)
    assert not r.queued


def test_a_gap_is_acknowledged_with_the_head_to_resume_from() -> None:
    r = receiver()
    r.start({0: 4}, now=0.0)
    r.receive(frame(encode_batches([batch(9)])), now=0.0)
    taken = r.take()
    result = RemoteResult({StreamId("east", 0): 4}, 0, 0, {StreamId("east", 0): 4})
    answer = decode_ack(frame(r.stored(taken, result, {0: 4}, now=0.1)))
    assert answer.heads == {0: 4}
    assert answer.gaps == (0,)


def test_a_duplicate_batch_is_acknowledged_without_counting_progress() -> None:
    r = receiver(stall_after_s=5.0)
    r.start({0: 5}, now=0.0)
    r.receive(frame(encode_heartbeat(Heartbeat(0, {0: 9}))), now=0.0)
    r.receive(frame(encode_batches([batch(1, 5)])), now=1.0)
    result = RemoteResult({StreamId("east", 0): 5}, stored=0, duplicates=1, gaps={})
    r.stored(r.take(), result, {0: 5}, now=6.0)
    assert r.monitor.state_at(6.0) == "stalled"  # 4 owed, nothing stored for 6 s


def test_queued_batches_are_taken_in_chunks_so_acks_flow_as_a_backlog_is_stored() -> None:
    r = receiver()
    r.start({}, now=0.0)
    size = 512 * 1024
    for seq in range(1, 21):
        r.receive(frame(encode_batches([batch(seq, 1, size=size)])), now=0.0)
    chunks = []
    while r.queued:
        chunks.append(len(r.take()))
    assert sum(chunks) == 20
    assert len(chunks) >= 2
    assert all(n * size <= STORE_CHUNK_BYTES + size for n in chunks)


def test_heartbeats_carry_the_origins_heads_and_a_silent_origin_ends_the_session() -> None:
    r = receiver()
    r.start({0: 1}, now=0.0)
    assert not r.receive(frame(encode_heartbeat(Heartbeat(0, {0: 7}, 500))), now=2.0)
    assert r.monitor.origin_heads == {0: 7}
    assert r.monitor.backlog == 6
    assert r.monitor.oldest_unreceived_ms == 500
    with pytest.raises(ProtocolError, match="no frame from east"):
        r.check_alive(2.1 + TIMEOUT_S)


def test_a_receiver_refuses_frames_an_origin_may_not_send() -> None:
    r = receiver()
    r.start({}, now=0.0)
    with pytest.raises(ProtocolError, match="unexpected ACK"):
        r.receive(ack({0: 1}), now=0.0)
