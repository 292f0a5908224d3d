"""The `[routing]` section of the topology, parsed into frozen dataclasses.

    [routing]
    key_from = ["header:X-User-Id", "cookie:uid", "query:uid"]  # where the routing key is
    no_key = "client-address"   # a request without a key: hash its client address | "reject"
    all_down = "open"           # every target down: "open" (send to the home site anyway)
                                # or "closed" (refuse with 503)
    default_region = "north"    # for addresses no region's CIDRs match (default: the first)
    site_header = "X-Served-By" # the response header naming the site that served a request
    trusted_proxies = ["127.0.0.1/32"]  # X-Forwarded-For is believed only from these

    [routing.health]            # the live router's active checks of every upstream
    interval_s = 2.0
    failures = 3                # consecutive failures before an upstream is down
    rise = 2                    # consecutive successes before it is up again
    path = "/health"
    timeout_s = 1.0

    [routing.upstreams]         # each site's application servers
    bj-unicom = ["127.0.0.1:9001", "127.0.0.1:9002"]

    [routing.routers]           # where `multiactive router run --site S` listens
    bj-unicom = "127.0.0.1:8001"

    [[routing.regions]]         # client subnet -> region -> site weights (percent, sum 100)
    name = "north"
    cidrs = ["10.1.0.0/16", "127.0.0.2/32"]
    weights = { bj-unicom = 70, bj-telecom = 30 }

    [[routing.units]]           # buckets of the routing key; together they cover 0..10000
    name = "u0"
    ranges = [[0, 5000]]        # [from, to) of bucket_of(key)
    mode = "read-write"         # read-write | read-only | none
    users = ["alice"]           # named users pinned to this unit whatever their hash

    [routing.dns]               # for `multiactive route export bind`
    zone = "svc.example."
    name = "www"
    ttl = 30
    addresses = { bj-unicom = "10.1.0.10" }

Without `[[routing.units]]` one unit, `all`, covers every bucket. Errors name the topology
file, the key path and, where it can be found, the line: overlapping CIDRs, unit ranges with
holes or overlaps, weights that do not sum to 100, an unknown site.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from multiactive.errors import ConfigError, UnknownSiteError
from multiactive.model.topology import Address, Topology, parse_address
from multiactive.routing.hashing import UNIT_SPACE

Mode = Literal["read-write", "read-only", "none"]
MODES: tuple[Mode, ...] = ("read-write", "read-only", "none")
SiteState = Literal["active", "draining", "down"]
SITE_STATES: tuple[SiteState, ...] = ("active", "draining", "down")
KEY_PLACES = ("header", "cookie", "query")
NO_KEY_POLICIES = ("client-address", "reject")
ALL_DOWN_POLICIES = ("open", "closed")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_KEY_FROM = ("header:X-User-Id", "cookie:uid", "query:uid")
DEFAULT_SITE_HEADER = "X-Served-By"
DEFAULT_HEALTH_INTERVAL_S = 2.0  # Route 53 checks every 30 s; an edge should notice in seconds
DEFAULT_HEALTH_FAILURES = 3
DEFAULT_HEALTH_RISE = 2
DEFAULT_HEALTH_TIMEOUT_S = 1.0
DEFAULT_DNS_TTL_S = 30
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
_HEADER = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True)
class KeySource:
    place: str  # header | cookie | query
    name: str

    def __str__(self) -> str:
        return f"{self.place}:{self.name}"


@dataclass(frozen=True, slots=True)
class Region:
    name: str
    networks: tuple[Network, ...]
    weights: tuple[tuple[str, int], ...]  # (site, percent), in the order written


@dataclass(frozen=True, slots=True)
class Unit:
    name: str
    ranges: tuple[tuple[int, int], ...]  # [from, to) buckets, sorted
    mode: Mode = "read-write"
    users: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return sum(end - start for start, end in self.ranges)


@dataclass(frozen=True, slots=True)
class HealthSettings:
    interval_s: float = DEFAULT_HEALTH_INTERVAL_S
    failures: int = DEFAULT_HEALTH_FAILURES
    rise: int = DEFAULT_HEALTH_RISE
    path: str = "/health"
    timeout_s: float = DEFAULT_HEALTH_TIMEOUT_S


@dataclass(frozen=True, slots=True)
class DnsSettings:
    zone: str
    name: str
    ttl: int
    addresses: tuple[tuple[str, str], ...]  # (site, IPv4 address)


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    sites: tuple[str, ...]
    regions: tuple[Region, ...]
    units: tuple[Unit, ...]
    key_from: tuple[KeySource, ...] = ()
    no_key: str = "client-address"
    all_down: str = "open"
    default_region: str = ""
    site_header: str = DEFAULT_SITE_HEADER
    trusted_proxies: tuple[Network, ...] = ()
    health: HealthSettings = field(default_factory=HealthSettings)
    upstreams: tuple[tuple[str, tuple[Address, ...]], ...] = ()
    routers: tuple[tuple[str, Address], ...] = ()
    dns: DnsSettings | None = None
    source: str = "<topology>"

    def unit(self, name: str) -> Unit:
        for unit in self.units:
            if unit.name == name:
                return unit
        known = ", ".join(u.name for u in self.units)
        raise ConfigError(f"unknown unit {name!r}; [[routing.units]] in {self.source}: {known}")

    def region(self, name: str) -> Region:
        for region in self.regions:
            if region.name == name:
                return region
        known = ", ".join(r.name for r in self.regions)
        raise ConfigError(f"unknown region {name!r}; [[routing.regions]] in {self.source}: {known}")

    def upstreams_of(self, site: str) -> tuple[Address, ...]:
        return dict(self.upstreams).get(site, ())

    def router_address(self, site: str) -> Address:
        address = dict(self.routers).get(site)
        if address is None:
            raise ConfigError(
                f"{self.source}: routing.routers.{site}: no address for the router of site "
                f"{site!r} (add it, or pass --listen)"
            )
        return address


def routing_config(topology: Topology) -> RoutingConfig:
    """The topology's `[routing]`, validated; ConfigError when it has none."""
    if topology.routing is None:
        raise ConfigError(f"{topology.source} has no [routing] section (see docs/routing.md)")
    return parse_routing(topology.routing, topology.site_names, topology.source)


