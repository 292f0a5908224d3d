"""The live router's rules without sockets: the client address behind trusted proxies, the
routing key's sources, refusals by mode and policy, stickiness over many requests, and the
health rule (down after N failures, up after M successes) on a fake clock."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress

from multiactive.model.topology import Address
from multiactive.routing.config import HealthSettings, KeySource, RoutingConfig
from multiactive.routing.health import HealthChecker, UpstreamHealth
from multiactive.routing.policy import Policy, set_site_state, set_unit_mode
from multiactive.routing.router import client_address, refusal, routing_key
from multiactive.testing import FakeClock

TRUSTED = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.9.0.0/16"))
SOURCES = (KeySource("header", "X-User-Id"), KeySource("cookie", "uid"), KeySource("query", "uid"))


def test_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    assert client_address("10.1.0.5", "6.6.6.6", TRUSTED) == "10.1.0.5"
    assert client_address("127.0.0.1", "10.2.0.7", TRUSTED) == "10.2.0.7"
    # a chain: the right-most address that is not a trusted proxy is the client
    assert client_address("127.0.0.1", "6.6.6.6, 10.2.0.7, 10.9.1.1", TRUSTED) == "10.2.0.7"
    assert client_address("127.0.0.1", "10.9.1.1", TRUSTED) == "127.0.0.1"
    assert client_address("127.0.0.1", None, TRUSTED) == "127.0.0.1"


def test_routing_key_sources_in_order() -> None:
    assert routing_key(SOURCES, {"X-User-Id": "h", "Cookie": "uid=c"}, {"uid": "q"}) == "h"
    assert routing_key(SOURCES, {"Cookie": "a=1; uid=c"}, {"uid": "q"}) == "c"
    assert routing_key(SOURCES, {"Cookie": "garbage=\x00"}, {"uid": "q"}) == "q"
    assert routing_key(SOURCES, {}, {}) is None


def test_refusals_by_mode_and_policy(policy: Policy, config: RoutingConfig) -> None:
    user = next(f"u{n}" for n in range(1000) if policy.route("10.1.0.1", f"u{n}").unit == "u1")
    decision = policy.route("10.1.0.1", user)  # u1 is read-only in the topology
    assert refusal(decision, "GET", config) is None
    refused = refusal(decision, "POST", config)
    assert refused is not None
    assert refused.status == 403
    assert f"its home site is {decision.home}" in refused.text
    closed = policy.with_state(set_unit_mode(policy, "u1", "none")).route("10.1.0.1", user)
    assert refusal(closed, "GET", config).status == 503  # type: ignore[union-attr]
    down = policy.route("10.1.0.1", user, frozenset(config.sites))  # all_down = closed
    assert refusal(down, "GET", config).reason == "all-down"  # type: ignore[union-attr]
    no_key = Policy(dataclasses.replace(config, no_key="reject")).route("10.1.0.1", None)
    assert refusal(no_key, "GET", config).status == 400  # type: ignore[union-attr]


def test_ten_thousand_users_keep_their_site_over_a_hundred_thousand_requests(
    policy: Policy,
) -> None:
    users = [f"user-{n}" for n in range(10_000)]
    first = {u: policy.route("10.1.0.1", u).site for u in users}
    for n in range(100_000):
        user = users[(n * 7919) % len(users)]
        assert policy.route("10.1.0.1", user).site == first[user]
    drained = policy.with_state(set_site_state(policy, "bj-unicom", "draining"))
    assert all(drained.route("10.1.0.1", u).site != "bj-unicom" for u in users)


def test_upstream_health_rule() -> None:
    health = UpstreamHealth(failures_to_fail=3, successes_to_rise=2)
    assert [health.observe(False) for _ in range(3)] == [False, False, True]
    assert not health.up
    assert [health.observe(True), health.observe(False), health.observe(True)] == [False] * 3
    assert health.observe(True)
    assert health.up


def test_checker_marks_a_site_down_after_interval_times_failures() -> None:
    async def main() -> None:
        clock = FakeClock()
        alive = {"a": True}

        async def probe(address: Address) -> bool:
            return alive["a"] or address.port != 1

        upstreams = [("gz", (Address("127.0.0.1", 1),)), ("bj", (Address("127.0.0.1", 2),))]
        settings = HealthSettings(interval_s=2.0, failures=3, rise=2, timeout_s=1.0)
        checker = HealthChecker(upstreams, settings, probe, clock)
        task = asyncio.create_task(checker.run())
        await clock.advance(4.0)
        assert checker.unhealthy_sites() == frozenset()
        alive["a"] = False
        await clock.advance(4.0)  # two failed checks: not yet
        assert checker.unhealthy_sites() == frozenset()
        await clock.advance(2.0)  # the third
        assert checker.unhealthy_sites() == {"gz"}
        alive["a"] = True
        await clock.advance(2.0)
        assert checker.unhealthy_sites() == {"gz"}
        await clock.advance(2.0)  # rise = 2
        assert checker.unhealthy_sites() == frozenset()
        task.cancel()

    asyncio.run(main())
