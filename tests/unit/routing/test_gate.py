"""The site's gate on routed writes: a write carrying a routing key is refused at a site the
policy does not send that user to, or while the user's unit is read-only, naming the home
site; unrouted writes pass; the gate follows the policy held in the site's state."""

from __future__ import annotations

import asyncio

from multiactive.errors import StoreUnavailable
from multiactive.model.clock import HybridClock
from multiactive.model.topology import Limits
from multiactive.replication.ingress import Ingress
from multiactive.routing.changes import make_change
from multiactive.routing.gate import GATE_REFRESH_S, KEY_HEADER, REGION_HEADER, RoutingGate
from multiactive.routing.hashing import bucket_of
from multiactive.routing.messages import POLICY_KEY, encode_change
from multiactive.routing.policy import Policy, set_unit_mode
from multiactive.state import Entry, MemoryState
from multiactive.testing import FakeClock
from multiactive.wire.protocol import RESULT_OK, RESULT_REFUSED
from tests.unit.replication.test_ingress import flushing, opened

USER = next(f"u{n}" for n in range(1000) if 7500 <= bucket_of(f"u{n}") < 9000)  # u2, bj-telecom
ROUTED = {KEY_HEADER: USER, REGION_HEADER: "north"}


def test_the_gate_rules(policy: Policy) -> None:
    gate = RoutingGate("bj-telecom", policy.config)
    assert gate.check({}) is None
    assert gate.check(ROUTED) is None
    elsewhere = RoutingGate("gz", policy.config).check(ROUTED)
    assert elsewhere is not None
    assert elsewhere[1] == "bj-telecom"
    assert "they go to site bj-telecom" in elsewhere[0]
    assert RoutingGate("gz", policy.config).check({KEY_HEADER: USER}) is None  # no region
    gate.policy = policy.with_state(set_unit_mode(policy, "u2", "read-only"))
    refused = gate.check(ROUTED)
    assert refused is not None
    assert "unit u2 is read-only" in refused[0]
    assert "its home site is bj-telecom" in refused[0]


def test_ingress_refuses_what_the_gate_forbids(policy: Policy) -> None:
    async def main() -> None:
        journal = await opened()
        ingress = Ingress("gz", journal, HybridClock(), 4, Limits())
        ingress.gate = RoutingGate("gz", policy.config).check
        async with flushing(ingress):
            results = await ingress.submit(
                [["", "kv.set", "a", ROUTED, b"v"], ["", "kv.set", "b", {}, b"v"]]
            )
        assert results[0][:2] == [RESULT_REFUSED, "routing"]
        assert results[0][3] == "bj-telecom"
        assert results[1][0] == RESULT_OK

    asyncio.run(main())


def test_the_gate_follows_the_policy_in_state(policy: Policy) -> None:
    async def main() -> None:
        state = MemoryState()
        await state.open()
        gate = RoutingGate("bj-telecom", policy.config)
        after, change, _ = make_change(policy, "set-mode", {"unit": "u2", "mode": "none"}, "o", 1)
        await state.put([Entry(POLICY_KEY, encode_change(after, change), 5, "gz")])
        await gate.refresh(state)
        assert gate.policy.revision == 1
        assert gate.check(ROUTED) is not None

    asyncio.run(main())


class Restarting(MemoryState):
    """A state whose reads fail while its store is down."""

    down = True

    async def get(self, key: str) -> Entry | None:
        if self.down:
            raise StoreUnavailable("Redis at redis://x (redis_url) failed: ConnectionError")
        return await super().get(key)


def test_the_gate_keeps_its_policy_and_runs_on_while_the_state_is_unavailable(
    policy: Policy,
) -> None:
    """A state that cannot be read (its Redis restarting) does not end the gate's refresh
    loop, which would end the site: it keeps the policy and picks up the held one later."""

    async def main() -> None:
        clock, state = FakeClock(), Restarting()
        await state.open()
        gate = RoutingGate("bj-telecom", policy.config)
        after, change, _ = make_change(policy, "set-mode", {"unit": "u2", "mode": "none"}, "o", 1)
        await state.put([Entry(POLICY_KEY, encode_change(after, change), 5, "gz")])
        running = asyncio.create_task(gate.run(state, clock))
        await clock.advance(3 * GATE_REFRESH_S)
        assert not running.done()
        assert gate.policy.revision == 0
        state.down = False
        await clock.advance(GATE_REFRESH_S)
        assert gate.policy.revision == 1
        running.cancel()

    asyncio.run(main())
