"""Policy changes as `ma.route.policy` messages: a processor applies them into the site's
state (the policy register and the change history), the newest by version wins whatever the
order, and a payload that does not decode is parked, not applied."""

from __future__ import annotations

import asyncio

from multiactive.journal import MemoryJournal
from multiactive.model.message import StreamId
from multiactive.routing.changes import make_change
from multiactive.routing.config import RoutingConfig
from multiactive.routing.messages import POLICY_KEY, POLICY_TYPE, decode_change, encode_change
from multiactive.routing.policy import Policy
from multiactive.routing.service import held_changes, held_policy
from multiactive.state import MemoryState
from tests.unit.replication.test_processor import TIMEOUT_S, feed, memory_processor, msg, running


def test_changes_are_applied_into_state_newest_version_wins(config: RoutingConfig) -> None:
    policy = Policy(config)
    first, change1, _ = make_change(policy, "drain", {"site": "gz"}, "ops", 1_000)
    second, change2, _ = make_change(
        policy.with_state(first), "set-mode", {"unit": "u1", "mode": "none"}, "ops", 2_000
    )

    async def main() -> None:
        journal = MemoryJournal("bj-unicom")
        await journal.open()
        state = MemoryState()
        processor = memory_processor(journal, state)
        newer = msg("n", POLICY_TYPE, POLICY_KEY, encode_change(second, change2), version=20)
        older = msg("o", POLICY_TYPE, POLICY_KEY, encode_change(first, change1), version=10)
        bad = msg("b", POLICY_TYPE, POLICY_KEY, b"{not json", version=30)
        async with running(processor):
            await feed(journal, StreamId("gz", 0), newer, older, bad)  # out of order
            assert await processor.wait_caught_up(TIMEOUT_S)
        held = await held_policy(config, state)
        assert held == second
        assert held.site_states["gz"] == "draining"
        assert held.unit_modes["u1"] == "none"
        assert [c.kind for c in await held_changes(state)] == ["set-mode", "drain"]
        (dead,) = await state.dead_letters()
        assert dead.type == POLICY_TYPE

    asyncio.run(main())


def test_the_record_keeps_who_when_before_and_after(config: RoutingConfig) -> None:
    policy = Policy(config)
    state, change, impact = make_change(
        policy, "shift", {"from": "bj-unicom", "to": "gz", "percent": 10, "region": "north"},
        "alice@ops", 1_234,
    )  # fmt: skip
    assert (change.who, change.at_ms, change.revision) == ("alice@ops", 1_234, 1)
    assert change.before == {"assignments": {"north": [[0, 7000, "bj-unicom"],
                                                       [7000, 10000, "bj-telecom"]]}}  # fmt: skip
    assert change.after["assignments"]["north"][1] == [6000, 7000, "gz"]
    assert decode_change(encode_change(state, change)) == (state, change)
    assert impact.region_share["north"] == 0.1


def test_an_empty_state_holds_revision_zero(config: RoutingConfig) -> None:
    async def main() -> None:
        state = MemoryState()
        await state.open()
        assert (await held_policy(config, state)).revision == 0
        assert await held_changes(state) == []

    asyncio.run(main())
