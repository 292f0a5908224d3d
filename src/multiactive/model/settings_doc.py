"""The settings reference, `docs/settings.md`, generated from the topology's dataclasses.

    python -m multiactive.model.settings_doc > docs/settings.md

Every table of the topology file is one section: `[cluster]`, each settings dataclass that is
a field of `Topology` (`[limits]`, `[replication]`, `[audit]`, and any section added later),
`[[sites]]` (`SiteConfig`) and `[[links]]` (`LinkConfig`). A key's default is the dataclass
default; its description is the comment on (or just above) the field in the source, or else
the entry in `DESCRIPTIONS`. `tests/unit/model/test_settings_doc.py` fails when the file is
out of date or a key has no description, so the reference cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import textwrap
import typing
from typing import Any

from multiactive.model import topology as t

HEADER = """# Settings reference

Generated from the topology's dataclasses (`multiactive.model.topology`) by
`python -m multiactive.model.settings_doc > docs/settings.md`; a test keeps it in sync.
Every key is optional unless marked required. Units are in the names: `_s` seconds, `_ms`
milliseconds, `_bytes` bytes.
"""

CLUSTER_KEYS = (
    ("name", '"multiactive"', "the cluster's name; every site's file must say the same (HELLO)"),
    ("partitions", str(t.DEFAULT_PARTITIONS),
     "streams per origin (1..4096), fixed for the life of the cluster; every site must agree"),
    ("default_link_mode", '"push"', "push | pull, for site pairs without a [[links]] entry"),
)  # fmt: skip

NONE = type(None)
INTERNAL_FIELDS = {"source"}  # filled by the parser, not keys of the file
LINK_KEYS = {"origin": "from", "receiver": "to"}  # LinkConfig field -> TOML key

# Defaults the parser supplies where the dataclass has none (it always gets a value)
PARSER_DEFAULTS = {
    "sites.admin": "none (no admin API)",
    "sites.data_dir": "data/NAME",
    "links.mode": "[cluster] default_link_mode",
    "tls.ca": '"certs/ca.crt"',
    "tls.cert": '"certs/{site}.crt"',
    "tls.key": '"certs/{site}.key"',
}

DESCRIPTIONS = {
    "tls.ca": "the cluster CA certificate (a list trusts several, for a CA rotation); with "
    "[tls] every link is mutual TLS 1.3 (docs/security.md)",
    "tls.key": "this site's private key; {site} is replaced by the site's name",
    "tls.clients": "tls (server-authenticated) | cert (a client certificate of the CA) | token "
    "(an application token from the tokens file)",
    "tls.tokens": "the tokens file: admin tokens and per-application tokens (secrets, not in "
    "the topology)",
    "tls.admin_read": "open | token: whether the admin API's read-only endpoints need a token",
    "replication.window_bytes": "cap of what one link keeps in flight; the window adapts below it",
    "replication.stall_after_s": "a link owing messages with no progress this long is stalled",
    "limits.max_payload_bytes": "largest payload accepted at ingress (larger is refused)",
    "limits.max_batch_bytes": "largest record batch ingress journals in one append",
    "limits.max_frame_bytes": "largest wire frame a connection accepts",
    "limits.linger_ms": "how long an idle ingress waits to gather a group before journaling",
    "limits.max_pending_messages": "drafts queued at ingress before publishers wait",
    "replication.read_bytes": "how much a link reads from the journal per step",
    "replication.heartbeat_interval_s": "heartbeats both ways on every link",
    "replication.peer_timeout_s": "a link with no frame from the peer this long is closed",
    "replication.reconnect_min_s": "first delay before a link dials again (doubling)",
    "replication.reconnect_max_s": "longest delay between a link's dial attempts",
    "replication.apply_max_attempts": "attempts of a failing handler before it is parked",
    "replication.apply_retry_backoff_ms": "first delay between a handler's attempts (doubling)",
    "replication.handler_timeout_s": "a user handler's attempt running longer fails (retried, "
    "then parked); a handler may set its own timeout_s",
    "replication.retention_s": "how long the origin keeps batches every peer acknowledged",
    "replication.reconcile_interval_s": "how often the reconciler runs",
    "replication.redrive_max_attempts": "re-drives of a dead letter before giving up (reported)",
    "replication.compression": "none | zstd: codec of record batches (zstd needs the extra)",
    "replication.fsync": "fsync journal appends (turn off only for tests and benchmarks)",
    "sites.name": "the site's name: lowercase letters, digits, - and _ (required)",
    "sites.listen": "host:port of the wire protocol: clients and links (required)",
    "sites.admin": "host:port of the HTTP admin API, metrics and dashboard",
    "sites.data_dir": "the site's files; relative to the topology file (default data/NAME)",
    "sites.journal": "sqlite | memory | redis",
    "sites.state": "sqlite | memory | redis",
    "links.origin": "the site whose own messages travel on this link (required)",
    "links.receiver": "the site that receives them (required)",
    "links.mode": "push: the origin dials the receiver; pull: the receiver dials the origin",
    "links.address": "host:port the dialing end connects to instead of the listening site's "
    "listen (push: the receiver's side; pull: the origin's side), e.g. a WAN proxy",
}

# Sections a higher layer parses (kept raw by the topology): where their keys are described.
RAW_SECTIONS = (*t.EXTENSION_SECTIONS, "routing")
EXTENSIONS = {
    "routing": "Parsed by `multiactive.routing.config` (regions by CIDR, weights, units, "
    "access modes, health); its keys are in that module's docstring.",
    "database": "Parsed by `multiactive.db.config` (mode, writer, replication account, per-site "
    "`url` and `admin_url`); its keys and defaults are in that module's docstring.",
}

_FIELD = re.compile(r"^(\w+)\s*:")


def field_comments(kind: type[Any]) -> dict[str, str]:
    """Field name -> the comment on its line, or on the comment lines just above it."""
    comments: dict[str, str] = {}
    above: list[str] = []
    for line in textwrap.dedent(inspect.getsource(kind)).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# "))
            continue
        match = _FIELD.match(stripped)
        if match is None:
            above = []
            continue
        trailing = stripped.split("  # ", 1)[1] if "  # " in stripped else ""
        comments[match.group(1)] = " ".join([*above, trailing]).strip()
        above = []
    return comments


def sections() -> list[tuple[str, type[Any]]]:
    """(TOML table, dataclass) for every settings table of the topology."""
    found: list[tuple[str, type[Any]]] = []
    hints = typing.get_type_hints(t.Topology)
    for f in dataclasses.fields(t.Topology):
        kinds = [k for k in typing.get_args(hints[f.name]) or (hints[f.name],) if k is not NONE]
        kind = kinds[0] if len(kinds) == 1 else None  # X or X | None
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            found.append((f"[{f.name}]", kind))
    return [*found, ("[[sites]]", t.SiteConfig), ("[[links]]", t.LinkConfig)]


def rows(table: str, kind: type[Any]) -> list[tuple[str, str, str, str]]:
    """(key, type, default, description) of a table's keys."""
    prefix = table.strip("[]")
    comments = field_comments(kind)
    out = []
    for f in dataclasses.fields(kind):
        if f.name in INTERNAL_FIELDS:
            continue
        key = LINK_KEYS.get(f.name, f.name) if kind is t.LinkConfig else f.name
        name = f"{prefix}.{f.name}"
        described = comments.get(f.name) or DESCRIPTIONS.get(name, "")
        default = PARSER_DEFAULTS.get(name) or _default(f)
        out.append((key, str(f.type), default, _cell(described)))
    return out