def parse_routing(
    raw: Mapping[str, Any], sites: Sequence[str], source: str = "<topology>"
) -> RoutingConfig:
    parser = _Parser(raw, tuple(sites), source)
    return parser.parse()


class _Parser:
    KNOWN = {
        "key_from", "no_key", "all_down", "default_region", "site_header", "trusted_proxies",
        "health", "upstreams", "routers", "regions", "units", "dns",
    }  # fmt: skip

    def __init__(self, raw: Mapping[str, Any], sites: tuple[str, ...], source: str) -> None:
        self.raw = raw
        self.sites = sites
        self.source = source
        self.text = _read(source)

    def fail(self, where: str, message: str, kind: type[ConfigError] = ConfigError) -> ConfigError:
        line = _line_of(self.text, where)
        at = f" (line {line})" if line else ""
        return kind(f"{self.source}: routing.{where}{at}: {message}")

    def parse(self) -> RoutingConfig:
        self.known(self.raw, "", self.KNOWN)
        regions = self.regions()
        default_region = self.string(self.raw, "default_region", regions[0].name)
        if default_region not in (r.name for r in regions):
            raise self.fail("default_region", f"unknown region {default_region!r}")
        return RoutingConfig(
            sites=self.sites,
            regions=regions,
            units=self.units(),
            key_from=self.key_from(),
            no_key=self.choice(self.raw, "no_key", "client-address", NO_KEY_POLICIES),
            all_down=self.choice(self.raw, "all_down", "open", ALL_DOWN_POLICIES),
            default_region=default_region,
            site_header=self.header_name(),
            trusted_proxies=tuple(
                self.network(text, f"trusted_proxies[{i}]")
                for i, text in enumerate(self.strings(self.raw, "trusted_proxies"))
            ),
            health=self.health(),
            upstreams=self.upstreams(),
            routers=self.routers(),
            dns=self.dns(),
            source=self.source,
        )

    # -- small typed readers ------------------------------------------------------------

    def known(self, table: Mapping[str, Any], where: str, allowed: set[str]) -> None:
        for key in table:
            if key not in allowed:
                place = f"{where}.{key}" if where else key
                raise self.fail(place, f"unknown setting; known: {', '.join(sorted(allowed))}")

    def string(self, table: Mapping[str, Any], where: str, default: str | None) -> str:
        key = where.rpartition(".")[2].rpartition("]")[2] or where
        value = table.get(key, default)
        if value is None:
            raise self.fail(where, "is required")
        if not isinstance(value, str) or not value:
            raise self.fail(where, f"expected a non-empty string, got {value!r}")
        return value

    def choice(
        self, table: Mapping[str, Any], key: str, default: str, allowed: tuple[str, ...]
    ) -> Any:
        value = table.get(key, default)
        if value not in allowed:
            expected = " or ".join(f'"{a}"' for a in allowed)
            raise self.fail(key, f"expected {expected}, got {value!r}")
        return value

    def strings(self, table: Mapping[str, Any], key: str, where: str = "") -> list[str]:
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(where or key, f"expected a list of strings, got {value!r}")
        return value

    def table(self, raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
        value = raw.get(key, {})
        if not isinstance(value, Mapping):
            raise self.fail(key, f"expected a table, got {value!r}")
        return value

    def array(self, key: str) -> list[Mapping[str, Any]]:
        value = self.raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
            raise self.fail(key, f"expected an array of tables [[routing.{key}]]")
        return value

    def site(self, name: object, where: str) -> str:
        if name not in self.sites:
            raise self.fail(
                where, f"unknown site {name!r}; [[sites]] defines: {', '.join(self.sites)}",
                UnknownSiteError,
            )  # fmt: skip
        assert isinstance(name, str)
        return name

    def network(self, text: object, where: str) -> Network:
        try:
            return ipaddress.ip_network(str(text), strict=True)
        except ValueError as exc:
            raise self.fail(
                where, f"expected a CIDR like 10.1.0.0/16, got {text!r}: {exc}"
            ) from exc

    def number(self, table: Mapping[str, Any], key: str, default: float, where: str) -> float:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise self.fail(where, f"expected a number > 0, got {value!r}")
        return float(value)

    def count(self, table: Mapping[str, Any], key: str, default: int, where: str) -> int:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.fail(where, f"expected a whole number >= 1, got {value!r}")
        return value

    # -- sections ------------------------------------------------------------------------

    def key_from(self) -> tuple[KeySource, ...]:
        texts = self.raw.get("key_from", list(DEFAULT_KEY_FROM))
        if not isinstance(texts, list):
            raise self.fail("key_from", f"expected a list like {list(DEFAULT_KEY_FROM)}")
        found = []
        for index, text in enumerate(texts):
            place, _, name = str(text).partition(":")
            if place not in KEY_PLACES or not _HEADER.match(name):
                raise self.fail(
                    f"key_from[{index}]",
                    f'expected "header:NAME", "cookie:NAME" or "query:NAME", got {text!r}',
                )
            found.append(KeySource(place, name))
        return tuple(found)

    def header_name(self) -> str:
        name = self.string(self.raw, "site_header", DEFAULT_SITE_HEADER)
        if not _HEADER.match(name):
            raise self.fail("site_header", f"not an HTTP header name: {name!r}")
        return name

    def health(self) -> HealthSettings:
        table = self.table(self.raw, "health")
        self.known(table, "health", {"interval_s", "failures", "rise", "path", "timeout_s"})
        path = table.get("path", "/health")
        if not isinstance(path, str) or not path.startswith("/"):
            raise self.fail("health.path", f'expected a path starting with "/", got {path!r}')
        settings = HealthSettings(
            interval_s=self.number(table, "interval_s", DEFAULT_HEALTH_INTERVAL_S,
                                   "health.interval_s"),
            failures=self.count(table, "failures", DEFAULT_HEALTH_FAILURES, "health.failures"),
            rise=self.count(table, "rise", DEFAULT_HEALTH_RISE, "health.rise"),
            path=path,
            timeout_s=self.number(table, "timeout_s", DEFAULT_HEALTH_TIMEOUT_S,
                                  "health.timeout_s"),
        )  # fmt: skip
        if settings.timeout_s > settings.interval_s:
            raise self.fail("health.timeout_s", "must be at most health.interval_s")
        return settings

    def upstreams(self) -> tuple[tuple[str, tuple[Address, ...]], ...]:
        table = self.table(self.raw, "upstreams")
        found = []
        for site, _addresses in table.items():
            where = f"upstreams.{site}"
            self.site(site, where)
            texts = self.strings(table, site, where)
            if not texts:
                raise self.fail(where, "expected at least one upstream address")
            parsed = tuple(
                parse_address(t, f"{self.source}: routing.{where}[{i}]")
                for i, t in enumerate(texts)
            )
            found.append((site, parsed))
        return tuple(found)

    def routers(self) -> tuple[tuple[str, Address], ...]:
        table = self.table(self.raw, "routers")
        return tuple(
            (
                self.site(site, f"routers.{site}"),
                parse_address(text, f"{self.source}: routing.routers.{site}"),
            )
            for site, text in table.items()
        )

    def regions(self) -> tuple[Region, ...]:
        entries = self.array("regions")
        if not entries:
            raise self.fail("regions", "needs at least one [[routing.regions]]")
        regions: list[Region] = []
        seen: list[tuple[Network, str]] = []
        for index, entry in enumerate(entries):
            where = f"regions[{index}]"
            self.known(entry, where, {"name", "cidrs", "weights"})
            name = self.string(entry, f"{where}.name", None)
            if not _NAME.match(name) or name in (r.name for r in regions):
                raise self.fail(f"{where}.name", f"{name!r} is not a new region name")
            networks = []
            for i, text in enumerate(self.strings(entry, "cidrs", f"{where}.cidrs")):
                network = self.network(text, f"{where}.cidrs[{i}]")
                for other, owner in seen:
                    if network.version == other.version and network.overlaps(other):
                        raise self.fail(
                            f"{where}.cidrs[{i}]",
                            f"{network} overlaps {other} of region {owner!r}; "
                            "a client address must match one region",
                        )
                seen.append((network, name))
                networks.append(network)
            regions.append(Region(name, tuple(networks), self.weights(entry, where)))
        return tuple(regions)

    def weights(self, entry: Mapping[str, Any], where: str) -> tuple[tuple[str, int], ...]:
        table = entry.get("weights")
        if not isinstance(table, Mapping) or not table:
            raise self.fail(f"{where}.weights", "is required, e.g. { site-a = 70, site-b = 30 }")
        weights = []
        for site, weight in table.items():
            self.site(site, f"{where}.weights.{site}")
            if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
                raise self.fail(
                    f"{where}.weights.{site}", f"expected a percent 0..100, got {weight!r}"
                )
            weights.append((site, weight))
        total = sum(w for _, w in weights)
        if total != 100:
            raise self.fail(f"{where}.weights", f"the weights sum to {total}, not 100 (percent)")
        return tuple(weights)

    def units(self) -> tuple[Unit, ...]:
        entries = self.array("units")
        if not entries:
            return (Unit("all", ((0, UNIT_SPACE),)),)
        units: list[Unit] = []
        pinned: dict[str, str] = {}
        for index, entry in enumerate(entries):
            where = f"units[{index}]"
            self.known(entry, where, {"name", "ranges", "mode", "users"})
            name = self.string(entry, f"{where}.name", None)
            if not _NAME.match(name) or name in (u.name for u in units):
                raise self.fail(f"{where}.name", f"{name!r} is not a new unit name")
            users = self.strings(entry, "users", f"{where}.users")
            for user in users:
                if user in pinned:
                    raise self.fail(
                        f"{where}.users",
                        f"user {user!r} is already pinned to unit {pinned[user]!r}",
                    )
                pinned[user] = name
            mode = entry.get("mode", "read-write")
            if mode not in MODES:
                raise self.fail(
                    f"{where}.mode", f"expected one of {', '.join(MODES)}, got {mode!r}"
                )
            units.append(Unit(name, self.ranges(entry, where), mode, tuple(users)))
        self.check_cover(units)
        return tuple(units)

    def ranges(self, entry: Mapping[str, Any], where: str) -> tuple[tuple[int, int], ...]:
        value = entry.get("ranges")
        found = []
        if not isinstance(value, list) or not value:
            raise self.fail(f"{where}.ranges", "is required, e.g. [[0, 5000]]")
        for i, pair in enumerate(value):
            ok = (
                isinstance(pair, list) and len(pair) == 2
                and all(isinstance(x, int) and not isinstance(x, bool) for x in pair)
                and 0 <= pair[0] < pair[1] <= UNIT_SPACE
            )  # fmt: skip
            if not ok:
                raise self.fail(
                    f"{where}.ranges[{i}]",
                    f"expected [from, to) with 0 <= from < to <= {UNIT_SPACE}, got {pair!r}",
                )
            found.append((pair[0], pair[1]))
        return tuple(sorted(found))

    def check_cover(self, units: Sequence[Unit]) -> None:
        """The units' ranges cover 0..UNIT_SPACE exactly once: no hole, no overlap."""
        spans = sorted(
            (start, end, unit.name, index)
            for index, unit in enumerate(units)
            for start, end in unit.ranges
        )
        at = 0
        previous = ""
        for start, end, name, index in spans:
            if start < at:
                raise self.fail(
                    f"units[{index}].ranges",
                    f"[{start}, {end}) of unit {name!r} overlaps unit {previous!r} (below {at})",
                )
            if start > at:
                raise self.fail(
                    f"units[{index}].ranges",
                    f"buckets [{at}, {start}) belong to no unit (a hole before {name!r}); "
                    f"the units must cover 0..{UNIT_SPACE}",
                )
            at, previous = end, name
        if at != UNIT_SPACE:
            raise self.fail(
                "units", f"buckets [{at}, {UNIT_SPACE}) belong to no unit (a hole at the end)"
            )

    def dns(self) -> DnsSettings | None:
        if "dns" not in self.raw:
            return None
        table = self.table(self.raw, "dns")
        self.known(table, "dns", {"zone", "name", "ttl", "addresses"})
        zone = self.string(table, "dns.zone", None)
        if not zone.endswith("."):
            raise self.fail(
                "dns.zone", f'expected a fully qualified name ending in ".", got {zone!r}'
            )
        addresses = self.table(table, "addresses")
        pairs = []
        for site, text in addresses.items():
            self.site(site, f"dns.addresses.{site}")
            try:
                ipaddress.IPv4Address(text)
            except ValueError as exc:
                raise self.fail(
                    f"dns.addresses.{site}", f"expected an IPv4 address: {exc}"
                ) from exc
            pairs.append((site, str(text)))
        return DnsSettings(
            zone=zone,
            name=self.string(table, "dns.name", "www"),
            ttl=self.count(table, "ttl", DEFAULT_DNS_TTL_S, "dns.ttl"),
            addresses=tuple(pairs),
        )


def _read(source: str) -> str:
    try:
        return Path(source).read_text(encoding="utf-8")
    except (OSError, ValueError):
        return ""


_PATH_PART = re.compile(r"([A-Za-z0-9_-]+)(?:\[(\d+)\])?")


def _line_of(text: str, where: str) -> int | None:
    """The line of `routing.WHERE` in the topology text, found by headers and keys (best
    effort: None when the file is not at hand or the key is written in an unusual form)."""
    if not text:
        return None
    lines = text.splitlines()
    parts = [m.groups() for m in _PATH_PART.finditer(where)]
    if not parts:
        return None
    first, index = parts[0]
    header = re.compile(rf"^\s*\[\[\s*routing\.{re.escape(first)}\s*\]\]")
    table = re.compile(rf"^\s*\[\s*routing(\.{re.escape(first)})?\s*\]")
    start = None
    if index is not None:
        hits = [n for n, line in enumerate(lines) if header.match(line)]
        if int(index) < len(hits):
            start = hits[int(index)]
        rest = parts[1:]
    else:
        hits = [n for n, line in enumerate(lines) if table.match(line)]
        start = hits[-1] if hits else None
        rest = (
            parts
            if hits and not lines[hits[-1]].strip().startswith(f"[routing.{first}")
            else parts[1:]
        )
    if start is None:
        return None
    key = rest[-1][0] if rest else None
    if key is None:
        return start + 1
    pattern = re.compile(rf"^\s*\"?{re.escape(key)}\"?\s*=|[{{,]\s*\"?{re.escape(key)}\"?\s*=")
    for n in range(start + 1, len(lines)):
        if lines[n].lstrip().startswith("["):
            break
        if pattern.search(lines[n]):
            return n + 1
    return start + 1
