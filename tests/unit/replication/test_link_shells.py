"""Reship and Collector, the asyncio shells, end to end over an in-memory connection pair and
memory journals, on a clock the test moves: no sockets, no sleeps."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable

import pytest

from multiactive.aio import wait_until
from multiactive.errors import ProtocolError, StoreUnavailable
from multiactive.journal.base import LocalGroup
from multiactive.journal.memory import MemoryJournal
from multiactive.model.clock import HybridClock
from multiactive.model.message import StreamId
from multiactive.model.topology import LinkConfig, ReplicationSettings
from multiactive.replication.collector import Collector
from multiactive.replication.links import LinkMonitor
from multiactive.replication.reship import Reship
from multiactive.testing import FakeClock
from multiactive.wire.memory import memory_pair

LINK = LinkConfig("east", "west", "push")
SETTINGS = ReplicationSettings(heartbeat_interval_s=1.0, peer_timeout_s=10.0)
PARTITIONS = 2


def rows(prefix: str, count: int) -> list[tuple[object, ...]]:
    return [(f"{prefix}{i}", "kv.set", f"k{i}", i + 1, 1000, {}, b"v") for i in range(count)]


async def append(journal: MemoryJournal, partition: int, prefix: str, count: int) -> None:
    await journal.append_local([LocalGroup(partition, rows(prefix, count), 1000)])  # type: ignore[arg-type]


class Link:
    """An origin and a receiver journal joined by a Reship and a Collector."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.origin = MemoryJournal("east")
        self.receiver = MemoryJournal("west")
        self.sender_end, self.receiver_end = memory_pair("east", "west")
        self.sending = LinkMonitor(LINK, "sender", clock=clock)
        self.receiving = LinkMonitor(LINK, "receiver", clock=clock)
        self.reship = Reship(
            self.origin, self.sender_end, self.sending, PARTITIONS, SETTINGS, clock
        )
        self.collector = Collector(
            self.receiver, self.receiver_end, self.receiving, HybridClock(), SETTINGS, clock
        )

    async def open(self) -> None:
        await self.origin.open()
        await self.receiver.open()

    def received(self, partition: int) -> int:
        return self.receiver.head(StreamId("east", partition))

    async def caught_up(self, timeout_s: float = 5.0) -> bool:
        def done() -> bool:
            return all(
                self.received(p) == self.origin.head(StreamId("east", p)) for p in range(PARTITIONS)
            )

        return await wait_until(done, self.receiver.appended, timeout_s)


def run(test: Callable[[Link], Awaitable[None]]) -> None:
    async def main() -> None:
        link = Link(FakeClock())
        await link.open()
        await test(link)

    asyncio.run(main())


def test_a_backlog_and_new_appends_arrive_once_in_order() -> None:
    async def test(link: Link) -> None:
        await append(link.origin, 0, "a", 50)
        await append(link.origin, 1, "b", 5)
        collector = asyncio.create_task(link.collector.run())
        reship = asyncio.create_task(link.reship.run({}))
        assert await link.caught_up()
        await append(link.origin, 0, "c", 3)  # shipped as it becomes durable
        assert await link.caught_up()
        assert (link.received(0), link.received(1)) == (53, 5)
        batches = await link.receiver.read(StreamId("east", 0), 1, 1 << 20)
        seqs = [m.seq for b in batches for m in b.messages()]
        assert seqs == list(range(1, 54))
        reship.cancel()
        collector.cancel()

    run(test)


def test_a_sender_that_starts_past_the_receivers_head_is_rewound_by_the_gap() -> None:
    """J2 across the link: the receiver refuses a batch above head + 1 and the sender
    resends from the head the ACK names."""

    async def test(link: Link) -> None:
        for i in range(4):
            await append(link.origin, 0, f"r{i}-", 2)
        collector = asyncio.create_task(link.collector.run())
        reship = asyncio.create_task(link.reship.run({0: 4}))  # wrong: west holds nothing
        assert await link.caught_up()
        assert link.received(0) == 8
        assert link.receiver.statistics().refused_gaps >= 1
        reship.cancel()
        collector.cancel()

    run(test)


def test_heartbeats_tell_the_receiver_what_the_origin_holds() -> None:
    async def test(link: Link) -> None:
        collector = asyncio.create_task(link.collector.run())
        reship = asyncio.create_task(link.reship.run({}))
        await link.clock.settle()
        link.receiving.origin_heads.clear()
        await append(link.origin, 1, "h", 3)
        await link.clock.advance(1.0)
        assert link.receiving.origin_heads.get(1) == 3
        reship.cancel()
        collector.cancel()

    run(test)


def test_a_receiver_that_falls_silent_ends_the_sending_session_after_the_timeout() -> None:
    async def test(link: Link) -> None:
        reship = asyncio.create_task(link.reship.run({}))  # no collector: nothing answers
        await link.clock.advance(SETTINGS.peer_timeout_s - 1)
        assert not reship.done()
        await link.clock.advance(2.5)
        with pytest.raises(ProtocolError, match="no frame from west for 10 s"):
            await reship

    run(test)


def test_a_malformed_frame_ends_the_receiving_session_and_nothing_is_stored() -> None:
    async def test(link: Link) -> None:
        collector = asyncio.create_task(link.collector.run())
        link.sender_end.send(b"\x00" * 64)  # not a frame
        with pytest.raises(ProtocolError):
            await collector
        assert link.received(0) == 0

    run(test)


def test_a_last_save_of_peer_heads_that_fails_after_the_session_is_gone_is_not_left_behind() -> (
    None
):
    """Cancelled twice while its last save of the receiver's heads waits on a failing journal,
    the sender leaves no task with an unretrieved StoreError behind (asyncio would log
    "Task exception was never retrieved")."""

    async def test(link: Link) -> None:
        lost: list[object] = []
        asyncio.get_running_loop().set_exception_handler(lambda _, context: lost.append(context))
        failing, release = asyncio.Event(), asyncio.Event()

        async def save_peer_heads(peer: str, heads: object) -> None:
            failing.set()
            await release.wait()
            raise StoreUnavailable("Redis at redis://x (redis_url) failed: ClusterDownError")

        await append(link.origin, 0, "a", 3)
        collector = asyncio.create_task(link.collector.run())
        reship = asyncio.create_task(link.reship.run({}))
        assert await link.caught_up()
        await link.clock.settle()
        link.origin.save_peer_heads = save_peer_heads  # type: ignore[method-assign]
        reship.cancel()
        await failing.wait()
        reship.cancel()
        release.set()
        await asyncio.gather(reship, return_exceptions=True)
        collector.cancel()
        for _ in range(5):
            await asyncio.sleep(0)
        gc.collect()
        assert lost == []

    run(test)
