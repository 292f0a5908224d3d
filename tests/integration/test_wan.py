"""Links through the WAN emulator: cuts, stalls, and a long round trip."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest

from multiactive.local.cluster import LocalCluster
from multiactive.model.topology import DEFAULT_MAX_FRAME_BYTES, DEFAULT_WINDOW_FLOOR_BYTES
from multiactive.wan.shape import LinkShape

from .conftest import (
    MODES,
    ClusterFactory,
    assert_applied_exactly_once,
    assert_same_digest,
    publish,
    stream_heads,
    wait_for,
)

PAYLOAD = b"p" * 1024


def _link(cluster: LocalCluster, site: str, name: str) -> dict[str, object]:
    return cluster.link(site, name).to_json()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cut", ["reset", "blackhole"])
def test_link_cut_mid_stream_and_healed_loses_and_duplicates_nothing(
    make_cluster: ClusterFactory, mode: str, cut: str
) -> None:
    """A link cut while a backlog streams, then healed: everything arrives, applied once."""
    shape = LinkShape(delay_ms=5.0, bandwidth_mbps=200.0)
    cluster = make_cluster(
        default_mode=mode,
        wan={("a", "b"): shape, ("b", "a"): shape},
        settings={"replication": {"peer_timeout_s": 3.0, "heartbeat_interval_s": 0.5}},
    )
    cluster.start(["a"])
    publish(cluster.client_address("a"), 30_000, lambda i: f"k{i}", PAYLOAD)
    cluster.start(["b"])
    wait_for(lambda: sum(stream_heads(cluster, "b", "a").values()) > 0, 30, "b to receive")
    cluster.cut("a", "b", cut)
    seen = sum(stream_heads(cluster, "b", "a").values())
    assert seen < 30_000, "the cut must land mid-stream"
    publish(cluster.client_address("a"), 2_000, lambda i: f"during{i}", PAYLOAD)
    cluster.heal("a", "b")
    cluster.wait_converged(90)
    assert sum(stream_heads(cluster, "b", "a").values()) == 32_000
    assert_applied_exactly_once(cluster)
    assert_same_digest(cluster)


@pytest.mark.parametrize("mode", MODES)
def test_a_blackholed_link_with_a_backlog_is_reported_stalled_within_the_threshold(
    make_cluster: ClusterFactory, mode: str
) -> None:
    """L3: connected, owing messages, no progress for stall_after_s: both ends say stalled,
    not streaming; after healing the link streams again."""
    threshold_s = 1.0
    cluster = make_cluster(
        default_mode=mode,
        wan={},
        settings={"replication": {"stall_after_s": threshold_s, "peer_timeout_s": 30.0}},
    )
    cluster.start()
    publish(cluster.client_address("a"), 100, lambda i: f"warm{i}")
    cluster.wait_converged(30)
    cluster.cut("a", "b", "blackhole")
    publish(cluster.client_address("a"), 500, lambda i: f"k{i}")
    cut_at = time.monotonic()
    wait_for(
        lambda: _link(cluster, "a", "a->b")["state"] == "stalled",
        threshold_s + 5.0,
        "the sender to report the link stalled",
    )
    assert time.monotonic() - cut_at < threshold_s + 3.0
    sender = _link(cluster, "a", "a->b")
    assert sender["backlog_messages"] == 500
    cluster.heal("a", "b")
    cluster.wait_converged(30)
    wait_for(lambda: _link(cluster, "a", "a->b")["state"] == "streaming", 10, "streaming again")
    assert_applied_exactly_once(cluster)


def test_lag_command_reports_what_a_cut_off_site_misses(make_cluster: ClusterFactory) -> None:
    """`multiactive lag` shows, per site and origin, the messages a cut-off site has not got
    and how old the oldest is (from the origin's side); zero again after healing."""
    cluster = make_cluster(wan={}, settings={"replication": {"heartbeat_interval_s": 0.2}})
    cluster.start()
    publish(cluster.client_address("a"), 50, lambda i: f"warm{i}")
    cluster.wait_converged(30)
    cluster.cut("a", "b", "blackhole")
    publish(cluster.client_address("a"), 400, lambda i: f"k{i}")

    codes = []

    def row() -> dict[str, Any]:
        result = subprocess.run(
            [sys.executable, "-m", "multiactive", "lag", "--json",
             "--topology", str(cluster.topology_path)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        codes.append(result.returncode)
        rows = json.loads(result.stdout)
        return next(r for r in rows if (r["site"], r["origin"]) == ("b", "a"))

    wait_for(
        lambda: row()["lag_messages"] == 400 and (row()["lag_s"] or 0) > 0.5,
        15,
        "lag to report 400 messages older than 0.5 s at b from a",
    )
    assert row()["received"] == 50
    # a black-holed link looks connected until it is stalled (stall_after_s): then unhealthy
    wait_for(lambda: row()["lag_messages"] == 400 and codes[-1] == 1, 15, "lag to exit 1")
    cluster.heal("a", "b")
    cluster.wait_converged(30)
    wait_for(lambda: row()["lag_messages"] == 0 and codes[-1] == 0, 15, "healthy again")
    assert row()["lag_s"] == 0.0


def test_a_backlog_crosses_a_40_ms_link_with_several_frames_in_flight(
    make_cluster: ClusterFactory,
) -> None:
    """L2: a backlog crosses a 40 ms link complete and once, with more than one frame in flight
    at a time (a stop-and-wait link would hold one). How fast, and how far the window grows, is
    a benchmark's question (`benchmarks/replication.py`, docs/benchmarks.md): a loaded machine
    delivers less and the window rightly stays at its floor. The window's rules are unit-tested
    with explicit times in tests/unit/replication/test_link_sessions.py."""
    messages = 100_000
    far = LinkShape(delay_ms=20.0)
    cluster = make_cluster(wan={("a", "b"): far, ("b", "a"): far})
    cluster.start(["a"])
    publish(cluster.client_address("a"), messages, lambda i: f"k{i}", PAYLOAD)
    rate, window, in_flight = _catch_up_rate(cluster, messages)
    print(f"catch-up over 40 ms: {rate:,.0f} msg/s, window {window:,} B, in flight {in_flight:,} B")
    assert window >= DEFAULT_WINDOW_FLOOR_BYTES, window
    assert in_flight > DEFAULT_MAX_FRAME_BYTES, in_flight


def _catch_up_rate(cluster: LocalCluster, messages: int) -> tuple[float, int, int]:
    """Messages per second for an empty b to journal a's backlog, over the middle 80 % of it:
    the link's throughput once streaming, without the first one-way delay (a latency) or the
    start of the receiving process in it; a's window then, and the most bytes seen in flight.
    b is stopped and emptied again afterwards."""
    cluster.start(["b"])
    marks: dict[float, float] = {}
    in_flight = [0]

    def passed() -> bool:
        sending = int(str(_link(cluster, "a", "a->b")["in_flight_bytes"]))
        in_flight[0] = max(in_flight[0], sending)
        received = sum(stream_heads(cluster, "b", "a").values())
        for share in (0.1, 0.9):
            if received >= share * messages:
                marks.setdefault(share, time.monotonic())
        return 0.9 in marks

    wait_for(passed, 120, "the catch-up")
    window = int(str(_link(cluster, "a", "a->b")["window_bytes"]))
    cluster.wait_converged(60)
    assert_applied_exactly_once(cluster)
    return 0.8 * messages / (marks[0.9] - marks[0.1]), window, in_flight[0]
