"""Bad input gets a clear error naming the problem, and never touches what is durable."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from multiactive.client import Client
from multiactive.errors import PayloadTooLarge
from multiactive.local.cluster import LocalCluster
from multiactive.model.batch import build_batch
from multiactive.model.topology import Address
from multiactive.wire.frames import FrameDecoder, FrameType, encode_frame
from multiactive.wire.protocol import (
    Hello,
    decode_error,
    decode_hello,
    encode_batches,
    encode_hello,
)

from .conftest import HERE, publish, with_test_settings


def _exchange(address: Address, *chunks: bytes) -> list[tuple[FrameType, bytes]]:
    """Send raw bytes, then read frames until the site closes the connection."""
    decoder = FrameDecoder(1 << 24)
    frames = []
    with socket.create_connection((address.host, address.port), timeout=10) as sock:
        for chunk in chunks:
            sock.sendall(chunk)
        while data := sock.recv(65536):
            frames += [(f.type, f.body) for f in decoder.feed(data)]
    return frames


def _error_text(frames: list[tuple[FrameType, bytes]]) -> str:
    from multiactive.wire.frames import Frame

    errors = [decode_error(Frame(t, b)) for t, b in frames if t == FrameType.ERROR]
    assert errors, f"expected an ERROR frame, got {frames}"
    return errors[-1].message


def _durable(cluster: LocalCluster, site: str) -> tuple[object, str]:
    return cluster.status(site).to_json()["streams"], cluster.digest(site)


@pytest.fixture
def running(site_b: LocalCluster) -> LocalCluster:
    """Site b running alone with some data, idle (all it journaled applied); site a is down
    (tests speak for it)."""
    site_b.wait_converged(30, sites=["b"])
    return site_b


@pytest.fixture(scope="module")
def site_b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Site b, started once for the tests of this module: each compares what is durable
    before and after its own input."""
    root = tmp_path_factory.mktemp("running")
    with LocalCluster(
        root, ("a", "b"), partitions=4, settings=with_test_settings(None),
        extra_pythonpath=[str(HERE)],
    ) as cluster:  # fmt: skip
        cluster.start(["b"])
        publish(cluster.client_address("b"), 200, lambda i: f"k{i}")
        cluster.wait_converged(30, sites=["b"])
        yield cluster


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\x00\x00\x00\x02\x63\x00\x00\x00\x00hi", "unknown frame type 99"),
        (b"\x7f\xff\xff\xff\x01\x00\x00\x00\x00", "over the limit"),
        (encode_frame(FrameType.HELLO, b"\x80")[:-1] + b"\x81", "checksum mismatch"),
        (encode_frame(FrameType.HELLO, b"\xc1"), "not msgpack"),
    ],
)
def test_malformed_frames_are_refused_with_a_reason(
    running: LocalCluster, raw: bytes, reason: str
) -> None:
    """Garbage on the wire closes that connection with an ERROR naming the problem;
    durable data is unchanged and the site keeps serving."""
    before = _durable(running, "b")
    refused = _log(running, "b").count("connection_refused")
    text = _error_text(_exchange(running.client_address("b"), raw))
    assert reason in text
    assert _durable(running, "b") == before
    assert len(publish(running.client_address("b"), 10, lambda i: f"after{i}")) == 10
    assert _log(running, "b").count("connection_refused") > refused


def _log(cluster: LocalCluster, site: str) -> str:
    return cluster.processes[site].log_path.read_text()


def _push_hello(cluster: LocalCluster, site: str) -> bytes:
    return encode_hello(Hello(site, "push", cluster.name, site))


def test_corrupt_batch_on_a_link_is_refused_and_not_stored(running: LocalCluster) -> None:
    """A batch whose checksum does not match is refused; the receiver stores nothing of it."""
    before = _durable(running, "b")
    batch = build_batch("a", 0, 1, [("id1", "kv.set", "k", 1 << 20, 1, {}, b"v")], 1)
    frame = bytearray(encode_batches([batch]))
    frame[-1] ^= 0xFF  # flip a payload byte; the frame checksum is recomputed below
    corrupt = encode_frame(FrameType.BATCHES, bytes(frame[9:]))
    text = _error_text(_exchange(running.client_address("b"), _push_hello(running, "a"), corrupt))
    assert "batch checksum mismatch" in text
    assert _durable(running, "b") == before


