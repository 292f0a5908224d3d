"""Reship: the sending end of a link, the asyncio shell around `SenderSession`.

It reads this site's own stored batches from the journal and sends them, as stored, to one
receiver; the rules (cursor, window, rewind on a gap, stall, peer timeout) are the state
machine's in `replication/sender.py`. Four tasks share one session: send (read and ship while
the window is open), receive (ACKs), heartbeat (what the origin holds; liveness) and saving
the receiver's acknowledged heads for trimming (J4).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from multiactive.aio import Pulse, run_together, wait_any
from multiactive.clock import SYSTEM_CLOCK, Clock
from multiactive.errors import ConnectionLost, StoreError
from multiactive.journal.base import Journal
from multiactive.model.batch import RecordBatch
from multiactive.model.message import StreamId
from multiactive.model.topology import DEFAULT_WINDOW_FLOOR_BYTES, ReplicationSettings
from multiactive.replication.links import LinkMonitor
from multiactive.replication.sender import SenderSession
from multiactive.replication.window import WindowController
from multiactive.wire.base import Connection

PEER_HEADS_SAVE_INTERVAL_S = 1.0


def new_window(settings: ReplicationSettings) -> WindowController:
    return WindowController(
        min(DEFAULT_WINDOW_FLOOR_BYTES, settings.window_bytes), settings.window_bytes
    )


class Reship:
    """One sending session on one connection; ends when the connection does."""

    def __init__(
        self,
        journal: Journal,
        conn: Connection,
        monitor: LinkMonitor,
        partitions: int,
        settings: ReplicationSettings,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._journal = journal
        self._conn = conn
        self._origin = monitor.link.origin
        self._settings = settings
        self._clock = clock
        self.session = SenderSession(
            monitor, partitions, new_window(settings), settings.peer_timeout_s
        )
        self._acked = Pulse()

    async def run(self, peer_heads: dict[int, int]) -> None:
        self.session.start(peer_heads, self._origin_heads(), self._clock.monotonic())
        self._journal.observers.append(self._on_stored)
        try:
            await run_together(self._send(), self._receive(), self._heartbeat(), self._save_heads())
        finally:
            self._journal.observers.remove(self._on_stored)

    def _origin_heads(self) -> dict[int, int]:
        return {s.partition: head for s, head in self._journal.heads(self._origin).items()}

    def _on_stored(self, local: bool, batches: Sequence[RecordBatch]) -> None:
        """Ship batches the moment they are durable, on the same loop turn (the `_send`
        loop would get there a scheduling round later; it skips what was sent here)."""
        if not local:
            return
        try:
            for frame in self.session.ship_appended(batches, self._clock.monotonic()):
                self._conn.send(frame)
        except ConnectionLost:
            return  # the session is ending; `_receive` reports why

    async def _send(self) -> None:
        session, journal = self.session, self._journal
        while True:
            session.origin_heads(self._origin_heads())
            sent = False
            for partition, cursor in session.reads():
                stream = StreamId(self._origin, partition)
                batches = await journal.read(stream, cursor, self._settings.read_bytes)
                frame = session.ship(partition, cursor, batches, self._clock.monotonic())
                if frame is not None:
                    self._conn.send(frame)
                    sent = True
            await self._conn.drain()
            if sent:
                continue
            session.origin_heads(self._origin_heads())  # no await from here to the wait
            if not session.window_open:
                await self._acked.wait()
            elif not session.owes():
                await wait_any((journal.appended, self._acked))

    async def _receive(self) -> None:
        while True:
            frame = await self._conn.recv()
            if self.session.receive(frame, self._clock.monotonic()):
                self._acked.fire()

    async def _heartbeat(self) -> None:
        session = self.session
        while True:
            session.check_alive(self._clock.monotonic())
            session.origin_heads(self._origin_heads())
            oldest = await self._oldest_owed_ms()
            self._conn.send(session.heartbeat(self._clock.wall_ms(), oldest))
            await self._clock.sleep(self._settings.heartbeat_interval_s)

    async def _oldest_owed_ms(self) -> int | None:
        oldest, lookups = self.session.oldest_owed()
        for partition, seq in lookups:
            created = await self._journal.created_at(StreamId(self._origin, partition), seq)
            if created is not None and (oldest is None or created < oldest):
                oldest = created
        return oldest

    async def _save_heads(self) -> None:
        """Persist what the receiver acknowledged, so trimming after a restart knows it (J4)."""
        try:
            while True:
                await self._clock.sleep(PEER_HEADS_SAVE_INTERVAL_S)
                await self._flush_heads()
        finally:
            await asyncio.shield(self._last_flush())

    async def _last_flush(self) -> None:
        """The session is ending (its storage may be what failed): save what the receiver
        acknowledged if the journal answers. Shielded, it may outlive a second cancellation,
        so it raises nothing; heads not saved now are saved by the next session (older saved
        heads only trim less, J4)."""
        with contextlib.suppress(StoreError):
            await self._flush_heads()

    async def _flush_heads(self) -> None:
        heads = self.session.heads_to_save()
        if heads is not None:
            streams = {StreamId(self._origin, p): h for p, h in heads.items()}
            await self._journal.save_peer_heads(self.session.peer, streams)
