"""Writes go to the home unit: the rule a `Client` applies before it publishes for a user.

    policy = Policy(routing_config(topology), held_state)
    async with Client.for_user(topology, policy, "user-42", region="north") as client:
        await client.publish("status.post", "user-42:1", b"...")

A user's writes must all be accepted by one site, so that they never race across sites (the
unit approach). The guard refuses, before anything is sent, a write

- for a unit whose mode is read-only or none (the first step of moving a unit: make it
  read-only, then move it, then make it read-write again at its new home), or
- at a site that is not where the policy sends the user now (its home, or its stand-in while
  the home is draining or down),

with `RoutingRefused` naming the site that takes the user's writes.
"""

from __future__ import annotations

from dataclasses import dataclass

from multiactive.errors import RoutingRefused
from multiactive.routing.policy import Decision, Policy


@dataclass(frozen=True, slots=True)
class WriteGuard:
    policy: Policy
    routing_key: str
    region: str

    @classmethod
    def for_address(cls, policy: Policy, routing_key: str, client_address: str) -> WriteGuard:
        """A guard for a user whose region follows from the address it connects from."""
        return cls(policy, routing_key, policy.region_of(client_address))

    def decision(self) -> Decision:
        return self.policy.route_key(self.region, self.routing_key)

    def home_site(self) -> str:
        """The site that takes this user's writes now ("" when none may)."""
        return self.decision().site or ""

    def check(self, site: str) -> None:
        """Raise RoutingRefused unless a write for this user may be accepted at `site`."""
        decision = self.decision()
        target = decision.site or ""
        who = f"user {self.routing_key!r} (unit {decision.unit}, region {self.region})"
        if decision.mode != "read-write":
            raise RoutingRefused(
                f"writes for {who} are refused: unit {decision.unit} is {decision.mode} "
                f"(policy revision {self.policy.revision}); its home site is {decision.home}",
                decision.home, decision.unit, decision.mode,
            )  # fmt: skip
        if target != site:
            where = f"go to site {target}" if target else "have no site (every target is down)"
            raise RoutingRefused(
                f"writes for {who} {where}, not {site} (policy revision "
                f"{self.policy.revision}); connect to the home site",
                target, decision.unit, decision.mode,
            )  # fmt: skip
