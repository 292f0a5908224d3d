"""The `Connection` seam: what link sessions, publishers and the client need of a connection.

Two implementations side by side: `wire/connection.py` (TCP, an asyncio `BufferedProtocol`)
and `wire/memory.py` (an in-process pair, for tests without sockets). Both carry frames
encoded by `wire/frames.py` and decode what they receive with the same `FrameDecoder`, so the
in-memory pair checks framing exactly as TCP does.
"""

from __future__ import annotations

from typing import Protocol

from multiactive.errors import ProtocolError
from multiactive.wire.frames import Frame


class Connection(Protocol):
    peer: str  # who is at the other end, for logs and errors ("127.0.0.1:7100")
    # The DNS names in the peer's verified TLS certificate: () when it showed none, None
    # when the connection is not TLS.
    peer_names: tuple[str, ...] | None

    def send(self, data: bytes) -> None:
        """Queue encoded frames for sending; `ConnectionLost` once the connection is gone."""
        ...

    async def drain(self) -> None:
        """Wait while more than the high-water mark is queued for sending."""
        ...

    async def recv(self, timeout_s: float | None = None) -> Frame:
        """The next frame. `ConnectionLost` at end of stream, `ProtocolError` after a
        malformed frame (frames before it are delivered first), `TimeoutError` when none
        arrives within `timeout_s`."""
        ...

    async def fail(self, error: ProtocolError | str, code: str = "protocol") -> None:
        """Tell the peer why in an ERROR frame (best effort), then close."""
        ...

    async def close(self) -> None:
        """Close, and wait (briefly) until the connection is gone."""
        ...
