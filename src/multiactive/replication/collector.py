"""Collector: the receiving end of a link, the asyncio shell around `ReceiverSession`.

One task receives frames (the state machine checks and queues their batches), one stores:
it appends what is queued in one durable journal write and only then sends the ACK that the
machine builds from the result (J3 for remote writes). Receiving goes on while a store is
under way, so a slow fsync does not stop the socket (bounded by the sender's window). A third
task sends heartbeats and ends the session when the origin has gone silent.
"""

from __future__ import annotations

from multiactive.aio import Pulse, run_together
from multiactive.clock import SYSTEM_CLOCK, Clock
from multiactive.journal.base import Journal
from multiactive.model.clock import HybridClock
from multiactive.model.topology import ReplicationSettings
from multiactive.replication.links import LinkMonitor
from multiactive.replication.receiver import ReceiverSession
from multiactive.wire.base import Connection


class Collector:
    """One receiving session on one connection; ends when the connection does."""

    def __init__(
        self,
        journal: Journal,
        conn: Connection,
        monitor: LinkMonitor,
        versions: HybridClock,
        settings: ReplicationSettings,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._journal = journal
        self._conn = conn
        self._versions = versions
        self._settings = settings
        self._clock = clock
        self.session = ReceiverSession(monitor, settings.peer_timeout_s)
        self._queued = Pulse()

    async def run(self) -> None:
        heads = self._journal.heads(self.session.origin)
        self.session.start({s.partition: h for s, h in heads.items()}, self._clock.monotonic())
        await run_together(self._receive(), self._store(), self._heartbeat())

    async def _receive(self) -> None:
        while True:
            frame = await self._conn.recv()
            if self.session.receive(frame, self._clock.monotonic()):
                self._queued.fire()

    async def _store(self) -> None:
        session, journal = self.session, self._journal
        while True:
            while not session.queued:
                await self._queued.wait()
            batches = session.take()
            result = await journal.append_remote(batches)
            self._versions.observe(max(b.max_version for b in batches))
            heads = {b.partition: journal.head(b.stream) for b in batches}
            self._conn.send(session.stored(batches, result, heads, self._clock.monotonic()))

    async def _heartbeat(self) -> None:
        while True:
            await self._clock.sleep(self._settings.heartbeat_interval_s)
            self.session.check_alive(self._clock.monotonic())
            self._conn.send(self.session.heartbeat(self._clock.wall_ms()))
