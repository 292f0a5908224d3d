"""Tokens: who may call the admin API's mutating endpoints, and which applications may publish.

The file that `[tls] tokens` names (TOML, readable by the site's user only):

    admin = ["a long random string"]      # one or more (two while rotating)
    [clients]                             # for clients = "token": application -> token
    billing = "another long random string"

Tokens are compared in constant time and never logged; an application is logged by its name.
"""

from __future__ import annotations

import hmac
import os
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multiactive.errors import ConfigError
from multiactive.security.files import read_file

MIN_TOKEN_CHARS = 16
ADMIN_TOKEN_ENV = "MULTIACTIVE_ADMIN_TOKEN"  # what the CLI sends as the admin token


@dataclass(frozen=True, slots=True)
class Tokens:
    admin: tuple[str, ...] = ()
    clients: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # never the secrets
        return f"Tokens(admin={len(self.admin)}, clients={sorted(self.clients)})"

    def admin_ok(self, presented: str) -> bool:
        return any(_same(presented, token) for token in self.admin)

    def application(self, presented: str) -> str | None:
        """The application whose token this is, or None."""
        for name, token in self.clients.items():
            if _same(presented, token):
                return name
        return None


def _same(presented: str, token: str) -> bool:
    return hmac.compare_digest(presented.encode(), token.encode())


def admin_headers() -> dict[str, str]:
    """The admin token from the environment (`MULTIACTIVE_ADMIN_TOKEN`) as a request header."""
    token = os.environ.get(ADMIN_TOKEN_ENV, "")
    return {"Authorization": f"Bearer {token}"} if token else {}


def new_token() -> str:
    return secrets.token_urlsafe(32)


def load_tokens(path: Path, setting: str) -> Tokens:
    """Read a tokens file; errors name `setting` and the file, never a token."""
    try:
        raw = tomllib.loads(read_file(path, setting).decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{setting}: {path} is not valid TOML: {exc}") from None
    unknown = set(raw) - {"admin", "clients"}
    if unknown:
        raise ConfigError(
            f"{setting}: {path}: unknown keys {sorted(unknown)}; known: admin, clients"
        )
    admin = raw.get("admin", [])
    admin = [admin] if isinstance(admin, str) else admin
    if not isinstance(admin, list) or not all(_good(t) for t in admin):
        raise ConfigError(
            f"{setting}: {path}: admin must be tokens of {MIN_TOKEN_CHARS}+ characters"
        )
    clients: Any = raw.get("clients", {})
    if not isinstance(clients, dict) or not all(_good(t) for t in clients.values()):
        raise ConfigError(
            f"{setting}: {path}: [clients] must map application names to tokens of "
            f"{MIN_TOKEN_CHARS}+ characters"
        )
    return Tokens(tuple(admin), dict(clients))


def _good(token: object) -> bool:
    return isinstance(token, str) and len(token) >= MIN_TOKEN_CHARS
