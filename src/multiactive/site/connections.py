"""A site's connections: the listener, the dialers, and what runs on each connection.

Inbound, the first frame decides: HELLO(client) starts a publisher session (ingress);
HELLO(push) from an origin starts a collector; HELLO(pull) from a receiver starts a reship.
Outbound, this site dials the links the topology gives it to dial: as origin of a `push`
link, or as receiver of a `pull` link, reconnecting with backoff. One link has at most one
live session at each end; a newer connection for the same link replaces the older one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from multiactive.aio import Backoff
from multiactive.errors import ConfigError, ConnectionLost, ProtocolError, RejectedError
from multiactive.logs import get_logger
from multiactive.model.topology import LinkConfig
from multiactive.replication.collector import Collector
from multiactive.replication.links import link_for_hello
from multiactive.replication.reship import Reship
from multiactive.wire.connection import FrameConnection, serve
from multiactive.wire.frames import Frame, FrameType
from multiactive.wire.protocol import (
    RESULT_REFUSED,
    Hello,
    decode_error,
    decode_hello,
    decode_publish,
    encode_hello,
    encode_published,
)

if TYPE_CHECKING:
    from multiactive.site.node import SiteNode

HELLO_TIMEOUT_S = 10.0
STABLE_SESSION_S = 5.0  # a session that lasted this long resets the reconnect backoff

log = get_logger("connections")


class Connections:
    def __init__(self, node: SiteNode) -> None:
        self._node = node
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._publishers: set[FrameConnection] = set()
        self._sessions: dict[str, asyncio.Task[Any]] = {}

    # -- listening -----------------------------------------------------------------------

    async def listen(self) -> None:
        address = self._node.config.listen
        try:
            self._server = await serve(
                address, self._node.topology.limits.max_frame_bytes, self._accepted
            )
        except OSError as exc:
            raise ConfigError(
                f"site {self._node.name} cannot listen on {address} "
                f"(sites[].listen in {self._node.topology.source}): {exc.strerror}"
            ) from exc

    def stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()

    def _accepted(self, conn: FrameConnection) -> None:
        task = asyncio.get_running_loop().create_task(self._accept(conn))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _accept(self, conn: FrameConnection) -> None:
        try:
            hello = decode_hello(await conn.recv(HELLO_TIMEOUT_S))
            await self._dispatch(conn, hello)
        except (ProtocolError, ConfigError, RejectedError) as exc:
            log.warning("connection_refused", site=self._node.name, peer=conn.peer, reason=exc)
            await conn.fail(str(exc), "refused" if isinstance(exc, ConfigError) else "protocol")
        except TimeoutError:
            log.warning(
                "connection_refused", site=self._node.name, peer=conn.peer, reason="no HELLO"
            )
            await conn.fail("no HELLO within 10 s")
        except ConnectionLost as exc:
            log.info("connection_closed", site=self._node.name, peer=conn.peer, reason=exc)
        finally:
            await conn.close()

    async def _dispatch(self, conn: FrameConnection, hello: Hello) -> None:
        node = self._node
        if hello.role == "client":
            conn.send(encode_hello(Hello(node.name, "reply", node.topology.name)))
            await self._serve_publisher(conn)
            return
        if hello.role not in ("push", "pull"):
            raise ProtocolError(f"a connection cannot start with HELLO role {hello.role!r}")
        link = link_for_hello(node.topology, node.name, hello)
        if hello.role == "push":
            heads = self._receiver_heads(link)
            conn.send(
                encode_hello(Hello(node.name, "reply", node.topology.name, link.origin, heads))
            )
            await self._session(link, self._collect(conn, link))
        else:
            conn.send(encode_hello(Hello(node.name, "reply", node.topology.name, link.origin)))
            await self._session(link, self._reship(conn, link, hello.heads))

    # -- publishers ----------------------------------------------------------------------

    async def _serve_publisher(self, conn: FrameConnection) -> None:
        ingress = self._node.ingress
        self._publishers.add(conn)
        try:
            while True:
                frame = await conn.recv()
                if frame.type == FrameType.HEARTBEAT:
                    continue
                if frame.type != FrameType.PUBLISH:
                    raise ProtocolError(f"a publisher may send PUBLISH, not {frame.type.name}")
                request, drafts = decode_publish(frame)
                while ingress.full:
                    await ingress.room.wait()
                self._publish(conn, request, drafts)
        finally:
            self._publishers.discard(conn)

    def _publish(self, conn: FrameConnection, request: int, drafts: list[Any]) -> None:
        try:
            done = self._node.ingress.submit(drafts)
        except RejectedError as exc:
            refusal = [RESULT_REFUSED, "unavailable", str(exc)]
            conn.send(encode_published(request, [refusal] * len(drafts)))
            return

        def answer(future: asyncio.Future[list[Any]]) -> None:
            with contextlib.suppress(ConnectionLost):
                conn.send(encode_published(request, future.result()))

        done.add_done_callback(answer)

    async def flush_publishers(self) -> None:
        """Push the last acknowledgements out before the connections close."""
        for conn in list(self._publishers):
            with contextlib.suppress(ConnectionLost):
                await asyncio.wait_for(conn.drain(), 2.0)

    # -- links ---------------------------------------------------------------------------

    def _receiver_heads(self, link: LinkConfig) -> dict[int, int]:
        return {s.partition: h for s, h in self._node.journal.heads(link.origin).items()}

    async def _collect(self, conn: FrameConnection, link: LinkConfig) -> None:
        node = self._node
        monitor = node.monitors[link.name]
        await Collector(node.journal, conn, monitor, node.clock, node.topology.replication).run()

    async def _reship(self, conn: FrameConnection, link: LinkConfig, heads: dict[int, int]) -> None:
        node = self._node
        monitor = node.monitors[link.name]
        reship = Reship(
            node.journal, conn, monitor, node.topology.partitions, node.topology.replication
        )
        await reship.run(heads)

    async def _session(self, link: LinkConfig, body: Coroutine[Any, Any, None]) -> None:
        """Run a link session, replacing an older one of the same link."""
        older = self._sessions.get(link.name)
        if older is not None and not older.done():
            older.cancel()
        task = asyncio.ensure_future(body)
        self._sessions[link.name] = task
        monitor = self._node.monitors[link.name]
        log.info("link_up", site=self._node.name, link=link.name, mode=link.mode, side=monitor.side)
        current = asyncio.current_task()
        try:
            await task
        except asyncio.CancelledError:
            if current is not None and current.cancelling():
                raise
            monitor.disconnected("replaced by a newer connection")
        except (ConnectionLost, ProtocolError) as exc:
            monitor.disconnected(str(exc))
            raise
        finally:
            if self._sessions.get(link.name) is task:
                del self._sessions[link.name]

    def dialers(self) -> list[Coroutine[Any, Any, None]]:
        """One reconnecting dialer per link this site dials."""
        node = self._node
        return [
            self._dial(link)
            for link in node.topology.links
            if (link.mode == "push" and link.origin == node.name)
            or (link.mode == "pull" and link.receiver == node.name)
        ]

    async def _dial(self, link: LinkConfig) -> None:
        node = self._node
        settings = node.topology.replication
        backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s)
        address = node.topology.dial_address(link)
        monitor = node.monitors[link.name]
        while True:
            started = asyncio.get_running_loop().time()
            try:
                conn = await FrameConnection.connect(address, node.topology.limits.max_frame_bytes)
                try:
                    await self._dialed(conn, link)
                finally:
                    await conn.close()
            except (ConnectionLost, ProtocolError, ConfigError) as exc:
                monitor.disconnected(str(exc))
                log.info("link_retry", site=node.name, link=link.name, address=address, reason=exc)
            if asyncio.get_running_loop().time() - started > STABLE_SESSION_S:
                backoff.reset()
            await asyncio.sleep(backoff.next_delay())

    async def _dialed(self, conn: FrameConnection, link: LinkConfig) -> None:
        node = self._node
        cluster = node.topology.name
        if link.mode == "push":
            conn.send(encode_hello(Hello(node.name, "push", cluster, link.origin)))
            reply = await self._reply(conn, link.receiver)
            await self._session(link, self._reship(conn, link, reply.heads))
        else:
            heads = self._receiver_heads(link)
            conn.send(encode_hello(Hello(node.name, "pull", cluster, link.origin, heads)))
            await self._reply(conn, link.origin)
            await self._session(link, self._collect(conn, link))

    async def _reply(self, conn: FrameConnection, expected: str) -> Hello:
        try:
            frame: Frame = await conn.recv(HELLO_TIMEOUT_S)
        except TimeoutError:
            raise ProtocolError(
                f"{expected} did not answer HELLO within {HELLO_TIMEOUT_S:.0f} s"
            ) from None
        if frame.type == FrameType.ERROR:
            error = decode_error(frame)
            raise ProtocolError(f"{expected} refused the link: {error.message}")
        reply = decode_hello(frame)
        if reply.role != "reply" or reply.site != expected:
            raise ProtocolError(
                f"expected a HELLO reply from {expected}, "
                f"got role {reply.role!r} from {reply.site!r}"
            )
        return reply

    async def close(self) -> None:
        self.stop_listening()
        for task in [*self._handlers, *self._sessions.values()]:
            task.cancel()
        await asyncio.gather(*self._handlers, *self._sessions.values(), return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
