"""Mutual TLS between real site processes: known sites replicate in both link modes; an
unknown site, a wrong CA, an expired or not-yet-valid certificate, a name mismatch, no
certificate and a plaintext peer are each refused, with the reason logged and counted; a
rotated certificate is taken up without a restart while replication goes on."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from multiactive.client import Client
from multiactive.errors import ConnectionLost
from multiactive.local.cluster import LocalCluster
from multiactive.model.topology import Address
from multiactive.security.certs import issue, make_ca
from multiactive.security.tls import client_context
from multiactive.wire.connection import FrameConnection
from multiactive.wire.frames import FrameType
from multiactive.wire.protocol import Hello, decode_error, encode_hello

from .conftest import ClusterFactory, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.tls]
ADMIN_TOKEN = "admin-token-0123456789abcdef"
APP_TOKEN = "billing-token-0123456789abcdef"


@dataclass(frozen=True)
class Pki:
    """Certificates made once for the session: the cluster CA, the CA it rotates to (both
    trusted), and a stranger CA."""

    root: Path
    ca: tuple[bytes, bytes]
    next_ca: tuple[bytes, bytes]
    other_ca: tuple[bytes, bytes]

    @property
    def ca_file(self) -> Path:
        return self.root / "ca.crt"

    def make(self, name: str, file: str = "", ca: tuple[bytes, bytes] | None = None,
             **validity: dt.datetime) -> tuple[Path, Path]:  # fmt: skip
        """Write a key and a certificate for `name`; returns (cert, key)."""
        key, cert = issue(*(ca or self.ca), name, **validity)  # type: ignore[arg-type]
        stem = self.root / (file or name)
        stem.with_suffix(".crt").write_bytes(cert)
        stem.with_suffix(".key").write_bytes(key)
        return stem.with_suffix(".crt"), stem.with_suffix(".key")

    def settings(self, prefix: str = "", **extra: object) -> dict[str, object]:
        return {"ca": [str(self.ca_file), str(self.root / "ca-next.crt")],
                "tokens": str(self.root / "tokens.toml"),
                "cert": str(self.root / f"{prefix}{{site}}.crt"),
                "key": str(self.root / f"{prefix}{{site}}.key"), **extra}  # fmt: skip


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    made = Pki(root, make_ca("local"), make_ca("local-next"), make_ca("stranger"))
    made.ca_file.write_bytes(made.ca[1])
    (root / "ca-next.crt").write_bytes(made.next_ca[1])
    (root / "tokens.toml").write_text(
        f'admin = ["{ADMIN_TOKEN}"]\n[clients]\nbilling = "{APP_TOKEN}"\n'
    )
    now = dt.datetime.now(dt.UTC)
    for site in ("a", "b"):
        made.make(site)
        made.make(site, f"rot-{site}")
    made.make("evil")  # the cluster's own CA, a name that is no site
    made.make("billing")  # a publisher's client certificate (certs issue --client)
    made.make("b", "b-wrong-ca", made.other_ca)
    made.make("b", "b-expired", not_before=now - dt.timedelta(days=30),
              not_after=now - dt.timedelta(days=1))  # fmt: skip
    made.make("b", "b-future", not_before=now + dt.timedelta(days=1),
              not_after=now + dt.timedelta(days=30))  # fmt: skip
    return made


TLS_ROUTING = """
[routing]
[[routing.regions]]
name = "all"
cidrs = ["127.0.0.0/8"]
weights = { a = 50, b = 50 }
"""


@pytest.fixture(scope="module")
def tls_cluster(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Two sites on mutual TLS, a->b in push mode and b->a in pull mode: shared by the tests
    of this module (the rotation test, last, changes b's certificate)."""
    root = tmp_path_factory.mktemp("tls-cluster")
    with LocalCluster(
        root, ("a", "b"), partitions=2, modes={("b", "a"): "pull"},
        settings={"tls": pki.settings("rot-", clients="cert")}, routing=TLS_ROUTING,
    ) as cluster:  # fmt: skip
        cluster.start()
        yield cluster


def log_of(cluster: LocalCluster, site: str) -> str:
    return cluster.processes[site].log_path.read_text(errors="replace")


