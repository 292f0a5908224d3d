"""Active health checks of every site's upstreams.

`UpstreamHealth` is the rule, pure: an upstream is down after `failures` consecutive failed
checks and up again after `rise` consecutive good ones (starting up). `HealthChecker` runs the
checks: every `interval_s` (on a `Clock`) an HTTP GET of `path` on each upstream, at most
`timeout_s` each, all at once; a check fails on a connection error, a timeout or a status of
500 or more. A site is unhealthy when none of its upstreams is up: the policy then sends its
users to their stand-ins (evacuation), and back when one comes up again.

So a dead upstream is out within `interval_s * failures` plus one check's timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from multiactive.clock import Clock
from multiactive.model.topology import Address
from multiactive.routing.config import HealthSettings

Probe = Callable[[Address], Awaitable[bool]]


@dataclass(slots=True)
class UpstreamHealth:
    failures_to_fail: int
    successes_to_rise: int
    up: bool = True
    failures: int = 0
    successes: int = 0
    checks: int = 0
    transitions: int = 0

    def observe(self, ok: bool) -> bool:
        """Count one check; True when the upstream changed between up and down."""
        self.checks += 1
        if ok:
            self.failures = 0
            self.successes += 1
            if not self.up and self.successes >= self.successes_to_rise:
                self.up = True
                self.transitions += 1
                return True
        else:
            self.successes = 0
            self.failures += 1
            if self.up and self.failures >= self.failures_to_fail:
                self.up = False
                self.transitions += 1
                return True
        return False


@dataclass(frozen=True, slots=True)
class UpstreamStatus:
    site: str
    address: str
    up: bool
    failures: int
    checks: int


class HealthChecker:
    def __init__(
        self,
        upstreams: Iterable[tuple[str, tuple[Address, ...]]],
        settings: HealthSettings,
        probe: Probe,
        clock: Clock,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._settings = settings
        self._probe = probe
        self._clock = clock
        self._on_change = on_change
        self._sites = {site: addresses for site, addresses in upstreams}
        self._health = {
            address: UpstreamHealth(settings.failures, settings.rise)
            for addresses in self._sites.values()
            for address in addresses
        }
        # what every proxied request asks, kept up to date when an upstream goes up or down
        self._up: dict[str, tuple[Address, ...]] = {}
        self._unhealthy: frozenset[str] = frozenset()
        self._recount()

    def up(self, address: Address) -> bool:
        return self._health[address].up

    def up_upstreams(self, site: str) -> tuple[Address, ...]:
        return self._up.get(site, ())

    def unhealthy_sites(self) -> frozenset[str]:
        """Sites with upstreams, none of them up."""
        return self._unhealthy

    def report(self, address: Address, ok: bool) -> None:
        """Count one check (or a failed proxied request) of an upstream."""
        if self._health[address].observe(ok):
            self._recount()
            self._on_change()

    def _recount(self) -> None:
        self._up = {
            site: tuple(a for a in addresses if self._health[a].up)
            for site, addresses in self._sites.items()
        }
        self._unhealthy = frozenset(site for site, up in self._up.items() if not up)

    async def check_once(self) -> None:
        addresses = list(self._health)
        results = await asyncio.gather(*(self._checked(a) for a in addresses))
        for address, ok in zip(addresses, results, strict=True):
            self.report(address, ok)

    async def _checked(self, address: Address) -> bool:
        try:
            return await asyncio.wait_for(self._probe(address), self._settings.timeout_s)
        except (TimeoutError, OSError):
            return False

    async def run(self) -> None:
        while True:
            await self.check_once()
            await self._clock.sleep(self._settings.interval_s)

    def statuses(self) -> list[UpstreamStatus]:
        return [
            UpstreamStatus(
                site, str(a), self._health[a].up, self._health[a].failures, self._health[a].checks
            )
            for site, addresses in self._sites.items()
            for a in addresses
        ]
