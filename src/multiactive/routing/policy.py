"""The routing policy, pure: which site serves a request, and how a change moves users.

A policy is the topology's `RoutingConfig` (regions, units, key sources: fixed for the life of
the file) plus a `PolicyState` that operators change at run time and that every site holds
(replicated as `ma.route.policy` messages, `routing.messages`):

- per region, an **assignment** of the bucket space `[0, UNIT_SPACE)` to sites, as spans
  `[from, to) -> site`; at revision 0 each region's weights laid out in order (70/30 gives
  `[0, 7000) -> a`, `[7000, 10000) -> b`);
- per site a state: active, draining (an operator took its users away) or down;
- per unit an access mode: read-write, read-only (reads only: the first step of moving a unit)
  or none (refused).

A request is routed by its client address (-> region, by CIDR) and its routing key
(-> bucket by `hashing.bucket_of`; a named user of a unit's allow-list -> that unit's first
bucket). Its **home** is the site its region's assignment gives that bucket. When the home is
draining or down (or failing its health checks), the request goes to a stand-in chosen by
rendezvous hashing of the bucket over the region's other available sites, so every evacuated
user has one stand-in, stays there while the home is out, and comes back when it returns;
no one else moves. When no site is available, `all_down` decides: open sends the request to
its home anyway, closed refuses it.

`shift` moves `percent` % of a region's buckets from one site to another, taking the highest
buckets the source serves; only those users change site.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, replace
from typing import Any

from multiactive.errors import ConfigError, UnknownSiteError
from multiactive.routing.config import MODES, SITE_STATES, Mode, RoutingConfig, SiteState, Unit
from multiactive.routing.hashing import UNIT_SPACE, bucket_of, murmur2

Span = tuple[int, int, str]  # [from, to) -> site
REGION_CACHE_ENTRIES = 65_536  # client addresses whose region a Policy remembers


@dataclass(frozen=True, slots=True)
class PolicyState:
    """What operators change at run time; JSON in `ma.route.policy` messages."""

    revision: int
    assignments: Mapping[str, tuple[Span, ...]]  # region -> spans covering the bucket space
    site_states: Mapping[str, SiteState]
    unit_modes: Mapping[str, Mode]

    def to_json(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "assignments": {r: [list(s) for s in spans] for r, spans in self.assignments.items()},
            "site_states": dict(self.site_states),
            "unit_modes": dict(self.unit_modes),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> PolicyState:
        return cls(
            revision=int(raw["revision"]),
            assignments={
                region: tuple((int(a), int(b), str(site)) for a, b, site in spans)
                for region, spans in raw["assignments"].items()
            },
            site_states=dict(raw["site_states"]),
            unit_modes=dict(raw["unit_modes"]),
        )

    def share(self, region: str, site: str) -> int:
        """Buckets of `region` assigned to `site`."""
        return sum(b - a for a, b, s in self.assignments[region] if s == site)


def state_problem(config: RoutingConfig, state: PolicyState) -> str | None:
    """Why a state does not fit a config (another topology's regions, sites or units), or
    None. Held and received states are checked before anyone routes by them."""
    regions = {r.name for r in config.regions}
    if set(state.assignments) != regions:
        return f"regions {sorted(state.assignments)} are not the topology's {sorted(regions)}"
    for region, spans in state.assignments.items():
        at = 0
        for start, end, site in spans:
            if start != at or end <= start or site not in config.sites:
                return f"region {region}: span [{start}, {end}) -> {site!r} does not fit"
            at = end
        if at != UNIT_SPACE:
            return f"region {region}: the spans end at {at}, not {UNIT_SPACE}"
    for site, site_state in state.site_states.items():
        if site not in config.sites or site_state not in SITE_STATES:
            return f"site state {site!r}: {site_state!r} does not fit"
    units = {u.name for u in config.units}
    for unit, mode in state.unit_modes.items():
        if unit not in units or mode not in MODES:
            return f"unit mode {unit!r}: {mode!r} does not fit"
    return None


def initial_state(config: RoutingConfig) -> PolicyState:
    """Revision 0: the topology's weights laid out in order, every site active."""
    assignments = {}
    for region in config.regions:
        spans: list[Span] = []
        at = 0
        for site, percent in region.weights:
            size = percent * UNIT_SPACE // 100
            if size:
                spans.append((at, at + size, site))
                at += size
        assignments[region.name] = tuple(spans)
    return PolicyState(
        revision=0,
        assignments=assignments,
        site_states=dict.fromkeys(config.sites, "active"),
        unit_modes={u.name: u.mode for u in config.units},
    )


@dataclass(frozen=True, slots=True)
class Decision:
    """Where one request goes, and why."""

    site: str | None  # None: refused (see reason)
    home: str
    region: str
    unit: str
    bucket: int
    mode: Mode
    reason: str  # home | stand-in | fail-open | all-down | no-key

    @property
    def refused(self) -> bool:
        return self.site is None


class Policy:
    """A routing config and a state, with the lookups a router needs (all pure)."""

    def __init__(self, config: RoutingConfig, state: PolicyState | None = None) -> None:
        self.config = config
        self.state = state or initial_state(config)
        self._networks = sorted(
            ((net, region.name) for region in config.regions for net in region.networks),
            key=lambda item: -item[0].prefixlen,
        )
        self._pinned = {user: unit.ranges[0][0] for unit in config.units for user in unit.users}
        self._unit_at = _unit_table(config.units)
        self._site_at = {
            region: _site_table(spans) for region, spans in self.state.assignments.items()
        }
        self._stand_ins: dict[tuple[str, frozenset[str]], tuple[str, ...]] = {}
        self._regions: dict[str, str] = {}  # client address -> region, a bounded cache

    def with_state(self, state: PolicyState) -> Policy:
        return Policy(self.config, state)

    @property
    def revision(self) -> int:
        return self.state.revision

    def region_of(self, address: str) -> str:
        """The region whose CIDRs hold `address` (the default region when none does)."""
        cached = self._regions.get(address)
        if cached is None:
            cached = self._regions[address] = self._find_region(address)
            if len(self._regions) > REGION_CACHE_ENTRIES:
                self._regions.clear()
        return cached

    def _find_region(self, address: str) -> str:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return self.config.default_region
        for network, region in self._networks:
            if ip.version == network.version and ip in network:
                return region
        return self.config.default_region

    def bucket_of(self, key: str) -> int:
        pinned = self._pinned.get(key)
        return bucket_of(key) if pinned is None else pinned

    def unit_at(self, bucket: int) -> Unit:
        return self._unit_at[bucket]

    def home(self, region: str, bucket: int) -> str:
        return self._site_at[region][bucket]

    def available(self, site: str, unhealthy: Set[str] = frozenset()) -> bool:
        return self.state.site_states.get(site) == "active" and site not in unhealthy

    def route(self, address: str, key: str | None, unhealthy: Set[str] = frozenset()) -> Decision:
        """Where a request from `address` with routing key `key` goes."""
        region = self.region_of(address)
        if key is None:
            if self.config.no_key == "reject":
                return Decision(None, "", region, "", -1, "none", "no-key")
            key = address
        return self.route_key(region, key, unhealthy)

    def route_key(self, region: str, key: str, unhealthy: Set[str] = frozenset()) -> Decision:
        bucket = self.bucket_of(key)
        unit = self._unit_at[bucket]
        mode = self.state.unit_modes.get(unit.name, unit.mode)
        home = self._site_at[region][bucket]
        if self.available(home, unhealthy):
            return Decision(home, home, region, unit.name, bucket, mode, "home")
        stand_in = self.stand_in(region, bucket, unhealthy)
        if stand_in is not None:
            return Decision(stand_in, home, region, unit.name, bucket, mode, "stand-in")
        if self.config.all_down == "open":
            return Decision(home, home, region, unit.name, bucket, mode, "fail-open")
        return Decision(None, home, region, unit.name, bucket, mode, "all-down")

    def stand_in(self, region: str, bucket: int, unhealthy: Set[str] = frozenset()) -> str | None:
        """The available site that serves `bucket` of `region` while its home is out: the
        region's other sites first (by rendezvous hash), then any available site."""
        candidates = self._candidates(region, frozenset(unhealthy))
        if not candidates:
            return None
        return max(candidates, key=lambda s: murmur2(f"{bucket}/{s}".encode()))

    def _candidates(self, region: str, unhealthy: frozenset[str]) -> tuple[str, ...]:
        cached = self._stand_ins.get((region, unhealthy))
        if cached is not None:
            return cached
        serving = {site for _, _, site in self.state.assignments[region]}
        found: tuple[str, ...] = ()
        for pool in (serving, set(self.config.sites)):
            found = tuple(s for s in sorted(pool) if self.available(s, unhealthy))
            if found:
                break
        if len(self._stand_ins) > 64:
            self._stand_ins.clear()
        self._stand_ins[(region, unhealthy)] = found
        return found

    def serving_spans(self, region: str, unhealthy: Set[str] = frozenset()) -> tuple[Span, ...]:
        """The spans of `region` by the site that serves them now (stand-ins included;
        "" where a request would be refused)."""
        return _merge(
            (b, b + 1, self.route_key_bucket(region, b, unhealthy) or "") for b in range(UNIT_SPACE)
        )

    def route_key_bucket(
        self, region: str, bucket: int, unhealthy: Set[str] = frozenset()
    ) -> str | None:
        """The site serving `bucket` of `region` (None: refused)."""
        home = self._site_at[region][bucket]
        if self.available(home, unhealthy):
            return home
        stand_in = self.stand_in(region, bucket, unhealthy)
        if stand_in is not None:
            return stand_in
        return home if self.config.all_down == "open" else None


def _unit_table(units: Iterable[Unit]) -> list[Unit]:
    table: list[Unit | None] = [None] * UNIT_SPACE
    for unit in units:
        for start, end in unit.ranges:
            table[start:end] = [unit] * (end - start)
    assert all(u is not None for u in table), "units must cover the bucket space (config.py)"
    return table  # type: ignore[return-value]


def _site_table(spans: Iterable[Span]) -> list[str]:
    table = [""] * UNIT_SPACE
    for start, end, site in spans:
        table[start:end] = [site] * (end - start)
    return table


# -- changes ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Moved:
    """What a change does to users: per region, the buckets whose site changes."""

    region: str
    start: int
    end: int
    before: str
    after: str

    def to_json(self) -> dict[str, Any]:
        return {"region": self.region, "from": self.start, "to": self.end,
                "before": self.before, "after": self.after}  # fmt: skip


def shift(
    policy: Policy, source: str, target: str, percent: float, region: str | None = None
) -> PolicyState:
    """Move `percent` % of a region's users (of every region `source` serves, without
    `region`) from `source` to `target`: the highest buckets `source` serves there. A region
    where `source` serves less gives all it has."""
    config = policy.config
    for site in (source, target):
        if site not in config.sites:
            raise UnknownSiteError(f"unknown site {site!r}; sites: {', '.join(config.sites)}")
    if source == target:
        raise ConfigError(f"shift --from and --to are both {source!r}; name two sites")
    if not 0 < percent <= 100:
        raise ConfigError(f"--percent must be within (0, 100], got {percent}")
    regions = [config.region(region).name] if region else [r.name for r in config.regions]
    regions = [r for r in regions if policy.state.share(r, source)]
    if not regions:
        where = f"region {region!r}" if region else "any region"
        raise ConfigError(f"site {source!r} serves no users of {where}; nothing to shift")
    buckets = round(percent * UNIT_SPACE / 100)
    assignments = dict(policy.state.assignments)
    for name in regions:
        assignments[name] = _take(assignments[name], source, target, buckets)
    return replace(policy.state, revision=policy.revision + 1, assignments=assignments)


def _take(spans: tuple[Span, ...], source: str, target: str, buckets: int) -> tuple[Span, ...]:
    """Give `target` the highest `buckets` buckets of `source` among `spans`."""
    result: list[Span] = []
    left = buckets
    for start, end, site in reversed(spans):
        if site != source or left == 0:
            result.append((start, end, site))
            continue
        size = min(left, end - start)
        left -= size
        result.append((end - size, end, target))
        if size < end - start:
            result.append((start, end - size, site))
    return _merge(sorted(result))


def _merge(spans: Iterable[Span]) -> tuple[Span, ...]:
    merged: list[Span] = []
    for start, end, site in spans:
        if merged and merged[-1][2] == site and merged[-1][1] == start:
            merged[-1] = (merged[-1][0], end, site)
        else:
            merged.append((start, end, site))
    return tuple(merged)


def set_site_state(policy: Policy, site: str, state: SiteState) -> PolicyState:
    if site not in policy.config.sites:
        raise UnknownSiteError(f"unknown site {site!r}; sites: {', '.join(policy.config.sites)}")
    if state not in SITE_STATES:
        raise ConfigError(f"site state must be one of {', '.join(SITE_STATES)}, got {state!r}")
    states = {**policy.state.site_states, site: state}
    return replace(policy.state, revision=policy.revision + 1, site_states=states)


def set_unit_mode(policy: Policy, unit: str, mode: str) -> PolicyState:
    policy.config.unit(unit)
    if mode not in MODES:
        raise ConfigError(f"unit mode must be one of {', '.join(MODES)}, got {mode!r}")
    modes: dict[str, Mode] = {**policy.state.unit_modes, unit: mode}
    return replace(policy.state, revision=policy.revision + 1, unit_modes=modes)


def moved(before: Policy, after: Policy, unhealthy: Set[str] = frozenset()) -> list[Moved]:
    """The bucket ranges, per region, whose serving site differs between two policies."""
    found: list[Moved] = []
    for region in before.config.regions:
        run: Moved | None = None
        for bucket in range(UNIT_SPACE + 1):
            pair = None
            if bucket < UNIT_SPACE:
                was = before.route_key_bucket(region.name, bucket, unhealthy) or "-"
                now = after.route_key_bucket(region.name, bucket, unhealthy) or "-"
                pair = (was, now) if was != now else None
            if run is not None and (pair is None or pair != (run.before, run.after)):
                found.append(replace(run, end=bucket))
                run = None
            if pair is not None and run is None:
                run = Moved(region.name, bucket, bucket + 1, *pair)
    return found


@dataclass(frozen=True, slots=True)
class Impact:
    """What a dry run prints: the moved ranges, the units they touch and the users' share."""

    moves: tuple[Moved, ...]
    units: Mapping[str, int]  # unit -> buckets moved (summed over regions)
    region_share: Mapping[str, float]  # region -> fraction of its users that change site

    def to_json(self) -> dict[str, Any]:
        return {
            "moves": [m.to_json() for m in self.moves],
            "units": dict(self.units),
            "region_share": dict(self.region_share),
        }


def impact(before: Policy, after: Policy) -> Impact:
    moves = moved(before, after)
    units: dict[str, int] = {}
    share: dict[str, float] = {r.name: 0.0 for r in before.config.regions}
    for move in moves:
        share[move.region] += (move.end - move.start) / UNIT_SPACE
        for bucket in range(move.start, move.end):
            name = before.unit_at(bucket).name
            units[name] = units.get(name, 0) + 1
    return Impact(tuple(moves), units, share)