def refusals(cluster: LocalCluster, site: str) -> dict[tuple[str, str], float]:
    with urllib.request.urlopen(f"http://{cluster.processes[site].admin}/metrics") as resp:
        text = resp.read().decode()
    return {
        (s.labels["side"], s.labels["reason"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "multiactive_tls_refused"
        for s in family.samples
        if s.name.endswith("_total")
    }


async def publish_tls(
    cluster: LocalCluster, pki: Pki, site: str, count: int, token: str = "", cert: bool = True
) -> None:
    """Publish over TLS, with the publisher's client certificate unless `cert` is False."""
    mine = (pki.root / "billing.crt", pki.root / "billing.key") if cert else (None, None)
    context = client_context([pki.ca_file, pki.root / "ca-next.crt"], *mine)
    address = cluster.client_address(site)
    async with Client(address, tls=context, server_name=site, token=token) as client:
        await asyncio.gather(*(client.publish("kv.set", f"{site}{i}", b"v") for i in range(count)))


def expiry_of(cluster: LocalCluster, site: str) -> float:
    with urllib.request.urlopen(f"http://{cluster.processes[site].admin}/metrics") as resp:
        text = resp.read().decode()
    return next(
        s.value
        for family in text_string_to_metric_families(text)
        if family.name == "multiactive_tls_certificate_expiry_seconds"
        for s in family.samples
        if s.labels["certificate"] == "site"
    )


def total_heads(cluster: LocalCluster, site: str) -> int:
    return sum(s.head for s in cluster.status(site).streams)


def test_known_sites_replicate_over_mutual_tls_in_both_modes(
    tls_cluster: LocalCluster, pki: Pki
) -> None:
    """a->b (push) and b->a (pull) carry writes between the two known sites; publishers
    connect over TLS to either, and need a client certificate (clients = "cert")."""
    cluster = tls_cluster
    assert {link.mode for link in cluster.status("a").links} == {"push", "pull"}
    for site in ("a", "b"):
        asyncio.run(publish_tls(cluster, pki, site, 50))
    with pytest.raises(ConnectionLost, match="client certificate"):
        asyncio.run(publish_tls(cluster, pki, "a", 1, cert=False))
    cluster.wait_converged(30)
    assert total_heads(cluster, "a") == total_heads(cluster, "b") == 100


def test_a_site_with_a_certificate_of_another_ca_is_refused_on_both_ends(
    make_cluster: ClusterFactory, pki: Pki
) -> None:
    """b's certificate is from a stranger CA: a refuses b's links as listener (unknown_ca)
    and as dialer (b's server certificate does not verify); b logs that a refused it; no
    write crosses."""
    pki.make("a", "mixed-a")
    pki.make("b", "mixed-b", pki.other_ca)
    cluster = make_cluster(settings={"tls": pki.settings("mixed-", clients="token")})
    cluster.start()
    asyncio.run(publish_tls(cluster, pki, "a", 10, token=APP_TOKEN))
    with pytest.raises(ConnectionLost, match="application token"):  # clients = "token"
        asyncio.run(publish_tls(cluster, pki, "a", 1, token="not-the-token-0123456789"))
    assert "application=billing" in log_of(cluster, "a")
    assert APP_TOKEN not in log_of(cluster, "a")
    wait_for(lambda: refusals(cluster, "a").get(("listener", "unknown_ca"), 0) >= 1, 15,
             "a refuses b's certificate as listener")  # fmt: skip
    wait_for(lambda: refusals(cluster, "a").get(("dialer", "unknown_ca"), 0) >= 1, 15,
             "a refuses b's certificate as dialer")  # fmt: skip
    wait_for(lambda: refusals(cluster, "b").get(("dialer", "refused_by_peer"), 0) >= 1, 15,
             "b learns that a refused it")  # fmt: skip
    assert "tls_refused site=b side=dialer" in log_of(cluster, "b")
    assert total_heads(cluster, "b") == 0


async def rogue_link(
    address: Address, cert: tuple[Path, Path] | None, claims: str, ca: Path
) -> str:
    """Dial as a pushing origin that claims `claims`; what the site answers, as text."""
    context = client_context([ca], *(cert or (None, None)))
    conn = await FrameConnection.connect(address, 1 << 22, tls=context, server_name="a")
    try:
        conn.send(encode_hello(Hello(claims, "push", "local", claims)))
        # Under TLS 1.3 a refused certificate shows up here, on the first read: the listener
        # checks it after the dialer's handshake is done, and resets the connection.
        frame = await conn.recv(5.0)
        assert frame.type == FrameType.ERROR, frame.type
        error = decode_error(frame)
        return f"{error.code}: {error.message}"
    except ConnectionLost as exc:
        return f"lost: {exc} {exc.__cause__}"
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("cert", "claims", "answer", "reason"),
    [
        ("evil", "evil", "auth:not_a_site", "not_a_site"),
        ("a", "b", "auth:name_mismatch", "name_mismatch"),
        ("", "b", "auth:no_certificate", "no_certificate"),
        ("b-wrong-ca", "b", "lost:", "unknown_ca"),
        ("b-expired", "b", "lost:", "expired"),
        ("b-future", "b", "lost:", "not_yet_valid"),
    ],
)
def test_a_link_peer_that_is_not_a_known_site_is_refused(
    tls_cluster: LocalCluster, pki: Pki, cert: str, claims: str, answer: str, reason: str
) -> None:
    """A chain from the cluster CA is not enough: the certificate must name a site of the
    topology and the site the HELLO claims; a stranger CA, an expired or not-yet-valid
    certificate and no certificate are refused; the listener logs and counts the reason."""
    before = refusals(tls_cluster, "a").get(("listener", reason), 0)
    files = None if not cert else (pki.root / f"{cert}.crt", pki.root / f"{cert}.key")
    said = asyncio.run(rogue_link(tls_cluster.client_address("a"), files, claims, pki.ca_file))
    assert answer in said.lower()
    wait_for(lambda: refusals(tls_cluster, "a").get(("listener", reason), 0) == before + 1, 10,
             f"a counts a {reason} refusal")  # fmt: skip
    assert "tls_refused site=a side=listener" in log_of(tls_cluster, "a")
    assert f"reason={reason}" in log_of(tls_cluster, "a")
    assert total_heads(tls_cluster, "a") == total_heads(tls_cluster, "b")  # nothing journaled


def test_a_plaintext_peer_is_refused_and_no_plaintext_is_dialed(
    tls_cluster: LocalCluster, pki: Pki
) -> None:
    """Once [tls] is set the listener speaks nothing but TLS: a plaintext publisher or link
    gets no answer, and the site logs reason=plaintext."""
    before = refusals(tls_cluster, "a").get(("listener", "plaintext"), 0)

    async def plaintext() -> None:
        async with Client(tls_cluster.client_address("a")) as client:
            await client.publish("kv.set", "k", b"v")

    with pytest.raises(ConnectionLost):
        asyncio.run(plaintext())
    wait_for(lambda: refusals(tls_cluster, "a").get(("listener", "plaintext"), 0) > before, 10,
             "a counts a plaintext refusal")  # fmt: skip


def test_a_rotated_certificate_is_taken_up_without_restart(
    tls_cluster: LocalCluster, pki: Pki
) -> None:
    """Both CAs are trusted during a CA rotation; b's certificate is replaced by one of the
    next CA and SIGHUP reloads it: new connections get the new certificate, the links already
    up go on, and every write published before, during and after arrives."""
    cluster = tls_cluster
    asyncio.run(publish_tls(cluster, pki, "a", 100))
    cluster.wait_converged(30)
    before = total_heads(cluster, "a")
    connects = {link.name: link.connects for link in cluster.status("b").links}

    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=10)
    pki.make("b", "rot-b", pki.next_ca, not_after=soon)
    cluster.processes["b"].signal(signal.SIGHUP)
    wait_for(lambda: "tls_reloaded" in log_of(cluster, "b"), 10, "b reloads its certificate")
    asyncio.run(publish_tls(cluster, pki, "a", 100))
    asyncio.run(publish_tls(cluster, pki, "b", 100))
    cluster.wait_converged(30)
    assert total_heads(cluster, "a") == total_heads(cluster, "b") == before + 200
    assert {link.name: link.connects for link in cluster.status("b").links} == connects
    served = ssl.get_server_certificate(("127.0.0.1", cluster.client_address("b").port))
    assert served.strip() == (pki.root / "rot-b.crt").read_text().strip()
    assert expiry_of(cluster, "b") < 14 * 86400  # the gauge to alert on
    [warning] = cluster.get("b", "/cluster/status")["tls_warnings"]  # the dashboard shows it
    assert "b: certificate site (CN=b" in warning
    assert "expires in 10.0 days" in warning
    assert cluster.get("a", "/cluster/status")["tls_warnings"] == []


