"""The write guard: a user's writes go to the site the policy sends the user to; a read-only
or closed unit refuses them, naming the home site; a client refuses before sending."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from multiactive.client import Client
from multiactive.errors import RoutingRefused
from multiactive.model.topology import load_topology
from multiactive.routing.guard import WriteGuard
from multiactive.routing.hashing import bucket_of
from multiactive.routing.policy import Policy, set_site_state, set_unit_mode
from tests.unit.routing.conftest import write_topology

USER = next(f"u{n}" for n in range(1000) if 7500 <= bucket_of(f"u{n}") < 9000)  # unit u2


def test_the_home_site_may_write_others_are_told_where(policy: Policy) -> None:
    guard = WriteGuard(policy, USER, "north")
    assert guard.home_site() == "bj-telecom"
    guard.check("bj-telecom")
    with pytest.raises(RoutingRefused, match="go to site bj-telecom, not gz") as caught:
        guard.check("gz")
    assert caught.value.home_site == "bj-telecom"
    assert caught.value.unit == "u2"


def test_a_read_only_unit_refuses_writes_naming_the_home_site(policy: Policy) -> None:
    frozen = policy.with_state(set_unit_mode(policy, "u2", "read-only"))
    with pytest.raises(RoutingRefused, match=r"unit u2 is read-only.*home site is bj-telecom"):
        WriteGuard(frozen, USER, "north").check("bj-telecom")


def test_while_the_home_is_drained_the_stand_in_takes_the_writes(policy: Policy) -> None:
    drained = policy.with_state(set_site_state(policy, "bj-telecom", "draining"))
    guard = WriteGuard.for_address(drained, USER, "10.1.0.1")
    assert guard.home_site() == "bj-unicom"
    with pytest.raises(RoutingRefused):
        guard.check("bj-telecom")


def test_a_guarded_client_refuses_before_sending(tmp_path: Path, policy: Policy) -> None:
    topology = load_topology(write_topology(tmp_path))
    client = Client.for_user(topology, policy, USER, region="north")
    assert client.address == topology.site("bj-telecom").listen
    client.site = "gz"  # as if connected to another site: nothing is sent

    with pytest.raises(RoutingRefused, match="go to site bj-telecom"):
        asyncio.run(client.publish("kv.set", "k", b"v"))
    frozen = policy.with_state(set_unit_mode(policy, "u2", "none"))
    with pytest.raises(RoutingRefused, match="unit u2 is none"):
        Client.for_user(topology, frozen, USER, region="north")
