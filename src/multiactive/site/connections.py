"""A site's connections: the listener, the dialers, and what runs on each connection.

Inbound, the first frame decides: HELLO(client) starts a publisher session (ingress);
HELLO(push) from an origin starts a collector; HELLO(pull) from a receiver starts a reship.
Outbound, this site dials the links the topology gives it to dial: as origin of a `push`
link, or as receiver of a `pull` link, reconnecting with backoff. One link has at most one
live session at each end; a newer connection for the same link replaces the older one.

With `[tls]` (a `TlsMaterial`), the listener accepts TLS 1.3 only and dialers dial TLS only,
checking that the dialed site's certificate names it. A link is refused after the handshake
unless the peer's certificate names a site of the topology and the site its HELLO claims;
a publisher needs a client certificate or an application token when `clients` says so.
Every refusal is logged on both ends and counted (`TlsMaterial.refusals`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Mapping
from typing import Any

from multiactive.aio import Backoff
from multiactive.clock import SYSTEM_CLOCK, Clock
from multiactive.errors import (
    AuthenticationError,
    ConfigError,
    ConnectionLost,
    ProtocolError,
    RejectedError,
    StoreError,
)
from multiactive.journal.base import Journal
from multiactive.logs import get_logger
from multiactive.model.clock import HybridClock
from multiactive.model.topology import Address, LinkConfig, Topology
from multiactive.replication.collector import Collector
from multiactive.replication.ingress import Ingress
from multiactive.replication.links import LinkMonitor, check_agreement, link_for_hello
from multiactive.replication.reship import Reship
from multiactive.security.tls import TlsMaterial, check_link_peer, refusal_reason
from multiactive.wire.base import Connection
from multiactive.wire.connection import FrameConnection, serve
from multiactive.wire.frames import Frame, FrameType
from multiactive.wire.protocol import (
    RESULT_REFUSED,
    Hello,
    Role,
    decode_error,
    decode_hello,
    decode_publish,
    encode_hello,
    encode_published,
)

HELLO_TIMEOUT_S = 10.0
STABLE_SESSION_S = 5.0  # a session that lasted this long resets the reconnect backoff

log = get_logger("connections")


class Connections:
    """Everything on the wire for one site: what it listens for and what it dials."""

    def __init__(
        self,
        site: str,
        topology: Topology,
        journal: Journal,
        ingress: Ingress,
        monitors: Mapping[str, LinkMonitor],
        versions: HybridClock,
        clock: Clock = SYSTEM_CLOCK,
        tls: TlsMaterial | None = None,
    ) -> None:
        self._site = site
        self._tls = tls
        self._topology = topology
        self._journal = journal
        self._ingress = ingress
        self._monitors = monitors
        self._versions = versions
        self._clock = clock
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._publishers: set[Connection] = set()
        self._sessions: dict[str, asyncio.Task[Any]] = {}

    # -- listening -----------------------------------------------------------------------

    async def listen(self) -> None:
        address = self._topology.site(self._site).listen
        try:
            self._server = await serve(
                address, self._topology.limits.max_frame_bytes, self._accepted,
                None if self._tls is None else self._tls.server_context, self._handshake_refused,
            )  # fmt: skip
        except OSError as exc:
            raise ConfigError(
                f"site {self._site} cannot listen on {address} "
                f"(sites[].listen in {self._topology.source}): {exc.strerror}"
            ) from exc

    def stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()

    def _handshake_refused(self, peer: str, exc: BaseException) -> None:
        if self._tls is not None:
            self._tls.refused("listener", refusal_reason(exc) or "handshake", peer, exc)

    def _accepted(self, conn: FrameConnection) -> None:
        task = asyncio.get_running_loop().create_task(self._accept(conn))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _accept(self, conn: Connection) -> None:
        try:
            hello = decode_hello(await conn.recv(HELLO_TIMEOUT_S))
            await self._dispatch(conn, hello)
        except AuthenticationError as exc:
            if self._tls is not None:
                self._tls.refused("listener", exc.reason, conn.peer, exc)
            await conn.fail(str(exc), f"auth:{exc.reason}")
        except (ProtocolError, ConfigError, RejectedError) as exc:
            log.warning("connection_refused", site=self._site, peer=conn.peer, reason=exc)
            await conn.fail(str(exc), "refused" if isinstance(exc, ConfigError) else "protocol")
        except TimeoutError:
            log.warning("connection_refused", site=self._site, peer=conn.peer, reason="no HELLO")
            await conn.fail("no HELLO within 10 s")
        except ConnectionLost as exc:
            log.info("connection_closed", site=self._site, peer=conn.peer, reason=exc)
        except StoreError as exc:
            log.warning("link_store_failed", site=self._site, peer=conn.peer, reason=exc)
        finally:
            await conn.close()

    def _hello(self, role: Role, origin: str = "", heads: dict[int, int] | None = None) -> bytes:
        """A HELLO of this site, with what the peer's topology must agree on."""
        topology = self._topology
        return encode_hello(Hello(
            self._site, role, topology.name, origin, heads or {},
            partitions=topology.partitions, sites=tuple(sorted(topology.site_names)),
        ))  # fmt: skip

    async def _dispatch(self, conn: Connection, hello: Hello) -> None:
        if hello.role == "client":
            self._check_publisher(conn, hello)
            conn.send(self._hello("reply"))
            await self._serve_publisher(conn)
            return
        if hello.role not in ("push", "pull"):
            raise ProtocolError(f"a connection cannot start with HELLO role {hello.role!r}")
        check_link_peer(conn.peer_names, hello.site, self._topology.site_names)
        link = link_for_hello(self._topology, self._site, hello)
        if hello.role == "push":
            conn.send(self._hello("reply", link.origin, self._receiver_heads(link)))
            await self._session(link, self._collect(conn, link))
        else:
            conn.send(self._hello("reply", link.origin))
            await self._session(link, self._reship(conn, link, hello.heads))

    # -- publishers ----------------------------------------------------------------------

    def _check_publisher(self, conn: Connection, hello: Hello) -> None:
        """`clients = "cert"`: a client certificate of the cluster CA; `"token"`: a known
        application token. (`"tls"`: the handshake was enough.)"""
        if self._tls is None:
            return
        rule = self._tls.settings.clients
        if rule == "cert" and not conn.peer_names:
            raise AuthenticationError(
                "no_certificate", 'a publisher needs a client certificate ([tls] clients = "cert")'
            )
        if rule == "token":
            app = self._tls.tokens.application(hello.token)
            if app is None:
                raise AuthenticationError(
                    "token", 'a publisher needs a known application token ([tls] clients = "token")'
                )
            log.info("publisher_connected", site=self._site, peer=conn.peer, application=app)

    async def _serve_publisher(self, conn: Connection) -> None:
        ingress = self._ingress
        self._publishers.add(conn)
        try:
            while True:
                frame = await conn.recv()
                if frame.type == FrameType.HEARTBEAT:
                    continue
                if frame.type != FrameType.PUBLISH:
                    raise ProtocolError(f"a publisher may send PUBLISH, not {frame.type.name}")
                request, drafts, floor = decode_publish(frame)
                while ingress.full:
                    await ingress.room.wait()
                self._publish(conn, request, drafts, floor)
        finally:
            self._publishers.discard(conn)

    def _publish(self, conn: Connection, request: int, drafts: list[Any], floor: int) -> None:
        versions = self._versions
        try:
            done = self._ingress.submit(drafts, floor=floor)
        except RejectedError as exc:
            refusal = [RESULT_REFUSED, exc.code, str(exc)]
            conn.send(encode_published(request, [refusal] * len(drafts), versions.last))
            return

        def answer(future: asyncio.Future[list[Any]]) -> None:
            with contextlib.suppress(ConnectionLost):
                conn.send(encode_published(request, future.result(), versions.last))

        done.add_done_callback(answer)

    async def flush_publishers(self) -> None:
        """Push the last acknowledgements out before the connections close."""
        for conn in list(self._publishers):
            with contextlib.suppress(ConnectionLost):
                await asyncio.wait_for(conn.drain(), 2.0)

    # -- links ---------------------------------------------------------------------------

    def _receiver_heads(self, link: LinkConfig) -> dict[int, int]:
        return {s.partition: h for s, h in self._journal.heads(link.origin).items()}

    async def _collect(self, conn: Connection, link: LinkConfig) -> None:
        collector = Collector(
            self._journal, conn, self._monitors[link.name], self._versions,
            self._topology.replication, self._clock,
        )  # fmt: skip
        await collector.run()

    async def _reship(self, conn: Connection, link: LinkConfig, heads: dict[int, int]) -> None:
        reship = Reship(
            self._journal, conn, self._monitors[link.name], self._topology.partitions,
            self._topology.replication, self._clock,
        )  # fmt: skip
        await reship.run(heads)

    async def _session(self, link: LinkConfig, body: Coroutine[Any, Any, None]) -> None:
        """Run a link session, replacing an older one of the same link."""
        older = self._sessions.get(link.name)
        if older is not None and not older.done():
            older.cancel()
        task = asyncio.ensure_future(body)
        self._sessions[link.name] = task
        monitor = self._monitors[link.name]
        log.info("link_up", site=self._site, link=link.name, mode=link.mode, side=monitor.side)
        current = asyncio.current_task()
        try:
            await task
        except asyncio.CancelledError:
            if current is not None and current.cancelling():
                raise
            monitor.disconnected("replaced by a newer connection")
        except (ConnectionLost, ProtocolError, StoreError) as exc:
            monitor.disconnected(str(exc))
            raise
        finally:
            if self._sessions.get(link.name) is task:
                del self._sessions[link.name]

    def dialers(self) -> list[Coroutine[Any, Any, None]]:
        """One reconnecting dialer per link this site dials."""
        site = self._site
        return [
            self._dial(link)
            for link in self._topology.links
            if (link.mode == "push" and link.origin == site)
            or (link.mode == "pull" and link.receiver == site)
        ]

    async def _dial(self, link: LinkConfig) -> None:
        settings = self._topology.replication
        backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s)
        address = self._topology.dial_address(link)
        monitor = self._monitors[link.name]
        while True:
            started = self._clock.monotonic()
            try:
                conn = await self._connect(address, link)
                try:
                    await self._dialed(conn, link)
                finally:
                    await conn.close()
            except (
                ConnectionLost,
                ProtocolError,
                ConfigError,
                StoreError,
                AuthenticationError,
            ) as exc:
                monitor.disconnected(str(exc))
                log.info("link_retry", site=self._site, link=link.name, address=address, reason=exc)
                reason = refusal_reason(exc)
                if self._tls is not None and reason is not None:
                    self._tls.refused("dialer", reason, str(address), exc)
            if self._clock.monotonic() - started > STABLE_SESSION_S:
                backoff.reset()
            await self._clock.sleep(backoff.next_delay())

    async def _connect(self, address: Address, link: LinkConfig) -> FrameConnection:
        """Dial, over TLS when configured: the server's certificate must name the site."""
        limit = self._topology.limits.max_frame_bytes
        if self._tls is None:
            return await FrameConnection.connect(address, limit)
        peer = link.receiver if link.mode == "push" else link.origin
        return await FrameConnection.connect(
            address, limit, tls=self._tls.client_context(), server_name=peer
        )

    async def _dialed(self, conn: Connection, link: LinkConfig) -> None:
        if link.mode == "push":
            conn.send(self._hello("push", link.origin))
            reply = await self._reply(conn, link.receiver)
            await self._session(link, self._reship(conn, link, reply.heads))
        else:
            conn.send(self._hello("pull", link.origin, self._receiver_heads(link)))
            await self._reply(conn, link.origin)
            await self._session(link, self._collect(conn, link))

    async def _reply(self, conn: Connection, expected: str) -> Hello:
        try:
            frame: Frame = await conn.recv(HELLO_TIMEOUT_S)
        except ConnectionLost as exc:
            if self._tls is None:
                raise
            # Under TLS 1.3 a listener checks the client certificate after the dialer's
            # handshake is done, and drops the connection without telling why.
            raise AuthenticationError(
                "refused_by_peer",
                f"{expected} closed the connection before its HELLO reply: it refused this "
                f"site's certificate or the TLS session (its log says why): {exc}",
            ) from exc
        except TimeoutError:
            raise ProtocolError(
                f"{expected} did not answer HELLO within {HELLO_TIMEOUT_S:.0f} s"
            ) from None
        if frame.type == FrameType.ERROR:
            error = decode_error(frame)
            if error.code.startswith("auth:"):
                raise AuthenticationError(
                    error.code.removeprefix("auth:"),
                    f"{expected} refused the link: {error.message}",
                )
            raise ProtocolError(f"{expected} refused the link: {error.message}")
        reply = decode_hello(frame)
        if reply.role != "reply" or reply.site != expected:
            raise ProtocolError(
                f"expected a HELLO reply from {expected}, "
                f"got role {reply.role!r} from {reply.site!r}"
            )
        check_agreement(self._topology, reply)
        return reply

    async def close(self) -> None:
        self.stop_listening()
        for task in [*self._handlers, *self._sessions.values()]:
            task.cancel()
        await asyncio.gather(*self._handlers, *self._sessions.values(), return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