def admin_call(cluster: LocalCluster, method: str, path: str, token: str | None) -> int:
    request = urllib.request.Request(
        f"http://{cluster.processes['a'].admin}{path}", data=b"{}" if method == "POST" else None,
        method=method,
    )  # fmt: skip
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_mutating_admin_calls_need_the_admin_token(tls_cluster: LocalCluster) -> None:
    """With [tls], reconcile-now and replay answer 401 without a token and 403 with a wrong
    one, and work with the admin token; read-only endpoints stay open (admin_read = "open");
    the token never reaches the log."""
    for path in ("/reconcile", "/deadletters/replay"):
        assert admin_call(tls_cluster, "POST", path, None) == 401
        assert admin_call(tls_cluster, "POST", path, "wrong-token-0123456789abcdef") == 403
        assert admin_call(tls_cluster, "POST", path, ADMIN_TOKEN) == 200
    assert admin_call(tls_cluster, "GET", "/status", None) == 200
    assert admin_call(tls_cluster, "GET", "/health", None) == 200
    log = log_of(tls_cluster, "a")
    assert "admin_refused site=a method=POST path=/reconcile" in log
    assert ADMIN_TOKEN not in log
    assert "wrong-token" not in log


def test_route_changes_need_the_admin_token(
    tls_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With [tls], `multiactive route` changes are refused without the admin token (401) and
    go through with MULTIACTIVE_ADMIN_TOKEN; the policy stays readable without one."""
    from click.testing import CliRunner

    from multiactive.cli.main import cli

    args = ["route", "drain", "b", "--topology", str(tls_cluster.topology_path), "--site", "a"]
    monkeypatch.delenv("MULTIACTIVE_ADMIN_TOKEN", raising=False)
    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code != 0
    assert "HTTP 401" in refused.output
    monkeypatch.setenv("MULTIACTIVE_ADMIN_TOKEN", ADMIN_TOKEN)
    done = CliRunner().invoke(cli, args)
    assert done.exit_code == 0, done.output
    assert tls_cluster.get("a", "/routing")["policy"]["site_states"]["b"] == "draining"
