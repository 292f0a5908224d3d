"""The topology file: one TOML shared by all sites, parsed into frozen dataclasses.

    [cluster]
    name = "weibo"
    partitions = 8               # fixed for the life of the cluster
    default_link_mode = "push"   # push | pull, for site pairs without a [[links]] entry

    [limits]                     # every key optional; defaults below
    max_payload_bytes = 10240

    [replication]                # every key optional; defaults below
    window_bytes = 67108864      # cap of what one link keeps in flight; adapts below it
    stall_after_s = 5.0          # a link owing messages with no progress this long: stalled

    [[sites]]
    name = "bj-unicom"
    listen = "127.0.0.1:7101"    # wire protocol: clients, links
    admin = "127.0.0.1:8101"     # HTTP admin API
    data_dir = "data/bj-unicom"  # relative to the topology file
    journal = "sqlite"           # sqlite | memory | redis
    state = "sqlite"             # sqlite | memory | redis
    redis_url = "redis://127.0.0.1:6379/0"   # required when journal or state is "redis"

    [audit]                      # optional per-stage records of every write (see audit/)
    store = "sqlite"             # none (default) | sqlite (per site) | postgresql (shared)
    dsn = ""                     # postgresql://user@host:port/db for store = "postgresql"

    [tls]                        # optional: mutual TLS on every link (model/tls.py)
    ca = "certs/ca.crt"
    cert = "certs/{site}.crt"
    [routing]                    # optional: see multiactive.routing.config and docs/routing.md

    [reads]                      # optional: cache-aside reloads (multiactive.reads)
    reload_after_s = 600.0       # a fill from a lagging replica is reloaded by then at the latest

    [[links]]                    # optional: override mode or address of one direction
    from = "bj-unicom"           # the origin whose messages travel on this link
    to = "gz"                    # the receiver
    mode = "pull"
    address = "127.0.0.1:9001"   # dial this instead of the listening site's `listen`

`redis_url` names the site's own Redis: `redis://host:port/db` (or `rediss://` for TLS) for a
single server, `redis+cluster://host:port` (or `rediss+cluster://`) for a Redis Cluster reached
through any of its nodes (a cluster has only database 0). The journal and the state of a site may
share one Redis; two sites may not (the first to open it claims it). Durability: see
`multiactive.journal.redis` (J3 needs `appendonly yes` and `appendfsync always`).

Every ordered pair of sites has exactly one link (L1: a site's own messages only travel on its
own links, so a full mesh is needed for every site to see every write). Errors name the field,
e.g. `sites[2].listen: expected "host:port", got "7101"`.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from multiactive.errors import ConfigError, UnknownSiteError
from multiactive.model.tls import TlsSettings, parse_tls

LinkMode = Literal["push", "pull"]
LINK_MODES: tuple[LinkMode, ...] = ("push", "pull")
JOURNAL_BACKENDS = ("sqlite", "memory", "redis")
STATE_BACKENDS = ("sqlite", "memory", "redis")
REDIS_SCHEMES = ("redis", "rediss", "redis+cluster", "rediss+cluster")
# Sections that a higher layer parses (`multiactive.db.config` reads [database]); the topology
# keeps them as raw tables so that this model imports nothing above it.
EXTENSION_SECTIONS = ("database",)
SITE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")

DEFAULT_PARTITIONS = 8
DEFAULT_MAX_PAYLOAD_BYTES = 10 * 1024
DEFAULT_MAX_BATCH_BYTES = 1024 * 1024
DEFAULT_MAX_FRAME_BYTES = 4 * 1024 * 1024
# An idle flusher appends at once: group commit already batches what arrives while an append
# runs, and a timer would add its own delay to every write of a lightly loaded site
# (1.2 ms of a 1.8 ms acknowledgement here; docs/benchmarks.md).
DEFAULT_LINGER_MS = 0.0
DEFAULT_MAX_PENDING_MESSAGES = 100_000
DEFAULT_ZSET_CAP = 1000
DEFAULT_WINDOW_BYTES = 64 * 1024 * 1024  # the cap; the window adapts below it
# A round trip under load is the path's plus the receiver's store time: it appends and
# acknowledges ~4 MiB at a time, with an fdatasync, so over a 40 ms path the ACKs of a
# catch-up came back after 80-115 ms. 32 MiB is twice the bandwidth-delay product of a
# 200 MB/s path at 80 ms: a session starts at full speed. (16 MiB left a 40 ms catch-up
# window-limited while the window grew: 11-31 % slower, docs/benchmarks.md.) The window grows
# above this (up to window_bytes) on fatter or longer paths.
DEFAULT_WINDOW_FLOOR_BYTES = 32 * 1024 * 1024
DEFAULT_STALL_AFTER_S = 5.0
DEFAULT_READ_BYTES = 1024 * 1024
DEFAULT_HEARTBEAT_INTERVAL_S = 1.0
DEFAULT_PEER_TIMEOUT_S = 10.0
DEFAULT_RECONNECT_MIN_S = 0.1
DEFAULT_RECONNECT_MAX_S = 2.0
DEFAULT_APPLY_MAX_ATTEMPTS = 5
DEFAULT_APPLY_RETRY_BACKOFF_MS = 100.0
DEFAULT_HANDLER_TIMEOUT_S = 30.0  # a user handler running longer fails that attempt
DEFAULT_RETENTION_S = 24 * 3600.0
DEFAULT_RECONCILE_INTERVAL_S = 60.0  # the seed's figure: a reconciliation job every minute
DEFAULT_REDRIVE_MAX_ATTEMPTS = 10
DEFAULT_CANARY_INTERVAL_S = 5.0
DEFAULT_RELOAD_AFTER_S = 600.0  # the seed's ten minutes, now only the upper bound of a reload
DEFAULT_MAX_PENDING_RELOADS = 100_000
DEFAULT_RELOAD_POLL_S = 0.2
DEFAULT_DB_PROBE_INTERVAL_S = 2.0
DEFAULT_LOAD_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Limits:
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    linger_ms: float = DEFAULT_LINGER_MS
    max_pending_messages: int = DEFAULT_MAX_PENDING_MESSAGES
    zset_cap: int = DEFAULT_ZSET_CAP  # a set shows its newest zset_cap present members


@dataclass(frozen=True, slots=True)
class ReplicationSettings:
    window_bytes: int = DEFAULT_WINDOW_BYTES
    read_bytes: int = DEFAULT_READ_BYTES
    heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S
    peer_timeout_s: float = DEFAULT_PEER_TIMEOUT_S
    stall_after_s: float = DEFAULT_STALL_AFTER_S
    reconnect_min_s: float = DEFAULT_RECONNECT_MIN_S
    reconnect_max_s: float = DEFAULT_RECONNECT_MAX_S
    apply_max_attempts: int = DEFAULT_APPLY_MAX_ATTEMPTS
    apply_retry_backoff_ms: float = DEFAULT_APPLY_RETRY_BACKOFF_MS
    handler_timeout_s: float = DEFAULT_HANDLER_TIMEOUT_S
    retention_s: float = DEFAULT_RETENTION_S
    reconcile_interval_s: float = DEFAULT_RECONCILE_INTERVAL_S
    redrive_max_attempts: int = DEFAULT_REDRIVE_MAX_ATTEMPTS
    canary_interval_s: float = DEFAULT_CANARY_INTERVAL_S  # 0 turns canaries off
    compression: str = "none"
    fsync: bool = True
    # Apply in a child process of the site (sqlite and redis backends; memory ones apply
    # inline): relay, ingress and apply then stop sharing one interpreter.
    separate_processor: bool = True


@dataclass(frozen=True, slots=True)
class AuditSettings:
    store: str = "none"  # none | sqlite (a file per site) | postgresql (shared, needs dsn)
    dsn: str = ""  # postgresql://user@host:port/db, for store = "postgresql"


@dataclass(frozen=True, slots=True)
class SiteConfig:
    name: str
    listen: Address
    admin: Address | None
    data_dir: Path
    journal: str = "sqlite"
    state: str = "sqlite"
    redis_url: str | None = None  # required when journal or state is "redis"


@dataclass(frozen=True, slots=True)
class LinkConfig:
    origin: str
    receiver: str
    mode: LinkMode
    address: Address | None = None

    @property
    def name(self) -> str:
        return f"{self.origin}->{self.receiver}"


@dataclass(frozen=True, slots=True)
class ReadSettings:
    """[reads]: cache-aside fills and the reloads that repair stale ones (docs/reads.md)."""

    # A fill from a replica that may lag is reloaded once the replica passed the writer's
    # position at fill time, and at the latest this long after the fill.
    reload_after_s: float = DEFAULT_RELOAD_AFTER_S
    # Keys waiting for a reload; beyond this a new key is not queued (counted as dropped).
    max_pending_reloads: int = DEFAULT_MAX_PENDING_RELOADS
    reload_poll_s: float = DEFAULT_RELOAD_POLL_S  # how often the site asks where its replica is
    # How often the site checks that its database answers (degraded mode when it does not).
    db_probe_interval_s: float = DEFAULT_DB_PROBE_INTERVAL_S
    # A cache miss's load (or the probe) not answered in this time: the database is unavailable.
    load_timeout_s: float = DEFAULT_LOAD_TIMEOUT_S


@dataclass(frozen=True, slots=True)
class Topology:
    name: str
    partitions: int
    sites: tuple[SiteConfig, ...]
    links: tuple[LinkConfig, ...]
    limits: Limits = field(default_factory=Limits)
    replication: ReplicationSettings = field(default_factory=ReplicationSettings)
    source: str = "<topology>"
    audit: AuditSettings = field(default_factory=AuditSettings)
    extensions: Mapping[str, Any] = field(default_factory=dict)  # EXTENSION_SECTIONS, raw
    tls: TlsSettings | None = None  # [tls] (model/tls.py); None: plaintext
    # The raw [routing] table; multiactive.routing.config parses and checks it (a higher layer).
    routing: Mapping[str, Any] | None = field(default=None, compare=False)
    reads: ReadSettings = field(default_factory=ReadSettings)

    @property
    def site_names(self) -> tuple[str, ...]:
        return tuple(site.name for site in self.sites)

    def site(self, name: str) -> SiteConfig:
        for site in self.sites:
            if site.name == name:
                return site
        raise UnknownSiteError(
            f"unknown site {name!r}; {self.source} defines: {', '.join(self.site_names)}"
        )

    def link(self, origin: str, receiver: str) -> LinkConfig:
        for link in self.links:
            if link.origin == origin and link.receiver == receiver:
                return link
        raise UnknownSiteError(f"no link {origin}->{receiver} in {self.source}")

    def links_from(self, origin: str) -> tuple[LinkConfig, ...]:
        return tuple(link for link in self.links if link.origin == origin)

    def links_to(self, receiver: str) -> tuple[LinkConfig, ...]:
        return tuple(link for link in self.links if link.receiver == receiver)

    def dial_address(self, link: LinkConfig) -> Address:
        """Where the dialing end of a link connects: the receiver (push) or the origin (pull)."""
        if link.address is not None:
            return link.address
        listener = link.receiver if link.mode == "push" else link.origin
        return self.site(listener).listen


def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology file; relative data_dirs are taken from its folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read topology file {path}: {exc.strerror}") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse_topology(raw, source=str(path), base_dir=path.parent)


def parse_topology(
    raw: Mapping[str, Any], *, source: str = "<topology>", base_dir: Path | None = None
) -> Topology:
    reader = _Reader(source)
    sections = {
        "cluster", "limits", "replication", "sites", "links", "audit", "tls", "routing", "reads",
    }  # fmt: skip
    reader.known(raw, "", sections | set(EXTENSION_SECTIONS))
    cluster = reader.table(raw, "cluster")
    reader.known(cluster, "cluster", {"name", "partitions", "default_link_mode"})
    partitions = reader.integer(cluster, "cluster", "partitions", DEFAULT_PARTITIONS, 1, 4096)
    default_mode = reader.choice(cluster, "cluster", "default_link_mode", "push", LINK_MODES)
    limits = reader.settings(raw, "limits", Limits)
    replication = reader.settings(raw, "replication", ReplicationSettings)
    _check_settings(reader, limits, replication)
    sites = _parse_sites(reader, raw, base_dir or Path.cwd())
    links = _parse_links(reader, raw, sites, default_mode)
    name = reader.string(cluster, "cluster", "name", "multiactive")
    audit = reader.settings(raw, "audit", AuditSettings)
    if audit.store not in ("none", "sqlite", "postgresql"):
        raise reader.fail(
            "audit.store", f'expected "none", "sqlite" or "postgresql", got {audit.store!r}'
        )
    if audit.store == "postgresql" and not audit.dsn:
        raise reader.fail("audit.dsn", 'is required when audit.store = "postgresql"')
    extensions = {key: reader.table(raw, key) for key in EXTENSION_SECTIONS if key in raw}
    tls = parse_tls(raw, source, base_dir or Path.cwd())
    routing = reader.table(raw, "routing") if "routing" in raw else None
    reads = _check_reads(reader, reader.settings(raw, "reads", ReadSettings))
    return Topology(
        name, partitions, sites, links, limits, replication, source, audit, extensions, tls,
        routing, reads,
    )  # fmt: skip


def parse_address(text: object, where: str) -> Address:
    if not isinstance(text, str) or ":" not in text:
        raise ConfigError(f'{where}: expected "host:port", got {text!r}')
    host, _, port_text = text.rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f'{where}: expected "host:port" with a port 1..65535, got {text!r}')
    return Address(host.strip("[]"), int(port_text))


def _parse_sites(reader: _Reader, raw: Mapping[str, Any], base: Path) -> tuple[SiteConfig, ...]:
    entries = reader.array(raw, "sites")
    if not entries:
        raise ConfigError(f"{reader.source}: [[sites]] is empty; a topology needs at least one")
    sites: list[SiteConfig] = []
    for index, entry in enumerate(entries):
        where = f"sites[{index}]"
        reader.known(
            entry, where, {"name", "listen", "admin", "data_dir", "journal", "state", "redis_url"}
        )
        name = reader.string(entry, where, "name", None)
        if not SITE_NAME.match(name):
            raise ConfigError(
                f"{reader.source}: {where}.name: {name!r} is not a site name "
                "(lowercase letters, digits, '-' and '_', at most 63 characters)"
            )
        if name in (site.name for site in sites):
            raise ConfigError(f"{reader.source}: {where}.name: site {name!r} is defined twice")
        listen = parse_address(entry.get("listen"), f"{reader.source}: {where}.listen")
        admin = entry.get("admin")
        data_dir = Path(reader.string(entry, where, "data_dir", f"data/{name}"))
        journal = reader.choice(entry, where, "journal", "sqlite", JOURNAL_BACKENDS)
        state = reader.choice(entry, where, "state", "sqlite", STATE_BACKENDS)
        sites.append(
            SiteConfig(
                name=name,
                listen=listen,
                admin=None
                if admin is None
                else parse_address(admin, f"{reader.source}: {where}.admin"),
                data_dir=data_dir if data_dir.is_absolute() else base / data_dir,
                journal=journal,
                state=state,
                redis_url=_site_redis_url(reader, entry, where, "redis" in (journal, state)),
            )
        )
    return tuple(sites)


def _site_redis_url(
    reader: _Reader, entry: Mapping[str, Any], where: str, needed: bool
) -> str | None:
    if "redis_url" not in entry and not needed:
        return None
    if "redis_url" not in entry:
        raise reader.fail(
            f"{where}.redis_url",
            'is required when journal or state is "redis" (e.g. "redis://127.0.0.1:6379/0")',
        )
    return parse_redis_url(entry["redis_url"], f"{reader.source}: {where}.redis_url")


def parse_redis_url(text: object, where: str) -> str:
    """Check a Redis URL (see the module docstring for the forms); return it unchanged."""
    expected = 'expected "redis://host:port/db" or "redis+cluster://host:port" (rediss for TLS)'
    if not isinstance(text, str):
        raise ConfigError(f"{where}: {expected}, got {text!r}")
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in REDIS_SCHEMES or not parts.hostname or port is None:
        raise ConfigError(f"{where}: {expected}, got {text!r}")
    db = parts.path.strip("/") or "0"
    if not db.isdigit() or (parts.scheme.endswith("+cluster") and db != "0"):
        raise ConfigError(f"{where}: the database must be a number (0 for a cluster), got {text!r}")
    return text


def _parse_links(
    reader: _Reader, raw: Mapping[str, Any], sites: tuple[SiteConfig, ...], default: LinkMode
) -> tuple[LinkConfig, ...]:
    names = [site.name for site in sites]
    declared: dict[tuple[str, str], LinkConfig] = {}
    for index, entry in enumerate(reader.array(raw, "links")):
        where = f"links[{index}]"
        reader.known(entry, where, {"from", "to", "mode", "address"})
        origin = reader.string(entry, where, "from", None)
        receiver = reader.string(entry, where, "to", None)
        for key, value in (("from", origin), ("to", receiver)):
            if value not in names:
                raise UnknownSiteError(
                    f"{reader.source}: {where}.{key}: unknown site {value!r}; "
                    f"[[sites]] defines: {', '.join(names)}"
                )
        if origin == receiver:
            raise ConfigError(f"{reader.source}: {where}: a link joins two different sites")
        if (origin, receiver) in declared:
            raise ConfigError(f"{reader.source}: {where}: link {origin}->{receiver} is repeated")
        address = entry.get("address")
        declared[(origin, receiver)] = LinkConfig(
            origin,
            receiver,
            reader.choice(entry, where, "mode", default, LINK_MODES),
            None
            if address is None
            else parse_address(address, f"{reader.source}: {where}.address"),
        )
    return tuple(
        declared.get((origin, receiver), LinkConfig(origin, receiver, default))
        for origin in names
        for receiver in names
        if origin != receiver
    )


def _check_settings(reader: _Reader, limits: Limits, replication: ReplicationSettings) -> None:
    def need(ok: bool, where: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"{reader.source}: {where}: {message}")

    need(limits.max_payload_bytes > 0, "limits.max_payload_bytes", "must be > 0")
    need(
        limits.max_batch_bytes >= limits.max_payload_bytes + 1024,
        "limits.max_batch_bytes",
        "must exceed max_payload_bytes by at least 1 KiB (one message must fit in a batch)",
    )
    need(
        limits.max_frame_bytes >= limits.max_batch_bytes + 1024,
        "limits.max_frame_bytes",
        "must exceed max_batch_bytes by at least 1 KiB (one batch must fit in a frame)",
    )
    need(0 <= limits.linger_ms <= 1000, "limits.linger_ms", "must be within 0..1000")
    need(limits.max_pending_messages > 0, "limits.max_pending_messages", "must be > 0")
    need(limits.zset_cap > 0, "limits.zset_cap", "must be > 0")
    need(
        replication.window_bytes >= limits.max_frame_bytes,
        "replication.window_bytes",
        "must be at least limits.max_frame_bytes (it caps what one link keeps in flight)",
    )
    need(
        0 < replication.read_bytes <= limits.max_frame_bytes - 1024,
        "replication.read_bytes",
        "must be > 0 and fit in limits.max_frame_bytes",
    )
    need(replication.heartbeat_interval_s > 0, "replication.heartbeat_interval_s", "must be > 0")
    need(replication.stall_after_s > 0, "replication.stall_after_s", "must be > 0")
    need(
        replication.peer_timeout_s > 2 * replication.heartbeat_interval_s,
        "replication.peer_timeout_s",
        "must be more than twice heartbeat_interval_s",
    )
    need(
        0 < replication.reconnect_min_s <= replication.reconnect_max_s,
        "replication.reconnect_min_s",
        "must be > 0 and at most reconnect_max_s",
    )
    need(replication.apply_max_attempts >= 1, "replication.apply_max_attempts", "must be >= 1")
    need(replication.handler_timeout_s > 0, "replication.handler_timeout_s", "must be > 0")
    need(replication.retention_s >= 0, "replication.retention_s", "must be >= 0")
    need(replication.reconcile_interval_s > 0, "replication.reconcile_interval_s", "must be > 0")
    need(replication.redrive_max_attempts >= 0, "replication.redrive_max_attempts", "must be >= 0")
    need(replication.canary_interval_s >= 0, "replication.canary_interval_s", "must be >= 0")
    need(
        replication.compression in ("none", "zstd"),
        "replication.compression",
        f'expected "none" or "zstd", got {replication.compression!r}',
    )
    if replication.compression == "zstd":
        try:
            import zstandard  # noqa: F401
        except ImportError:
            need(False, "replication.compression", "zstd needs: pip install 'multiactive[zstd]'")


def _check_reads(reader: _Reader, reads: ReadSettings) -> ReadSettings:
    for name in ("reload_after_s", "reload_poll_s", "db_probe_interval_s", "load_timeout_s"):
        if not getattr(reads, name) > 0:
            raise reader.fail(f"reads.{name}", f"must be > 0, got {getattr(reads, name)}")
    if reads.max_pending_reloads < 1:
        raise reader.fail("reads.max_pending_reloads", "must be >= 1")
    return reads


class _Reader:
    """Typed access to raw TOML tables; every error names the source and the field."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {where}: {message}")

    def known(self, table: Mapping[str, Any], where: str, allowed: set[str]) -> None:
        for key in table:
            if key not in allowed:
                place = f"[{where}]" if where else "the top level"
                raise self.fail(
                    f"{where}.{key}" if where else key,
                    f"unknown setting in {place}; known: {', '.join(sorted(allowed))}",
                )

    def table(self, raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
        value = raw.get(key, {})
        if not isinstance(value, Mapping):
            raise self.fail(key, f"expected a table [{key}], got {type(value).__name__}")
        return value

    def array(self, raw: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
        value = raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
            raise self.fail(key, f"expected an array of tables [[{key}]]")
        return value

    def string(self, table: Mapping[str, Any], where: str, key: str, default: str | None) -> str:
        value = table.get(key, default)
        if value is None:
            raise self.fail(f"{where}.{key}", "is required")
        if not isinstance(value, str) or not value:
            raise self.fail(f"{where}.{key}", f"expected a non-empty string, got {value!r}")
        return value

    def choice(
        self, table: Mapping[str, Any], where: str, key: str, default: Any, allowed: tuple[str, ...]
    ) -> Any:
        value = table.get(key, default)
        if value not in allowed:
            expected = " or ".join(f'"{a}"' for a in allowed)
            raise self.fail(f"{where}.{key}", f"expected {expected}, got {value!r}")
        return value

    def integer(
        self, table: Mapping[str, Any], where: str, key: str, default: int, low: int, high: int
    ) -> int:
        value = table.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise self.fail(f"{where}.{key}", f"expected an integer {low}..{high}, got {value!r}")
        return value

    def settings(self, raw: Mapping[str, Any], key: str, kind: type[Any]) -> Any:
        """Fill a settings dataclass from a table, checking each value's type."""
        table = self.table(raw, key)
        declared = {f.name: f for f in fields(kind)}
        self.known(table, key, set(declared))
        values: dict[str, Any] = {}
        for name, value in table.items():
            default = declared[name].default
            expected = type(default)
            ok = isinstance(value, expected) and not (
                isinstance(value, bool) and expected is not bool
            )
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value, ok = float(value), True
            if not ok:
                raise self.fail(f"{key}.{name}", f"expected {expected.__name__}, got {value!r}")
            values[name] = value
        return kind(**values)
