"""Typed frame bodies: what each frame type carries, encoded with msgpack, checked on decode.

Sans-I/O like `frames`: these functions turn values into frames and frames into values, and
raise `ProtocolError` naming the frame and the field when a peer sends the wrong shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgpack

from multiactive.errors import ProtocolError
from multiactive.model.batch import RecordBatch
from multiactive.wire.frames import Frame, FrameType, encode_frame, encode_frame_of

PROTOCOL_VERSION = 1
Role = Literal["push", "pull", "client", "reply"]
ROLES: tuple[Role, ...] = ("push", "pull", "client", "reply")


def _pack(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _unpack(frame: Frame) -> Any:
    try:
        return msgpack.unpackb(frame.body, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:  # TypeError: a map key
        # that is itself a map or a list (unhashable), found by the fuzzer
        raise ProtocolError(f"{frame.type.name} frame body is not msgpack: {exc}") from exc


def _expect(frame: Frame, kind: FrameType) -> None:
    if frame.type != kind:
        raise ProtocolError(f"expected a {kind.name} frame, got {frame.type.name}")


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame each way. For links, `heads` are the receiver's heads of `origin`'s streams.

    role: `push` (an origin dials its receiver), `pull` (a receiver dials the origin),
    `client` (a publisher), `reply` (the answer of the side that was dialed).
    """

    site: str
    role: Role
    cluster: str
    origin: str = ""
    heads: dict[int, int] = field(default_factory=dict)
    version: int = PROTOCOL_VERSION
    token: str = ""  # a publisher's application token, when [tls] clients = "token"
    # What the two ends' topology files must agree on (links check them; 0 / () = not said)
    partitions: int = 0
    sites: tuple[str, ...] = ()

    def __repr__(self) -> str:  # never the token, in logs or tracebacks
        shown = "***" if self.token else ""
        return f"Hello(site={self.site!r}, role={self.role!r}, token={shown!r})"


def encode_hello(hello: Hello) -> bytes:
    body: dict[str, object] = {
        "site": hello.site,
        "role": hello.role,
        "cluster": hello.cluster,
        "origin": hello.origin,
        "heads": hello.heads,
        "version": hello.version,
        "partitions": hello.partitions,
        "sites": list(hello.sites),
    }
    if hello.token:
        body["token"] = hello.token
    return encode_frame(FrameType.HELLO, _pack(body))


def decode_hello(frame: Frame) -> Hello:
    _expect(frame, FrameType.HELLO)
    body = _unpack(frame)
    if not isinstance(body, dict):
        raise ProtocolError("HELLO body must be a map")
    version = body.get("version")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {version!r} is not supported (this site speaks {PROTOCOL_VERSION})"
        )
    role = body.get("role")
    if role not in ROLES:
        raise ProtocolError(f"HELLO role {role!r} is unknown; expected one of {', '.join(ROLES)}")
    heads = body.get("heads", {})
    if not isinstance(heads, dict) or not all(
        isinstance(k, int) and isinstance(v, int) and v >= 0 for k, v in heads.items()
    ):
        raise ProtocolError("HELLO heads must map partition numbers to seqs >= 0")
    site, cluster, origin = body.get("site"), body.get("cluster"), body.get("origin", "")
    token = body.get("token", "")
    if not (isinstance(site, str) and isinstance(cluster, str)) or not (
        isinstance(origin, str) and isinstance(token, str)
    ):
        raise ProtocolError("HELLO site, cluster, origin and token must be strings")
    partitions, sites = body.get("partitions", 0), body.get("sites", [])
    if (
        not isinstance(partitions, int)
        or not isinstance(sites, list)
        or not all(isinstance(name, str) for name in sites)
    ):
        raise ProtocolError("HELLO partitions must be an int and sites a list of names")
    return Hello(site, role, cluster, origin, heads, version, token, partitions, tuple(sites))


def encode_batches(batches: Sequence[RecordBatch]) -> bytes:
    """The BATCHES frame of `batches`, checksummed batch by batch and joined once (joining
    the body, then prefixing its header, copied every shipped byte twice)."""
    return encode_frame_of(FrameType.BATCHES, [batch.data for batch in batches])


@dataclass(frozen=True, slots=True)
class Ack:
    """A receiver's durable heads for some partitions of one origin.

    `gaps` lists partitions where a batch was refused because it started above head + 1:
    the sender rewinds those partitions to head + 1.
    """

    heads: dict[int, int]
    gaps: tuple[int, ...] = ()


def encode_ack(ack: Ack) -> bytes:
    return encode_frame(FrameType.ACK, _pack({"heads": ack.heads, "gaps": list(ack.gaps)}))