def test_batch_of_another_origin_on_a_link_is_refused(running: LocalCluster) -> None:
    """L1: a link carries only its origin's own messages; a relayed batch is refused."""
    cluster = running
    before = _durable(cluster, "b")
    foreign = build_batch("b", 0, 1, [("id1", "kv.set", "k", 1 << 20, 1, {}, b"v")], 1)
    text = _error_text(
        _exchange(cluster.client_address("b"), _push_hello(cluster, "a"), encode_batches([foreign]))
    )
    assert "carries only its origin's own messages" in text
    assert _durable(cluster, "b") == before


def test_hello_from_an_unknown_site_is_refused(running: LocalCluster) -> None:
    """A peer naming a site the topology does not define is refused, by name."""
    frames = _exchange(running.client_address("b"), _push_hello(running, "mallory"))
    text = _error_text(frames)
    assert "unknown site 'mallory'" in text
    assert "defines: a" in text


def test_valid_push_hello_gets_the_receivers_heads(running: LocalCluster) -> None:
    """The handshake itself works, so the refusals above are about the bad input only."""
    with socket.create_connection(
        (running.client_address("b").host, running.client_address("b").port), timeout=10
    ) as sock:
        sock.sendall(_push_hello(running, "a"))
        decoder = FrameDecoder(1 << 20)
        frames = []
        while not frames:
            frames = decoder.feed(sock.recv(65536))
    reply = decode_hello(frames[0])
    assert reply.role == "reply"
    assert reply.site == "b"
    assert reply.origin == "a"


def test_oversized_payload_is_refused_with_the_limit_and_setting(running: LocalCluster) -> None:
    """A payload over max_payload_bytes is refused naming its size, the limit and the setting."""
    before = _durable(running, "b")

    async def send() -> None:
        async with Client(running.client_address("b")) as client:
            await client.publish("kv.set", "big", b"x" * (11 * 1024))

    with pytest.raises(PayloadTooLarge) as caught:
        asyncio.run(send())
    assert str(caught.value) == (
        "payload is 11 KiB; the limit is 10 KiB (set max_payload_bytes in [limits])"
    )
    assert _durable(running, "b") == before


def _run_site(topology: Path, site: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "multiactive", "site", "run", "--topology", str(topology),
         "--site", site],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(".log")
    }


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A cluster that ran, journaled data, and stopped cleanly. Shared by the tests of this
    module: each fingerprints the data before and after its own refused start."""
    root = tmp_path_factory.mktemp("stopped")
    with LocalCluster(
        root, ("a", "b"), partitions=4, settings=with_test_settings(None),
        extra_pythonpath=[str(HERE)],
    ) as cluster:  # fmt: skip
        cluster.start()
        publish(cluster.client_address("a"), 100, lambda i: f"k{i}")
        cluster.wait_converged(30)
        cluster.stop()
        yield cluster


def test_unknown_site_name_is_refused_at_start(stopped: LocalCluster) -> None:
    """`site run --site` with a name not in the topology exits 2 listing the known sites."""
    before = _fingerprint(stopped.root)
    result = _run_site(stopped.topology_path, "nope")
    assert result.returncode == 2
    assert "unknown site 'nope'" in result.stderr
    assert "defines: a, b" in result.stderr
    assert _fingerprint(stopped.root) == before


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("partitions = 4", "partitions = 0"), "cluster.partitions"),
        (lambda t: t.replace('listen = "127.0.0.1:', 'listen = "127.0.0.1-'), "sites[0].listen"),
        (lambda t: t + "\n[limits]\nmax_paylod_bytes = 5\n", "limits.max_paylod_bytes"),
        (lambda t: t + '\n[[links]]\nfrom = "a"\nto = "zz"\n', "links[0].to: unknown site 'zz'"),
        (lambda t: t + "\n[replication\n", "not valid TOML"),
    ],
)
def test_bad_topology_is_refused_naming_the_field(
    stopped: LocalCluster, edit: object, message: str
) -> None:
    """A broken topology file stops the site before it touches data, naming the field."""
    text = stopped.topology_path.read_text()
    broken = stopped.root / "broken.toml"
    broken.write_text(edit(text))  # type: ignore[operator]
    before = _fingerprint(stopped.root / "a")
    result = _run_site(broken, "a")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert str(broken) in result.stderr
    assert _fingerprint(stopped.root / "a") == before
