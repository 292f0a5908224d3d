"""Certificates of a cluster: one CA, and per site a key and a certificate naming the site.

    ca_key, ca_cert = make_ca("weibo")
    key, cert = issue(ca_key, ca_cert, "bj-unicom")     # SAN: DNS:bj-unicom
    describe(cert)                                       # [CertInfo(subject, sans, expiry, ...)]

Keys are ECDSA P-256 (fast to make and to handshake with); values are PEM bytes. A site
certificate may serve and dial (extended key usage serverAuth and clientAuth): on a link the
dialer shows it as a client certificate and the listener as a server certificate. The site
name is the certificate's subject alternative name, the name every peer checks (L5).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from multiactive.errors import ConfigError
from multiactive.model.record import Record

DEFAULT_CA_DAYS = 3650
DEFAULT_SITE_DAYS = 365
CLOCK_SKEW_S = 300  # a new certificate is valid from 5 minutes ago: peers' clocks differ


@dataclass(frozen=True, slots=True)
class CertInfo(Record):
    subject: str
    issuer: str
    sans: tuple[str, ...]
    not_before: str  # ISO 8601, UTC
    not_after: str
    expires_in_s: float  # negative once expired
    is_ca: bool
    fingerprint: str  # sha256, hex


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str, cluster: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"multiactive {cluster}"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


_CA_USAGE = x509.KeyUsage(
    digital_signature=True, key_cert_sign=True, crl_sign=True,
    content_commitment=False, key_encipherment=False, data_encipherment=False,
    key_agreement=False, encipher_only=False, decipher_only=False,
)  # fmt: skip


def make_ca(cluster: str, days: int = DEFAULT_CA_DAYS) -> tuple[bytes, bytes]:
    """A new cluster CA: (key PEM, certificate PEM)."""
    key = _new_key()
    name = _name(f"{cluster} cluster CA", cluster)
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(seconds=CLOCK_SKEW_S))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _key_pem(key), cert.public_bytes(serialization.Encoding.PEM)


def issue(
    ca_key_pem: bytes,
    ca_cert_pem: bytes,
    name: str,
    days: int = DEFAULT_SITE_DAYS,
    *,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> tuple[bytes, bytes]:
    """A key and a certificate for `name` (a site, or a client's name), signed by the CA;
    `not_before`/`not_after` override the validity (tests make expired ones with them)."""
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ConfigError("the CA key is not an EC key made by `multiactive certs init`")
    key = _new_key()
    now = _now()
    start = not_before or now - dt.timedelta(seconds=CLOCK_SKEW_S)
    end = not_after or now + dt.timedelta(days=days)
    cluster = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    org = str(cluster[0].value).removeprefix("multiactive ") if cluster else "multiactive"
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name, org))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return _key_pem(key), cert.public_bytes(serialization.Encoding.PEM)


def load_certificates(pem: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise ConfigError(f"not a PEM certificate: {exc}") from exc


def sans_of(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    return tuple(ext.value.get_values_for_type(x509.DNSName))


def info(cert: x509.Certificate, now: dt.datetime | None = None) -> CertInfo:
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    end = cert.not_valid_after_utc
    return CertInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        sans=sans_of(cert),
        not_before=cert.not_valid_before_utc.isoformat(),
        not_after=end.isoformat(),
        expires_in_s=(end - (now or _now())).total_seconds(),
        is_ca=is_ca,
        fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
    )


def describe(pem: bytes, now: dt.datetime | None = None) -> list[CertInfo]:
    """Subject, SANs and validity of every certificate in a PEM file's bytes."""
    return [info(cert, now) for cert in load_certificates(pem)]


# -- files (`multiactive certs`) -----------------------------------------------------------


def write_secret(path: Path, data: bytes) -> None:
    """Write a key readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_bytes(data)


def write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
