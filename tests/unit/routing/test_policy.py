"""The routing policy: regions by CIDR, buckets and units, homes, stand-ins, the fail-open and
fail-closed rules, and changes that move only what they say."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from multiactive.errors import ConfigError, UnknownSiteError
from multiactive.model.topology import load_topology
from multiactive.routing.config import RoutingConfig, routing_config
from multiactive.routing.hashing import UNIT_SPACE, bucket_of, bucket_of_hash, murmur2
from multiactive.routing.policy import (
    Policy,
    PolicyState,
    impact,
    set_site_state,
    set_unit_mode,
    shift,
    state_problem,
)
from tests.unit.routing.conftest import ROUTING, write_topology

USERS = [f"user-{n}" for n in range(10_000)]


def test_murmur2_is_nginx_s() -> None:
    assert murmur2(b"") == 0
    assert murmur2(b"a") != murmur2(b"b")
    assert all(0 <= murmur2(u.encode()) < 2**32 for u in USERS[:100])


def test_buckets_cut_the_hash_space_like_split_clients() -> None:
    for value in (0, 1, 429_496, 429_497, 2**31, 2**32 - 2, 2**32 - 1):
        bucket = bucket_of_hash(value)
        assert 0 <= bucket < UNIT_SPACE
        assert value < (bucket + 1) * 0xFFFFFFFF // UNIT_SPACE or bucket == UNIT_SPACE - 1
        assert bucket == 0 or value >= bucket * 0xFFFFFFFF // UNIT_SPACE


def test_buckets_spread_users_evenly() -> None:
    counts = [0] * 10
    for user in USERS:
        counts[bucket_of(user) * 10 // UNIT_SPACE] += 1
    assert all(850 < c < 1150 for c in counts), counts


def test_region_by_cidr_and_default(policy: Policy) -> None:
    assert policy.region_of("10.1.2.3") == "north"
    assert policy.region_of("127.0.0.2") == "north"
    assert policy.region_of("10.2.0.9") == "south"
    assert policy.region_of("192.0.2.1") == "south"  # default_region
    assert policy.region_of("not an address") == "south"


def test_initial_assignment_follows_the_weights(policy: Policy) -> None:
    assert policy.state.assignments["north"] == (
        (0, 7000, "bj-unicom"),
        (7000, 10000, "bj-telecom"),
    )
    sites = [policy.route("10.1.0.1", u).site for u in USERS]
    assert 0.67 < sites.count("bj-unicom") / len(USERS) < 0.73
    assert sites.count("bj-unicom") + sites.count("bj-telecom") == len(USERS)
    assert {policy.route("10.2.0.1", u).site for u in USERS[:200]} == {"gz"}


def test_decisions_name_unit_mode_and_home(policy: Policy) -> None:
    decision = policy.route("10.1.0.1", "alice")  # pinned to u0: its first bucket, 0
    assert (decision.bucket, decision.unit, decision.mode, decision.site) == (
        0,
        "u0",
        "read-write",
        "bj-unicom",
    )
    read_only = next(u for u in USERS if 2500 <= bucket_of(u) < 5000)
    assert policy.route("10.1.0.1", read_only).mode == "read-only"


def test_a_request_without_a_key_hashes_its_address(policy: Policy, config: RoutingConfig) -> None:
    decision = policy.route("10.1.0.7", None)
    assert decision.bucket == bucket_of("10.1.0.7")
    assert decision.reason == "home"
    rejecting = Policy(dataclasses.replace(config, no_key="reject"))
    assert rejecting.route("10.1.0.7", None).refused
    assert rejecting.route("10.1.0.7", None).reason == "no-key"


def test_draining_a_site_moves_all_its_users_and_no_one_else(policy: Policy) -> None:
    drained = policy.with_state(set_site_state(policy, "bj-telecom", "draining"))
    for user in USERS:
        before, after = policy.route("10.1.0.1", user), drained.route("10.1.0.1", user)
        if before.site == "bj-telecom":
            assert after.site == "bj-unicom"
            assert after.reason == "stand-in"
            assert after.home == "bj-telecom"
        else:
            assert after.site == before.site


def test_an_unhealthy_site_is_evacuated_and_comes_back(policy: Policy) -> None:
    down = {"bj-unicom"}
    moved = [u for u in USERS if policy.route("10.1.0.1", u).site == "bj-unicom"]
    assert {policy.route("10.1.0.1", u, down).site for u in moved} == {"bj-telecom"}
    assert {policy.route("10.1.0.1", u).site for u in moved} == {"bj-unicom"}


def test_stand_ins_spread_over_the_remaining_sites(tmp_path: Path) -> None:
    routing = ROUTING.replace(
        "weights = { gz = 100 }", "weights = { gz = 50, bj-unicom = 25, bj-telecom = 25 }"
    )
    policy = Policy(routing_config(load_topology(write_topology(tmp_path, routing))))
    stand_ins = [policy.route("10.2.0.1", u, {"gz"}).site for u in USERS[:4000]]
    share = stand_ins.count("bj-unicom") / len(stand_ins)
    assert 0.45 < share < 0.55


def test_every_target_down_fails_closed_or_open(policy: Policy, config: RoutingConfig) -> None:
    everything = set(config.sites)
    closed = policy.route("10.1.0.1", "bob", everything)
    assert closed.refused
    assert closed.reason == "all-down"
    opened = Policy(dataclasses.replace(config, all_down="open")).route(
        "10.1.0.1", "bob", everything
    )
    assert opened.site == opened.home
    assert opened.reason == "fail-open"


def test_shift_moves_exactly_the_percent_from_the_highest_buckets(policy: Policy) -> None:
    after = policy.with_state(shift(policy, "bj-unicom", "gz", 30, region="north"))
    assert after.revision == 1
    assert after.state.assignments["north"] == (
        (0, 4000, "bj-unicom"), (4000, 7000, "gz"), (7000, 10000, "bj-telecom"),
    )  # fmt: skip
    assert after.state.assignments["south"] == policy.state.assignments["south"]
    moved = [
        u for u in USERS if policy.route("10.1.0.1", u).site != after.route("10.1.0.1", u).site
    ]
    assert 0.29 <= len(moved) / len(USERS) <= 0.31
    assert all(after.route("10.1.0.1", u).site == "gz" for u in moved)


def test_shift_without_region_shifts_every_region_the_source_serves(policy: Policy) -> None:
    state = shift(policy, "gz", "bj-telecom", 10)
    assert state.assignments["south"] == ((0, 9000, "gz"), (9000, 10000, "bj-telecom"))
    assert state.assignments["north"] == policy.state.assignments["north"]


def test_shift_gives_at_most_what_the_source_serves(policy: Policy) -> None:
    state = shift(policy, "bj-telecom", "gz", 50, region="north")
    assert state.share("north", "bj-telecom") == 0
    assert state.share("north", "gz") == 3000


@pytest.mark.parametrize(
    ("args", "error", "text"),
    [
        (("bj-unicom", "bj-unicom", 10), ConfigError, "both 'bj-unicom'"),
        (("bj-unicom", "sh", 10), UnknownSiteError, "unknown site 'sh'"),
        (("bj-unicom", "gz", 0), ConfigError, "--percent"),
        (("bj-unicom", "gz", 101), ConfigError, "--percent"),
        (("gz", "bj-unicom", 10, "north"), ConfigError, "serves no users of region 'north'"),
        (("gz", "bj-unicom", 10, "west"), ConfigError, "unknown region 'west'"),
    ],
)
def test_bad_shifts(policy: Policy, args: tuple, error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text):
        shift(policy, *args)


def test_set_mode_and_site_states(policy: Policy) -> None:
    state = set_unit_mode(policy, "u2", "read-only")
    assert state.unit_modes["u2"] == "read-only"
    assert state.revision == 1
    with pytest.raises(ConfigError, match="unknown unit 'u9'"):
        set_unit_mode(policy, "u9", "none")
    with pytest.raises(ConfigError, match="unit mode must be"):
        set_unit_mode(policy, "u2", "writable")
    with pytest.raises(UnknownSiteError):
        set_site_state(policy, "sh", "draining")


def test_state_json_round_trip(policy: Policy) -> None:
    state = set_site_state(
        policy.with_state(shift(policy, "bj-unicom", "gz", 25)), "gz", "draining"
    )
    assert PolicyState.from_json(state.to_json()) == state


def test_impact_names_the_units_and_share_that_move(policy: Policy) -> None:
    after = policy.with_state(shift(policy, "bj-unicom", "gz", 30, region="north"))
    report = impact(policy, after)
    assert [(m.region, m.start, m.end, m.before, m.after) for m in report.moves] == [
        ("north", 4000, 7000, "bj-unicom", "gz")
    ]
    assert report.units == {"u1": 1000, "u0": 2000}
    assert report.region_share == {"north": 0.3, "south": 0.0}


def test_serving_spans_include_stand_ins(policy: Policy) -> None:
    drained = policy.with_state(set_site_state(policy, "gz", "down"))
    spans = drained.serving_spans("south")
    assert {site for _, _, site in spans} <= {"bj-unicom", "bj-telecom"}
    assert sum(end - start for start, end, _ in spans) == UNIT_SPACE


SITE_NAMES = ["bj-unicom", "bj-telecom", "gz"]


@settings(max_examples=25, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(SITE_NAMES),
            st.sampled_from(SITE_NAMES),
            st.integers(min_value=1, max_value=100),
            st.sampled_from([None, "north", "south"]),
        ),
        min_size=1,
        max_size=5,
    ),
    users=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=50),
)
def test_a_shift_moves_only_the_shifted_ranges(
    tmp_path_factory: pytest.TempPathFactory, steps: list, users: list[str]
) -> None:
    """Whatever shifts came before, a shift changes the site of exactly the users whose buckets
    it moved from the source to the target in the shifted regions: no other user moves."""
    tmp = tmp_path_factory.mktemp("t")
    policy = Policy(routing_config(load_topology(write_topology(tmp))))
    for source, target, percent, region in steps:
        try:
            after = policy.with_state(shift(policy, source, target, percent, region))
        except ConfigError:
            continue
        moves = impact(policy, after).moves
        for user in users:
            for address, region_name in (("10.1.0.1", "north"), ("10.2.0.1", "south")):
                was = policy.route(address, user)
                now = after.route(address, user)
                in_moved = any(
                    m.region == region_name and m.start <= was.bucket < m.end for m in moves
                )
                if in_moved:
                    assert (was.site, now.site) == (source, target)
                    assert region in (None, region_name)
                else:
                    assert now.site == was.site
        total = sum(m.end - m.start for m in moves if m.region == (region or m.region))
        assert total <= len(after.config.regions) * round(percent * UNIT_SPACE / 100)
        policy = after


def test_a_state_that_does_not_fit_the_topology_is_named(policy: Policy) -> None:
    """A held or published state from another topology is found out before anyone routes by it."""
    good = shift(policy, "bj-unicom", "gz", 20)
    assert state_problem(policy.config, good) is None
    bad_site = dataclasses.replace(
        good, assignments={**good.assignments, "south": ((0, 10000, "sh"),)}
    )
    assert "does not fit" in (state_problem(policy.config, bad_site) or "")
    hole = dataclasses.replace(good, assignments={**good.assignments, "south": ((0, 9000, "gz"),)})
    assert "end at 9000" in (state_problem(policy.config, hole) or "")
    regions = dataclasses.replace(good, assignments={"north": good.assignments["north"]})
    assert "regions" in (state_problem(policy.config, regions) or "")
    modes = dataclasses.replace(good, unit_modes={"u9": "none"})
    assert "u9" in (state_problem(policy.config, modes) or "")