def decode_ack(frame: Frame) -> Ack:
    body = _unpack(frame)
    heads = body.get("heads") if isinstance(body, dict) else None
    gaps = body.get("gaps", []) if isinstance(body, dict) else None
    if not isinstance(heads, dict) or not isinstance(gaps, list):
        raise ProtocolError("ACK body must be a map with 'heads' (map) and 'gaps' (list)")
    if not all(isinstance(k, int) and isinstance(v, int) for k, v in heads.items()):
        raise ProtocolError("ACK heads must map partition numbers to seqs")
    if not all(isinstance(g, int) for g in gaps):
        raise ProtocolError("ACK gaps must list partition numbers")
    return Ack(heads, tuple(gaps))


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Sent every `heartbeat_interval_s` both ways. A sender adds what the origin holds
    (`heads`) and the creation time of the oldest message the receiver has not acknowledged
    (`oldest_ms`), so the receiver can report its lag in messages and in seconds."""

    now_ms: int
    heads: dict[int, int] = field(default_factory=dict)
    oldest_ms: int | None = None


def encode_heartbeat(beat: Heartbeat) -> bytes:
    body = {"t": beat.now_ms, "heads": beat.heads, "oldest": beat.oldest_ms}
    return encode_frame(FrameType.HEARTBEAT, _pack(body))


def decode_heartbeat(frame: Frame) -> Heartbeat:
    body = _unpack(frame)
    if not isinstance(body, dict) or not isinstance(body.get("t"), int):
        raise ProtocolError("HEARTBEAT body must be a map with 't' (int)")
    heads = body.get("heads", {})
    oldest = body.get("oldest")
    if not isinstance(heads, dict) or not all(
        isinstance(k, int) and isinstance(v, int) for k, v in heads.items()
    ):
        raise ProtocolError("HEARTBEAT heads must map partition numbers to seqs")
    if oldest is not None and not isinstance(oldest, int):
        raise ProtocolError("HEARTBEAT oldest must be an int or nil")
    return Heartbeat(body["t"], heads, oldest)


@dataclass(frozen=True, slots=True)
class ErrorBody:
    code: str
    message: str


def encode_error(code: str, message: str) -> bytes:
    return encode_frame(FrameType.ERROR, _pack({"code": code, "message": message}))


def decode_error(frame: Frame) -> ErrorBody:
    body = _unpack(frame)
    if not isinstance(body, dict):
        raise ProtocolError("ERROR body must be a map")
    return ErrorBody(str(body.get("code", "error")), str(body.get("message", "")))


# A draft is what a client submits: [id, type, key, headers, payload].
Draft = tuple[str, str, str, dict[str, str], bytes]

# A result per draft, by its first element:
#   [0, partition, seq, duplicate, version]  journaled (version is nil for a duplicate: the
#                                            first acceptance's version is not kept)
#   [1, code, text]                          refused: nothing was journaled for it
#   [2, code, text]                          outcome unknown: the journal's storage failed
#                                            mid-write; it is journaled once or not at all,
#                                            and a publish with the same id tells which
# A client that predates kind 2 reads it as a refusal (not 0); kinds 0 and 1 are unchanged.
RESULT_OK = 0
RESULT_REFUSED = 1
RESULT_UNKNOWN = 2

# Refusal codes ([1, code, text]): what a program may branch on.
REFUSAL_CODES = (
    "malformed",  # a draft is not [id, type, key, headers, payload]
    "bad_id",
    "bad_type",
    "bad_key",
    "bad_payload",
    "payload_too_large",
    "bad_headers",
    "bad_floor",  # a causal token far ahead of the site's clock (another cluster's?)
    "unavailable",  # the site cannot journal now (storage down, shutting down): try later
    "routing",  # the site's routing policy forbids this user's write here: [1, "routing", text,
    # home site] (multiactive.routing.gate)
)
# Outcome-unknown codes ([2, code, text]).
UNKNOWN_CODES = ("store_unknown",)


def encode_publish(request: int, drafts: Sequence[Draft], floor: int = 0) -> bytes:
    """A numbered list of drafts. `floor` (a causal session's token, 0 for none): the site
    gives these drafts versions above it."""
    body: list[object] = [request, drafts, floor] if floor else [request, drafts]
    return encode_frame(FrameType.PUBLISH, _pack(body))


def decode_publish(frame: Frame) -> tuple[int, list[Any], int]:
    """(request number, drafts, version floor)."""
    body = _unpack(frame)
    if not (
        isinstance(body, list)
        and len(body) in (2, 3)
        and isinstance(body[0], int)
        and isinstance(body[1], list)
    ):
        raise ProtocolError("PUBLISH body must be [request number, [drafts], floor?]")
    floor = body[2] if len(body) == 3 else 0
    if not isinstance(floor, int) or floor < 0:
        raise ProtocolError(f"PUBLISH floor must be a version (int >= 0), got {floor!r}")
    return body[0], body[1], floor


def encode_published(request: int, results: Sequence[Sequence[object]], clock: int = 0) -> bytes:
    """One result per draft; `clock`: the site's version clock when it answered (at least
    every version in the results), which a causal session keeps as its token."""
    return encode_frame(FrameType.PUBLISHED, _pack([request, results, clock]))


def decode_published(frame: Frame) -> tuple[int, list[Any], int]:
    """(request number, results, the site's clock)."""
    body = _unpack(frame)
    if not (
        isinstance(body, list)
        and len(body) in (2, 3)
        and isinstance(body[0], int)
        and isinstance(body[1], list)
    ):
        raise ProtocolError("PUBLISHED body must be [request number, [results], clock?]")
    clock = body[2] if len(body) == 3 and isinstance(body[2], int) else 0
    return body[0], body[1], clock
