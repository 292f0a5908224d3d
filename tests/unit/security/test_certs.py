"""Certificates: a cluster CA, site certificates naming the site, and what `show` reports;
the `[tls]` section's errors name the setting and the file."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import pytest
from click.testing import CliRunner

from multiactive.cli.main import cli
from multiactive.errors import AuthenticationError, ConfigError
from multiactive.model.topology import parse_topology
from multiactive.security.certs import describe, issue, make_ca
from multiactive.security.tls import TlsMaterial, check_link_peer, refusal_reason


@pytest.fixture(scope="module")
def ca() -> tuple[bytes, bytes]:
    return make_ca("test")


def topology(tmp_path: Path, tls: dict[str, object] | None = None) -> object:
    raw = {
        "cluster": {"name": "test"},
        "sites": [{"name": "a", "listen": "127.0.0.1:1"}, {"name": "b", "listen": "127.0.0.1:2"}],
        "tls": tls if tls is not None else {},
    }
    return parse_topology(raw, source="t.toml", base_dir=tmp_path)


def write_site(tmp_path: Path, ca: tuple[bytes, bytes], name: str, cert_name: str = "") -> None:
    (tmp_path / "certs").mkdir(exist_ok=True)
    (tmp_path / "certs" / "ca.crt").write_bytes(ca[1])
    key, cert = issue(*ca, cert_name or name)
    (tmp_path / "certs" / f"{name}.crt").write_bytes(cert)
    (tmp_path / "certs" / f"{name}.key").write_bytes(key)


def test_a_site_certificate_names_the_site_and_its_ca_signs_it(ca: tuple[bytes, bytes]) -> None:
    _, cert = issue(*ca, "bj-unicom", days=30)
    [row] = describe(cert)
    assert row.sans == ("bj-unicom",)
    assert "CN=bj-unicom" in row.subject
    assert "test cluster CA" in row.issuer
    assert 29 * 86400 < row.expires_in_s <= 30 * 86400
    assert describe(ca[1])[0].is_ca


def test_an_expired_certificate_shows_a_negative_expiry(ca: tuple[bytes, bytes]) -> None:
    now = dt.datetime.now(dt.UTC)
    _, cert = issue(
        *ca, "a", not_before=now - dt.timedelta(days=3), not_after=now - dt.timedelta(days=1)
    )
    assert describe(cert)[0].expires_in_s < 0


def test_tls_section_paths_are_relative_to_the_topology(tmp_path: Path) -> None:
    tls = topology(tmp_path, {"ca": ["one.crt", "two.crt"]}).tls  # type: ignore[attr-defined]
    assert tls.ca == (tmp_path / "one.crt", tmp_path / "two.crt")
    assert tls.cert_path("a") == tmp_path / "certs" / "a.crt"


@pytest.mark.parametrize(
    ("tls", "message"),
    [
        ({"clients": "maybe"}, "tls.clients"),
        ({"ca": 3}, "tls.ca"),
        ({"admin_read": "closed"}, "tls.admin_read"),
        ({"colour": "red"}, "tls.colour: unknown setting"),
    ],
)
def test_a_bad_tls_setting_is_named(tmp_path: Path, tls: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        topology(tmp_path, tls)


def test_material_loads_and_makes_tls13_contexts(tmp_path: Path, ca: tuple[bytes, bytes]) -> None:
    write_site(tmp_path, ca, "a")
    material = TlsMaterial(topology(tmp_path).tls, "a")  # type: ignore[attr-defined]
    assert material.server_context().minimum_version == ssl.TLSVersion.TLSv1_3
    assert material.client_context().check_hostname
    assert material.certificates["site"].sans == ("a",)
    assert not material.changed()


def test_missing_files_and_wrong_certificates_name_the_setting(
    tmp_path: Path, ca: tuple[bytes, bytes]
) -> None:
    settings = topology(tmp_path).tls  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"tls.ca in t.toml: .*ca.crt does not exist"):
        TlsMaterial(settings, "a")
    write_site(tmp_path, ca, "a", cert_name="b")
    with pytest.raises(ConfigError, match=r"tls.cert .*is for b, not for site 'a'"):
        TlsMaterial(settings, "a")
    write_site(tmp_path, ca, "a")
    (tmp_path / "certs" / "a.key").write_text("not a key")
    with pytest.raises(ConfigError, match=r"tls.key .*a.key is not an unencrypted PEM private key"):
        TlsMaterial(settings, "a")
    other_key, _ = issue(*ca, "a")
    (tmp_path / "certs" / "a.key").write_bytes(other_key)
    with pytest.raises(ConfigError, match="does not belong to the certificate"):
        TlsMaterial(settings, "a")


def test_a_reload_after_a_bad_file_keeps_the_old_contexts(
    tmp_path: Path, ca: tuple[bytes, bytes]
) -> None:
    write_site(tmp_path, ca, "a")
    material = TlsMaterial(topology(tmp_path).tls, "a")  # type: ignore[attr-defined]
    before = material.server_context()
    (tmp_path / "certs" / "a.crt").write_text("garbage")
    assert material.changed()
    assert not material.reload()
    assert material.server_context() is before
    write_site(tmp_path, ca, "a")
    assert material.reload()
    assert material.server_context() is not before


def test_the_link_allow_list() -> None:
    check_link_peer(("a",), "a", ["a", "b"])
    check_link_peer(None, "a", ["a", "b"])  # no [tls]
    for names, claimed, reason in [((), "a", "no_certificate"), (("evil",), "evil", "not_a_site"),
                                   (("b",), "a", "name_mismatch")]:  # fmt: skip
        with pytest.raises(AuthenticationError) as caught:
            check_link_peer(names, claimed, ["a", "b"])
        assert caught.value.reason == reason
        assert refusal_reason(caught.value) == reason


def test_openssl_messages_map_to_reasons() -> None:
    assert (
        refusal_reason(
            ssl.SSLError(
                1, "[SSL: SSLV3_ALERT_CERTIFICATE_EXPIRED] sslv3 alert certificate expired"
            )
        )
        == "expired"
    )
    assert (
        refusal_reason(ssl.SSLError(1, "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca"))
        == "unknown_ca"
    )
    assert (
        refusal_reason(ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"))
        == "plaintext"
    )
    assert refusal_reason(ValueError("nothing to do with TLS")) is None


def test_certs_cli_init_issue_show(tmp_path: Path) -> None:
    runner = CliRunner()
    folder = str(tmp_path / "c")
    assert runner.invoke(cli, ["certs", "init", "--dir", folder]).exit_code == 0
    assert runner.invoke(cli, ["certs", "init", "--dir", folder]).exit_code != 0  # no overwrite
    assert runner.invoke(cli, ["certs", "issue", "gz", "--dir", folder]).exit_code == 0
    shown = runner.invoke(cli, ["certs", "show", "--dir", folder])
    assert shown.exit_code == 0
    assert "SANs    gz" in shown.output
    assert "days left" in shown.output
    assert (tmp_path / "c" / "gz.key").stat().st_mode & 0o077 == 0


def test_a_changed_certificate_file_is_reloaded_by_the_watcher(
    tmp_path: Path, ca: tuple[bytes, bytes]
) -> None:
    """`watch` polls the files' change times on the clock and reloads when one changed."""
    import asyncio

    from multiactive.testing import FakeClock

    write_site(tmp_path, ca, "a")
    material = TlsMaterial(topology(tmp_path).tls, "a")  # type: ignore[attr-defined]

    async def scenario() -> None:
        clock = FakeClock()
        task = asyncio.create_task(material.watch(clock, 1.0))
        await clock.advance(1.0)
        assert material.reloads == 0
        old = material.certificates["site"].fingerprint
        write_site(tmp_path, ca, "a")
        await clock.advance(1.0)
        assert material.reloads == 1
        assert material.certificates["site"].fingerprint != old
        task.cancel()

    asyncio.run(scenario())


def test_the_cli_sends_the_admin_token_from_its_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from multiactive.security.tokens import ADMIN_TOKEN_ENV, admin_headers

    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    assert admin_headers() == {}
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "t" * 20)
    assert admin_headers() == {"Authorization": "Bearer " + "t" * 20}


def test_a_tokens_file_is_checked_and_never_shown(tmp_path: Path) -> None:
    from multiactive.security.tokens import load_tokens

    path = tmp_path / "tokens.toml"
    admin, app = "a" * 20, "b" * 20
    path.write_text(f'admin = ["{admin}"]\n[clients]\nbilling = "{app}"\n')
    tokens = load_tokens(path, "tls.tokens")
    assert tokens.admin_ok("a" * 20)
    assert not tokens.admin_ok("b" * 20)
    assert tokens.application("b" * 20) == "billing"
    assert "a" * 20 not in repr(tokens)
    path.write_text('admin = ["short"]\n')
    with pytest.raises(ConfigError, match=r"tls.tokens: .*16\+ characters"):
        load_tokens(path, "tls.tokens")
