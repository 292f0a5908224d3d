"""The site's own check of routed writes: a write that arrives at a site while the policy the
site holds forbids it there is refused, naming the home site.

A write is routed when its headers carry the user's routing key (`ma-routing-key`, and the
user's region in `ma-region`), as a guarded `Client` sends them (`routing.guard`). The site
refuses it when the user's unit is read-only or closed, or (when the region is given) when
the policy sends that user's writes to another site. Writes without the header are not
routed and pass. The gate reads the policy the site's state holds (`ma:routing:policy`) every
`GATE_REFRESH_S`, so it follows a change within that time after the site applied it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from multiactive.clock import Clock
from multiactive.errors import DecodeError, StoreError
from multiactive.routing.config import RoutingConfig
from multiactive.routing.messages import POLICY_KEY, decode_change
from multiactive.routing.policy import Policy, state_problem
from multiactive.state.base import StateBackend

KEY_HEADER = "ma-routing-key"
REGION_HEADER = "ma-region"
GATE_REFRESH_S = 0.2


class RoutingGate:
    def __init__(self, site: str, config: RoutingConfig) -> None:
        self.site = site
        self.policy = Policy(config)
        self.refused = 0

    def check(self, headers: Mapping[str, str]) -> tuple[str, str] | None:
        """(reason, home site) when a write with these headers may not be accepted here."""
        key = headers.get(KEY_HEADER)
        if key is None:
            return None
        region = headers.get(REGION_HEADER) or ""
        known = region in self.policy.state.assignments
        decision = self.policy.route_key(
            region if known else self.policy.config.default_region, key
        )
        revision = self.policy.revision
        if decision.mode != "read-write":
            self.refused += 1
            return (
                f"site {self.site} refuses writes for user {key!r}: unit {decision.unit} is "
                f"{decision.mode} (policy revision {revision}); its home site is {decision.home}",
                decision.home,
            )
        if known and decision.site not in (None, self.site):
            self.refused += 1
            return (
                f"site {self.site} refuses writes for user {key!r} (unit {decision.unit}, "
                f"region {region}): they go to site {decision.site} (policy revision {revision})",
                decision.site or "",
            )
        return None

    async def refresh(self, state: StateBackend) -> None:
        entry = await state.get(POLICY_KEY)
        if entry is None or entry.value is None:
            return
        try:
            held = decode_change(entry.value)[0]
        except DecodeError:
            return
        if held != self.policy.state and state_problem(self.policy.config, held) is None:
            self.policy = self.policy.with_state(held)

    async def run(self, state: StateBackend, clock: Clock) -> None:
        """Refresh every GATE_REFRESH_S. While the state cannot be read (its Redis
        restarting), the gate keeps the policy it holds: the outage is the site's to report,
        not a reason to stop it."""
        while True:
            with contextlib.suppress(StoreError):
                await self.refresh(state)
            await clock.sleep(GATE_REFRESH_S)
