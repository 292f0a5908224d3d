"""The topology's `[tls]` section: where the certificates are and who must authenticate.

    [tls]
    ca = "certs/ca.crt"            # the cluster CA; a list trusts several (CA rotation)
    cert = "certs/{site}.crt"      # this site's certificate; {site} is the site's name
    key = "certs/{site}.key"       # its private key
    clients = "tls"                # tls (server-authenticated) | cert | token
    tokens = "certs/tokens.toml"   # admin and per-application tokens (see below)
    admin_read = "open"            # open | token: the admin API's read-only endpoints

Relative paths are taken from the topology file's folder. When `[tls]` is present every link
is mutual TLS 1.3 and no plaintext connection is accepted or dialed. The admin API's mutating
endpoints then need an admin token (`Authorization: Bearer ...`); `/health` stays open. The
tokens file holds secrets, so it is not the topology:

    admin = ["a long random string"]     # tokens allowed to call mutating admin endpoints
    [clients]                            # clients = "token": one token per application
    billing = "another long random string"

This module only parses paths and choices (no I/O); `multiactive.security` loads the files
and names the setting when one is missing or wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from multiactive.errors import ConfigError

ClientAuth = Literal["tls", "cert", "token"]
CLIENT_AUTH: tuple[ClientAuth, ...] = ("tls", "cert", "token")
AdminRead = Literal["open", "token"]
ADMIN_READ: tuple[AdminRead, ...] = ("open", "token")
DEFAULT_CA = "certs/ca.crt"
DEFAULT_CERT = "certs/{site}.crt"
DEFAULT_KEY = "certs/{site}.key"
SITE_PLACEHOLDER = "{site}"
_KEYS = {"ca", "cert", "key", "clients", "tokens", "admin_read"}


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """Where a site finds its TLS material, and what clients and admin callers must show."""

    ca: tuple[Path, ...]
    cert: str  # a path with {site} in it, or one path
    key: str
    clients: ClientAuth = "tls"
    tokens: Path | None = None
    admin_read: AdminRead = "open"
    source: str = "<topology>"

    def cert_path(self, site: str) -> Path:
        return Path(self.cert.replace(SITE_PLACEHOLDER, site))

    def key_path(self, site: str) -> Path:
        return Path(self.key.replace(SITE_PLACEHOLDER, site))


def parse_tls(raw: Mapping[str, Any], source: str, base_dir: Path) -> TlsSettings | None:
    """The `[tls]` table of a topology, or None when there is none (plaintext)."""
    table = raw.get("tls")
    if table is None:
        return None
    if not isinstance(table, Mapping):
        raise ConfigError(f"{source}: tls: expected a table [tls], got {type(table).__name__}")
    for key in table:
        if key not in _KEYS:
            raise ConfigError(
                f"{source}: tls.{key}: unknown setting in [tls]; known: {', '.join(sorted(_KEYS))}"
            )
    ca = table.get("ca", DEFAULT_CA)
    cas = [ca] if isinstance(ca, str) else ca
    if not isinstance(cas, list) or not cas or not all(isinstance(c, str) and c for c in cas):
        raise ConfigError(f"{source}: tls.ca: expected a path or a list of paths, got {ca!r}")
    tokens = _string(table, "tokens", "", source)
    return TlsSettings(
        ca=tuple(_under(base_dir, c) for c in cas),
        cert=str(_under(base_dir, _string(table, "cert", DEFAULT_CERT, source))),
        key=str(_under(base_dir, _string(table, "key", DEFAULT_KEY, source))),
        clients=_choice(table, "clients", "tls", CLIENT_AUTH, source),
        tokens=_under(base_dir, tokens) if tokens else None,
        admin_read=_choice(table, "admin_read", "open", ADMIN_READ, source),
        source=source,
    )


def _under(base: Path, text: str) -> Path:
    path = Path(text)
    return path if path.is_absolute() else base / path


def _string(table: Mapping[str, Any], key: str, default: str, source: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or (key in table and not value):
        raise ConfigError(f"{source}: tls.{key}: expected a non-empty string, got {value!r}")
    return value


def _choice(
    table: Mapping[str, Any], key: str, default: str, allowed: tuple[str, ...], source: str
) -> Any:
    value = table.get(key, default)
    if value not in allowed:
        expected = " or ".join(f'"{a}"' for a in allowed)
        raise ConfigError(f"{source}: tls.{key}: expected {expected}, got {value!r}")
    return value
