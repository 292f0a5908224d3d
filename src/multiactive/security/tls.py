"""A site's TLS material: its certificate and key, the CAs it trusts, the contexts made of them.

`TlsMaterial` loads the files that `[tls]` names (model/tls.py), checks them (each error names
the setting and the file), and makes two `ssl.SSLContext`s, both TLS 1.3 only:

- `server_context()` for the listener: the site's certificate; a client certificate is asked
  for and checked against the CAs when one is shown (links need one: `check_link_peer` refuses
  a link without one after the handshake; publishers need one when `clients = "cert"`);
- `client_context()` for dialing: the site's certificate as the client certificate, and the
  dialed site's name checked against the server certificate's SAN.

`reload()` makes new contexts from the files (SIGHUP, or `changed()` polled by the site): new
connections use them, connections already up keep the ones they were made with. Until the
new files load, the old contexts stay in use and the error is logged.

`check_link_peer` is the allow-list (L5): a certificate from the cluster CA is not enough; its
name must be a site of the topology and the site that the HELLO claims. `refusal_reason` names
why a TLS handshake or a first read failed, for the logs and the metric
`multiactive_tls_refused_total{reason}`.
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from multiactive.clock import Clock
from multiactive.errors import AuthenticationError, ConfigError
from multiactive.logs import get_logger
from multiactive.model.tls import TlsSettings
from multiactive.security.files import read_file
from multiactive.security.tokens import Tokens, load_tokens

if TYPE_CHECKING:
    from cryptography import x509

    from multiactive.security.certs import CertInfo

HANDSHAKE_TIMEOUT_S = 10.0
WATCH_INTERVAL_S = 1.0  # how often a site looks at its certificate files' change times
EXPIRY_WARNING_S = 14 * 24 * 3600.0  # the dashboard warns under 14 days

log = get_logger("tls")

# X509_V_ERR_* codes of OpenSSL, as `ssl.SSLCertVerificationError.verify_code` gives them.
_VERIFY_CODES = {9: "not_yet_valid", 10: "expired", 2: "unknown_ca", 18: "unknown_ca",
                 19: "unknown_ca", 20: "unknown_ca", 21: "unknown_ca",
                 62: "name_mismatch"}  # fmt: skip
_TEXTS = (  # (what OpenSSL says, on either end, lower case) -> reason
    ("certificate has expired", "expired"),
    ("certificate expired", "expired"),
    ("not yet valid", "not_yet_valid"),
    ("unknown ca", "unknown_ca"),
    ("unable to get local issuer", "unknown_ca"),
    ("self-signed certificate", "unknown_ca"),
    ("certificate required", "no_certificate"),
    ("did not return a certificate", "no_certificate"),
    ("hostname mismatch", "name_mismatch"),
    ("wrong version number", "plaintext"),
    ("http request", "plaintext"),
    ("packet length too long", "plaintext"),
    ("record layer failure", "plaintext"),
    ("unexpected eof", "handshake"),
)
REASONS = ("expired", "not_yet_valid", "unknown_ca", "no_certificate", "name_mismatch",
           "not_a_site", "plaintext", "token", "refused_by_peer", "handshake")  # fmt: skip


def refusal_reason(exc: BaseException) -> str | None:
    """Why a TLS connection failed, as one of `REASONS`, or None when TLS was not the cause."""
    for cause in _chain(exc):
        if isinstance(cause, AuthenticationError):
            return cause.reason
        if isinstance(cause, ssl.SSLCertVerificationError) and cause.verify_code in _VERIFY_CODES:
            return _VERIFY_CODES[cause.verify_code]
        text = str(cause).lower()
        for needle, reason in _TEXTS:
            if needle in text:
                return reason
        if isinstance(cause, ssl.SSLError):
            return "handshake"
    return None


def _chain(exc: BaseException) -> Iterable[BaseException]:
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def check_link_peer(names: tuple[str, ...] | None, claimed: str, sites: Iterable[str]) -> None:
    """Refuse a link whose certificate does not name a site, or not the site its HELLO says."""
    if names is None:
        return  # no [tls]: plaintext links, as configured
    if not names:
        raise AuthenticationError(
            "no_certificate",
            f"{claimed!r} showed no client certificate; a link needs one from the cluster CA",
        )
    known = set(sites)
    if not known & set(names):
        raise AuthenticationError(
            "not_a_site",
            f"the certificate is for {', '.join(names)}, which is not a site of the topology",
        )
    if claimed not in names:
        raise AuthenticationError(
            "name_mismatch",
            f"the certificate is for {', '.join(names)}, but the HELLO claims site {claimed!r}",
        )


class TlsMaterial:
    """One site's certificate, key and trusted CAs, and the contexts made of them."""

    def __init__(self, settings: TlsSettings, site: str) -> None:
        self.settings = settings
        self.site = site
        self.refusals: Counter[tuple[str, str]] = Counter()  # (side, reason) -> count
        self.reloads = 0
        self._server: ssl.SSLContext
        self._client: ssl.SSLContext
        self._stamp: tuple[float, ...] = ()
        self.certificates: dict[str, CertInfo] = {}
        self.tokens = Tokens()
        self._load()

    # -- files -------------------------------------------------------------------------------

    def _where(self, key: str) -> str:
        return f"tls.{key} in {self.settings.source}"

    def _paths(self) -> list[Path]:
        s = self.settings
        tokens = [] if s.tokens is None else [s.tokens]
        return [*s.ca, s.cert_path(self.site), s.key_path(self.site), *tokens]

    def _mtimes(self) -> tuple[float, ...]:
        stamps: list[float] = []
        for path in self._paths():
            try:
                stat = path.stat()
                stamps += [stat.st_mtime, float(stat.st_size), float(stat.st_ino)]
            except OSError:
                stamps += [-1.0, -1.0, -1.0]
        return tuple(stamps)

    # cryptography (multiactive.security.certs) is imported by the methods that read
    # certificates, not by the module: a site without [tls] never needs it.

    def _load(self) -> None:
        from multiactive.security.certs import info

        stamp = self._mtimes()
        cas, ca_pem = self._load_cas()
        cert_path, key_path = self.settings.cert_path(self.site), self.settings.key_path(self.site)
        cert_pem = read_file(cert_path, self._where("cert"))
        key_pem = read_file(key_path, self._where("key"))
        cert = self._check_cert(cert_pem, cert_path)
        self._check_key(key_pem, key_path, cert)
        try:
            server = _context(ssl.PROTOCOL_TLS_SERVER, ca_pem, cert_path, key_path)
            server.verify_mode = ssl.CERT_OPTIONAL  # links demand one after the handshake
            client = _context(ssl.PROTOCOL_TLS_CLIENT, ca_pem, cert_path, key_path)
        except ssl.SSLError as exc:
            raise ConfigError(
                f"{self._where('cert')} and tls.key: OpenSSL refuses {cert_path} with "
                f"{key_path}: {exc}"
            ) from exc
        tokens = self._load_tokens()
        self._server, self._client, self._stamp, self.tokens = server, client, stamp, tokens
        self.certificates = {"site": info(cert), **{f"ca{i}": info(c) for i, c in enumerate(cas)}}

    def _load_tokens(self) -> Tokens:
        path = self.settings.tokens
        if path is None:
            if self.settings.clients == "token":
                raise ConfigError(f'{self._where("tokens")}: is required with clients = "token"')
            return Tokens()
        return load_tokens(path, self._where("tokens"))

    def _load_cas(self) -> tuple[list[x509.Certificate], str]:
        from cryptography.hazmat.primitives import serialization

        from multiactive.security.certs import load_certificates

        cas: list[x509.Certificate] = []
        for path in self.settings.ca:
            try:
                found = load_certificates(read_file(path, self._where("ca")))
            except ConfigError as exc:
                raise ConfigError(f"{self._where('ca')}: {path}: {exc}") from None
            if not found:
                raise ConfigError(f"{self._where('ca')}: {path} holds no certificate")
            cas += found
        pem = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in cas)
        return cas, pem

    def _check_cert(self, pem: bytes, path: Path) -> x509.Certificate:
        from multiactive.security.certs import load_certificates, sans_of

        try:
            cert = load_certificates(pem)[0]
        except (ConfigError, IndexError):
            raise ConfigError(f"{self._where('cert')}: {path} is not a PEM certificate") from None
        names = sans_of(cert)
        if self.site not in names:
            raise ConfigError(
                f"{self._where('cert')}: {path} is for {', '.join(names) or 'no site name'}, "
                f"not for site {self.site!r} (issue one: multiactive certs issue {self.site})"
            )
        return cert

    def _check_key(self, pem: bytes, path: Path, cert: x509.Certificate) -> None:
        from cryptography.hazmat.primitives import serialization

        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                f"{self._where('key')}: {path} is not an unencrypted PEM private key ({exc})"
            ) from None
        if key.public_key() != cert.public_key():
            raise ConfigError(
                f"{self._where('key')}: {path} does not belong to the certificate in tls.cert"
            )

    # -- use ---------------------------------------------------------------------------------

    def server_context(self) -> ssl.SSLContext:
        return self._server

    def client_context(self) -> ssl.SSLContext:
        return self._client

    def changed(self) -> bool:
        """Whether a file changed since the contexts were made (poll it)."""
        return self._mtimes() != self._stamp

    def reload(self, trigger: str = "call") -> bool:
        """New contexts from the files; False (and the old ones kept) when they do not load."""
        try:
            self._load()
        except (ConfigError, ssl.SSLError, OSError) as exc:
            self._stamp = self._mtimes()  # do not retry until the files change again
            log.error("tls_reload_failed", site=self.site, trigger=trigger, reason=exc)
            return False
        self.reloads += 1
        site = self.certificates["site"]
        log.info("tls_reloaded", site=self.site, trigger=trigger, expires=site.not_after,
                 sans=",".join(site.sans), fingerprint=site.fingerprint[:16])  # fmt: skip
        return True

    async def watch(self, clock: Clock, interval_s: float = WATCH_INTERVAL_S) -> None:
        """Reload whenever a file changes (forever; cancel to stop)."""
        while True:
            await clock.sleep(interval_s)
            if self.changed():
                self.reload("file")

    def refused(self, side: str, reason: str, peer: str, detail: object) -> None:
        """Count and log a refused connection (`side`: listener or dialer)."""
        self.refusals[(side, reason)] += 1
        log.warning("tls_refused", site=self.site, side=side, peer=peer, reason=reason,
                    detail=detail)  # fmt: skip

    def warnings(self, now: dt.datetime | None = None) -> list[str]:
        """One line per certificate that expires within `EXPIRY_WARNING_S` (the dashboard's)."""
        found = []
        for name, seconds in sorted(self.expiries(now).items()):
            if seconds < EXPIRY_WARNING_S:
                cert = self.certificates[name]
                when = "expired" if seconds < 0 else f"expires in {seconds / 86400:.1f} days"
                found.append(f"{self.site}: certificate {name} ({cert.subject}) {when}")
        return found

    def expiries(self, now: dt.datetime | None = None) -> dict[str, float]:
        """Seconds until each loaded certificate expires (negative once expired)."""
        now = now or dt.datetime.now(dt.UTC)
        return {
            name: (dt.datetime.fromisoformat(c.not_after) - now).total_seconds()
            for name, c in self.certificates.items()
        }


def _context(purpose: ssl._SSLMethod, ca_pem: str, cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(cadata=ca_pem)
    context.load_cert_chain(cert, key)
    return context


def client_context(
    ca: Iterable[Path], cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A context for a publisher or a tool: trust these CAs; show `cert` when given."""
    pem = "".join(read_file(Path(p), "the CA file").decode() for p in ca)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(cadata=pem)
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context
