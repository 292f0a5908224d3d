"""Reading the files that settings name, each error naming the setting (no cryptography here:
a site without [tls] imports this and not `certs`)."""

from __future__ import annotations

from pathlib import Path

from multiactive.errors import ConfigError


def read_file(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{setting}: {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from exc