def _default(f: dataclasses.Field[Any]) -> str:
    if f.default is dataclasses.MISSING:
        return "required" if f.default_factory is dataclasses.MISSING else ""
    value = f.default
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return "none" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


def _cell(text: str) -> str:
    """Text for a Markdown table cell: a `|` would end the cell."""
    return text.replace("|", "\\|")


def missing_descriptions() -> list[str]:
    """Keys no comment or DESCRIPTIONS entry explains (the test lists them)."""
    missing = [f"[{s}] (EXTENSIONS)" for s in RAW_SECTIONS if s not in EXTENSIONS]
    return missing + [
        f"{table} {key}"
        for table, kind in sections()
        for key, _, _, described in rows(table, kind)
        if not described
    ]


def render() -> str:
    parts = [HEADER, "## [cluster]\n", "| key | default | meaning |", "|---|---|---|"]
    parts += [f"| `{key}` | `{default}` | {_cell(text)} |" for key, default, text in CLUSTER_KEYS]
    for table, kind in sections():
        parts += ["", f"## {table}\n", "| key | type | default | meaning |", "|---|---|---|---|"]
        for key, type_, default, described in rows(table, kind):
            shown = f"`{default}`" if default else ""
            parts.append(f"| `{key}` | `{_cell(type_)}` | {shown} | {described} |")
    for section in RAW_SECTIONS:
        parts += ["", f"## [{section}]\n", EXTENSIONS.get(section, "")]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
