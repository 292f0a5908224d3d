"""A live site fed the fuzzer's inputs on its socket stays up, and its durable data (journal
heads and state digest) is unchanged: raw bytes, and frames after a HELLO as a publisher, as
a pushing origin and as a pulling receiver."""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path

import msgpack
import pytest

from multiactive.model.topology import Address
from multiactive.testing.fuzz import seeds
from multiactive.wire.frames import FrameType, encode_frame

from .conftest import ClusterFactory, publish

pytestmark = pytest.mark.integration
CORPUS = Path(__file__).resolve().parents[1] / "fuzz_corpus"
CONNECTIONS = 240
NOT_PUBLISH = [t for t in FrameType if t != FrameType.PUBLISH]


def hello(role: str, site: str = "b", origin: str = "") -> bytes:
    body = {"site": site, "role": role, "cluster": "local", "origin": origin or site,
            "heads": {}, "version": 1}  # fmt: skip
    return encode_frame(FrameType.HELLO, msgpack.packb(body))


def inputs(rng: random.Random) -> list[bytes]:
    """What each connection sends: corpus inputs and their mutations, raw or framed."""
    corpus = [p.read_bytes()[1:] for p in CORPUS.iterdir()] + [s[1:] for s in seeds()]
    made = []
    for index in range(CONNECTIONS):
        data = bytearray(rng.choice(corpus))
        for _ in range(rng.randint(0, 4)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        body = bytes(data)
        kind = rng.choice(NOT_PUBLISH)
        framed = encode_frame(kind, body)
        made.append(
            [
                body,  # raw bytes: framing, checksum
                hello("client", "") + framed,  # a publisher sending what a publisher may not
                hello("client", "")
                + encode_frame(FrameType.PUBLISH, b"\xc1" + body),  # not msgpack
                hello("push") + framed,  # an origin's link: batches of the wrong origin, bad ACKs
                hello("pull", "b", "a") + framed,  # a receiver's link
            ][index % 5]
        )
    return made


async def send_all(address: Address, payloads: list[bytes]) -> None:
    async def one(data: bytes) -> None:
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection(address.host, address.port)
            writer.write(data)
            await writer.drain()
            with contextlib.suppress(TimeoutError, OSError):
                await asyncio.wait_for(reader.read(1 << 16), 0.5)  # an answer, or nothing
            writer.close()

    for start in range(0, len(payloads), 24):
        await asyncio.gather(*(one(d) for d in payloads[start : start + 24]))


def test_a_live_site_fed_fuzz_inputs_stays_up_and_keeps_its_data(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(("a", "b"), partitions=2)
    cluster.start(["a"])
    publish(cluster.client_address("a"), 40, lambda i: f"k{i}")
    cluster.wait_converged(30, sites=["a"])
    heads, digest = cluster.get("a", "/heads"), cluster.digest("a")

    asyncio.run(send_all(cluster.client_address("a"), inputs(random.Random(7))))

    assert cluster.processes["a"].alive
    assert cluster.get("a", "/health")["status"] == "ok"
    assert cluster.get("a", "/heads") == heads  # every stream's head and applied watermark
    assert cluster.digest("a") == digest
    log = cluster.processes["a"].log_path.read_text(errors="replace")
    assert log.count("connection_refused") > CONNECTIONS // 2
    assert len(publish(cluster.client_address("a"), 5, lambda i: f"after{i}")) == 5
