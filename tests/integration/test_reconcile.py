"""Message reconciliation: re-drive failed handlers, replay dead letters, refill lost ranges,
and notice a link whose canaries stopped."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from multiactive.client import Ack, Client
from multiactive.local.cluster import LocalCluster

from .conftest import ClusterFactory, assert_same_digest, publish, stream_heads, wait_for


def _cli(cluster: LocalCluster, *args: str, codes: tuple[int, ...] = (0,)) -> Any:
    """Run a CLI command with --json; its exit code must be one of `codes`."""
    result = subprocess.run(
        [sys.executable, "-m", "multiactive", *args, "--json", "--topology",
         str(cluster.topology_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode in codes, (result.returncode, result.stderr[-2000:])
    return json.loads(result.stdout)


def _publish_one(cluster: LocalCluster, site: str, type_: str, key: str) -> Ack:
    async def send() -> Ack:
        async with Client(cluster.client_address(site)) as client:
            return await client.publish(type_, key, b"v")

    return asyncio.run(send())


@pytest.fixture
def flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    out = tmp_path / "flags"
    out.mkdir()
    monkeypatch.setenv("MULTIACTIVE_TEST_OUT", str(out))
    return out


def _cluster(make_cluster: ClusterFactory, **replication: Any) -> LocalCluster:
    settings = {"apply_max_attempts": 2, "apply_retry_backoff_ms": 20.0,
                "reconcile_interval_s": 0.5, **replication}  # fmt: skip
    cluster = make_cluster(
        ("a", "b", "c"), handlers=["fail_handlers"], settings={"replication": settings}
    )
    cluster.start()
    return cluster


def test_handler_failing_for_a_while_is_redriven_until_it_succeeds(
    make_cluster: ClusterFactory, flags: Path
) -> None:
    """At one site a handler fails long enough to be parked; the reconciler re-drives it with
    backoff, it succeeds once the fault is gone, and every site converges."""
    cluster = _cluster(make_cluster)
    (flags / "broken-b").touch()
    ack = _publish_one(cluster, "a", "test.flaky", "order-1")
    wait_for(lambda: len(cluster.get("b", "/deadletters")) == 1, 20, "b to park the message")
    trace = _cli(cluster, "trace", ack.id)
    assert "downstream unavailable for order-1" in trace["sites"]["b"]["why"]
    assert trace["sites"]["c"]["applied"]
    wait_for(
        lambda: (cluster.get("b", "/reconcile") or {}).get("redriven_total", 0) >= 1,
        20,
        "the reconciler at b to re-drive the dead letter",
    )
    (flags / "broken-b").unlink()
    wait_for(lambda: cluster.get("b", "/deadletters") == [], 30, "the re-drive to succeed")
    cluster.wait_converged(30)
    assert_same_digest(cluster)
    assert cluster.get("b", "/state/kv/done:order-1")["value"] == "MQ=="
    assert _cli(cluster, "trace", ack.id)["sites"]["b"]["applied"]


def test_always_failing_message_is_given_up_then_replayed_after_a_fix(
    make_cluster: ClusterFactory, flags: Path
) -> None:
    """A message whose handler always fails is parked with its error, re-driven until the
    reconciler gives up (reported as a problem), and `multiactive replay` after the fix
    applies it everywhere."""
    cluster = _cluster(make_cluster, redrive_max_attempts=1)
    ack = _publish_one(cluster, "c", "test.broken", "bad-1")
    for site in cluster.sites:
        wait_for(lambda s=site: len(cluster.get(s, "/deadletters")) == 1, 20, f"{site} to park")
    letters = _cli(cluster, "deadletters")
    assert {d["error"] for held in letters.values() for d in held} == {
        "ValueError: cannot handle bad-1"
    }
    wait_for(
        lambda: any(
            "still fails" in p
            for p in (cluster.get("a", "/reconcile") or {}).get("problems", [])  # null: not yet
        ),
        30,
        "the reconciler to give up and report it",
    )
    still = _cli(cluster, "replay", "--id", ack.id, codes=(1,))  # not fixed yet: exit 1
    assert {len(r["failed"]) for r in still.values()} == {1}
    (flags / "fixed").touch()
    replayed = _cli(cluster, "replay", "--id", ack.id)
    assert {r["succeeded"] for r in replayed.values()} == {1}
    for site in cluster.sites:
        assert cluster.get(site, "/deadletters") == []
        assert cluster.get(site, "/state/kv/done:bad-1")["value"] == "MQ=="
    assert_same_digest(cluster)


def test_a_missing_journal_range_is_detected_and_refetched(make_cluster: ClusterFactory) -> None:
    """Batches deleted from a receiver's journal (simulated loss) are found by the reconciler
    as a hole and re-fetched from the origin; the journal is whole again."""
    cluster = make_cluster(settings={"replication": {"reconcile_interval_s": 3600.0}})
    cluster.start()
    for round_ in range(5):  # several batches per partition
        publish(cluster.client_address("a"), 200, lambda i, r=round_: f"k{r}-{i}")
    cluster.wait_converged(30)
    heads = stream_heads(cluster, "b", "a")
    cluster.terminate("b")
    db = sqlite3.connect(cluster.processes["b"].data_dir / "journal.sqlite3")
    (stream_id,) = db.execute(
        "SELECT id FROM streams WHERE origin = 'a' AND partition = 0"
    ).fetchone()
    rows = db.execute(
        "SELECT first_seq, last_seq FROM batches WHERE stream = ? ORDER BY last_seq", (stream_id,)
    ).fetchall()
    assert len(rows) >= 3, rows
    lost = rows[1]
    db.execute("DELETE FROM batches WHERE stream = ? AND last_seq = ?", (stream_id, lost[1]))
    db.commit()
    db.close()
    cluster.restart("b")
    report = _cli(cluster, "reconcile", "--site", "b")["b"]
    assert report["holes_found"] == 1
    assert report["messages_refetched"] == lost[1] - lost[0] + 1
    again = _cli(cluster, "reconcile", "--site", "b")["b"]
    assert again["holes_found"] == 0
    assert stream_heads(cluster, "b", "a") == heads
    cluster.wait_converged(30)
    assert_same_digest(cluster)


def test_silent_canaries_flag_a_link_that_stays_connected(make_cluster: ClusterFactory) -> None:
    """Canaries from every site are applied everywhere (metric); when a link black-holes
    while its connection stays open, the reconciler reports the origin's canaries overdue."""
    cluster = make_cluster(
        wan={},
        settings={"replication": {"canary_interval_s": 0.3, "reconcile_interval_s": 3600.0,
                                  "peer_timeout_s": 60.0, "stall_after_s": 60.0}},
    )  # fmt: skip
    cluster.start()
    wait_for(lambda: "a" in cluster.status("b").canaries, 10, "a canary from a at b")
    assert cluster.status("b").canaries["a"]["latency_s"] < 5
    assert not _cli(cluster, "reconcile", "--now")["b"]["problems"]
    cluster.cut("a", "b", "blackhole")
    wait_for(
        lambda: any(
            "no canary from a" in p
            for p in _cli(cluster, "reconcile", codes=(0, 1))["b"]["problems"]
        ),
        15,
        "b to report a's canaries overdue",
    )
    assert cluster.link("b", "a->b").state == "streaming"  # the connection itself looks fine
