"""FrameConnection over TLS on loopback, on asyncio's own loop and on uvloop: a frame each
way with the peer's certificate names, and a refused handshake reported with its reason."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from multiactive.errors import ConnectionLost
from multiactive.model.topology import Address
from multiactive.security.certs import issue, make_ca
from multiactive.security.tls import client_context, refusal_reason
from multiactive.wire.connection import FrameConnection, serve
from multiactive.wire.frames import FrameType, encode_frame

LIMIT = 1 << 20


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("certs")
    for name, ca in (("site", make_ca("t")), ("stranger", make_ca("other"))):
        (root / f"{name}-ca.crt").write_bytes(ca[1])
        for who in ("a", "b"):
            key, cert = issue(*ca, who)
            (root / f"{name}-{who}.crt").write_bytes(cert)
            (root / f"{name}-{who}.key").write_bytes(key)
    return root


def server_context(root: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(root / "site-ca.crt")
    context.load_cert_chain(root / "site-a.crt", root / "site-a.key")
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


def run(main: Callable[[], Coroutine[Any, Any, None]], loop: str) -> None:
    if loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_frame_each_way_over_tls_with_the_peer_names(certs: Path, loop: str) -> None:
    async def main() -> None:
        accepted: asyncio.Queue[FrameConnection] = asyncio.Queue()
        server = await serve(Address("127.0.0.1", 0), LIMIT, accepted.put_nowait,
                             lambda: server_context(certs))  # fmt: skip
        port = server.sockets[0].getsockname()[1]
        context = client_context(
            [certs / "site-ca.crt"], certs / "site-b.crt", certs / "site-b.key"
        )
        dialer = await FrameConnection.connect(Address("127.0.0.1", port), LIMIT, tls=context,
                                               server_name="a")  # fmt: skip
        dialer.send(encode_frame(FrameType.HEARTBEAT, b"x"))  # right after the handshake
        other = await asyncio.wait_for(accepted.get(), 5)
        assert (await other.recv(5)).body == b"x"
        other.send(encode_frame(FrameType.HEARTBEAT, b"y"))
        assert (await dialer.recv(5)).body == b"y"
        assert (other.peer_names, dialer.peer_names) == (("b",), ("a",))
        await dialer.close()
        await other.close()
        server.close()

    run(main, loop)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_certificate_of_another_ca_is_refused_on_the_first_read(certs: Path, loop: str) -> None:
    async def main() -> None:
        refused: asyncio.Queue[BaseException] = asyncio.Queue()
        server = await serve(Address("127.0.0.1", 0), LIMIT, lambda conn: None,
                             lambda: server_context(certs),
                             lambda peer, exc: refused.put_nowait(exc))  # fmt: skip
        port = server.sockets[0].getsockname()[1]
        context = client_context(
            [certs / "site-ca.crt"], certs / "stranger-b.crt", certs / "stranger-b.key"
        )
        dialer = await FrameConnection.connect(Address("127.0.0.1", port), LIMIT, tls=context,
                                               server_name="a")  # fmt: skip
        with pytest.raises(ConnectionLost):
            await dialer.recv(5)
        assert refusal_reason(await asyncio.wait_for(refused.get(), 5)) == "unknown_ca"
        await dialer.close()
        server.close()

    run(main, loop)
