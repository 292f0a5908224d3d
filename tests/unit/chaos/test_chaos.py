"""The chaos checker's pure parts: options, the planned schedule, and the checks of evidence.

Running the plan against real processes is `tests/integration/test_chaos.py`.
"""

from __future__ import annotations

import pytest

from multiactive.chaos.checker import (
    AckedWrite,
    ChaosOptions,
    PlannedFault,
    check_acks,
    check_journal,
    check_refused,
    check_same_state,
    check_streams,
    last_error,
    plan_chaos,
)
from multiactive.chaos.model import replay
from multiactive.errors import ConfigError
from multiactive.local.redis import CLUSTER_MASTERS
from multiactive.model.message import Message, StreamId
from multiactive.records import StreamStatus
from multiactive.state import Op

OPTIONS = ChaosOptions(seed=3, duration_s=30.0)


def message(seq: int, id_: str = "", payload: bytes = b"1", version: int = 0) -> Message:
    return Message(
        id_ or f"id{seq}", "bj", 0, seq, "counter.add", "n:0", version or seq, 0, payload
    )


def acked(seq: int, payload: bytes = b"1") -> AckedWrite:
    return AckedWrite(f"id{seq}", "bj", 0, seq, seq, "counter.add", "n:0", payload)


def test_an_option_out_of_range_is_an_error_naming_it() -> None:
    """ChaosOptions refuses bad values with the option's name and the value."""
    with pytest.raises(ConfigError, match=r"chaos option rate is -1\b"):
        ChaosOptions(rate=-1)
    with pytest.raises(ConfigError, match="outage_s is \\(3, 1\\)"):
        ChaosOptions(outage_s=(3, 1))
    with pytest.raises(ConfigError, match="unknown failpoint 'nope'"):
        ChaosOptions(failpoints=("nope",))


def test_the_plan_never_has_every_site_down_and_ends_what_it_starts_in_order() -> None:
    """Replaying the planned faults: kills leave a site up; each cut/isolate/kill ends later
    with its own heal/rejoin/restart (or is ended by the final heal)."""
    plan = plan_chaos(OPTIONS)
    down: set[str] = set()
    open_faults: dict[tuple[str, tuple[tuple[str, str], ...]], PlannedFault] = {}
    ends = {"cut": "heal", "isolate": "rejoin", "kill": "restart"}
    for fault in plan.faults:
        if fault.action in ends:
            open_faults[(fault.site, fault.links)] = fault
        else:
            start = open_faults.pop((fault.site, fault.links))
            assert ends[start.action] == fault.action
            assert start.at_s <= fault.at_s
        if fault.action == "kill":
            down.add(fault.site)
        elif fault.action == "restart":
            down.discard(fault.site)
        assert len(down) < len(OPTIONS.sites)
    assert [f.at_s for f in plan.faults] == sorted(f.at_s for f in plan.faults)
    assert all(f.at_s < OPTIONS.duration_s for f in plan.faults)
    assert {"cut", "isolate", "kill"} <= {f.action for f in plan.faults}


def test_the_plan_writes_every_operation_at_every_site_over_few_keys() -> None:
    """Writes cover all five built-in types and all sites; keys repeat, so writes conflict."""
    writes = plan_chaos(OPTIONS).writes
    assert {w.type for w in writes} == {"kv.set", "kv.del", "counter.add", "zset.add", "zset.rem"}
    assert {w.site for w in writes} == set(OPTIONS.sites)
    assert len({w.key for w in writes}) == 3 * OPTIONS.keys


def test_different_seeds_plan_different_runs() -> None:
    """The seed is the only source of randomness, and it matters."""
    assert plan_chaos(OPTIONS) != plan_chaos(ChaosOptions(seed=4, duration_s=30.0))


def test_an_acknowledged_write_missing_from_the_journal_is_reported() -> None:
    """No acked write may be lost: one absent from its origin's journal is a problem."""
    problems = check_acks([acked(1), acked(2)], {"bj": [message(1)]})
    assert problems == [
        "acknowledged write id2 (counter.add n:0 at bj, partition 0 seq 2) is missing from "
        "bj's journal"
    ]


def test_an_acknowledged_write_journaled_differently_is_reported() -> None:
    """The journal must hold the acked write as acked: a changed payload is named."""
    problems = check_acks([acked(1, b"5")], {"bj": [message(1, payload=b"6")]})
    assert problems == [
        "acknowledged write id1 at bj: payload was acknowledged as b'5' but is b'6' in the journal"
    ]


def test_a_journal_gap_or_a_request_journaled_twice_is_reported() -> None:
    """An origin's journal is dense up to its head, with each id and version once."""
    stream = StreamId("bj", 0)
    assert check_journal("bj", [message(1), message(2)], {stream: 2}) == []
    gap = check_journal("bj", [message(1), message(3)], {stream: 3})
    assert gap == [
        "journal of bj stream bj/0: head is 3 but it holds 2 messages, seqs 1..3 "
        "(expected 1..3, dense)"
    ]
    twice = check_journal("bj", [message(1), message(2, id_="id1", version=1)], {stream: 2})
    assert twice == [
        "journal of bj: 1 request ids journaled more than once (id1)",
        "journal of bj: 1 versions journaled more than once (1)",
    ]


def test_a_stream_applied_more_often_than_its_head_is_reported() -> None:
    """Applied exactly once: applied_count must equal the origin's head at every site."""
    streams = [StreamStatus("bj", 0, 5, 5, 5, 0, 0.0, head=5, applied_count=6)]
    assert check_streams("gz", streams, {StreamId("bj", 0): 5}) == [
        "site gz stream bj/0: received 5, applied through 5, applied 6 messages; "
        "its origin's head is 5"
    ]
    assert check_streams("gz", [], {StreamId("bj", 0): 5})[0].startswith(
        "site gz stream bj/0: received 0"
    )


def test_sites_holding_different_state_are_reported_against_the_first() -> None:
    """Check (a): every site's snapshot equals the first site's."""
    same = replay([Op("counter.add", "n", 1, "bj", b"1")])
    other = replay([Op("counter.add", "n", 1, "bj", b"2")])
    assert check_same_state({"bj": same, "gz": same}) == []
    assert check_same_state({"bj": same, "gz": other}) == [
        "site gz: counter n is 2, site bj holds 1"
    ]


def test_a_crashed_sites_last_exception_is_picked_from_its_log() -> None:
    """The crash report quotes the last exception line, not log lines that mention errors."""
    log = "\n".join(
        [
            "  + Exception Group Traceback (most recent call last):",
            "  | ExceptionGroup: unhandled errors in a TaskGroup (1 sub-exception)",
            "    | multiactive.errors.ConnectionLost: connection to 127.0.0.1:1 is closed",
            "    +------------------------------------",
            '2026-11-22T03:55:12.362 INFO connections link_retry reason="[Errno 111] Error: x"',
        ]
    )
    assert last_error(log) == (
        "its log's last error: multiactive.errors.ConnectionLost: connection to 127.0.0.1:1 "
        "is closed"
    )
    assert last_error("2026-11-22T03:55:13.738 INFO site site_stopped") == "its log names no error"
    exited = "error: cannot connect to Redis at redis+cluster://127.0.0.1:1 (redis_url)"
    assert last_error(f"{log}\n{exited}") == f"its log's last error: {exited}"


def test_redis_server_kills_are_planned_only_with_the_redis_backend() -> None:
    """p_redis_kill plans SIGKILLs of redis-servers, each followed by its start, never two at
    once for one site; other backends refuse the option."""
    plan = plan_chaos(ChaosOptions(seed=3, duration_s=30.0, backend="redis", p_redis_kill=0.5))
    kills = [f for f in plan.faults if f.action == "redis_kill"]
    assert kills
    down: set[str] = set()
    for fault in plan.faults:
        if fault.action == "redis_kill":
            assert fault.site not in down
            down.add(fault.site)
        elif fault.action == "redis_restart":
            down.discard(fault.site)  # (one still down at the end is started by the heal)
    assert not any(f.action.startswith("redis") for f in plan_chaos(ChaosOptions(seed=3)).faults)
    with pytest.raises(ConfigError, match="p_redis_kill"):
        ChaosOptions(p_redis_kill=0.5)


def test_a_refused_write_found_in_a_journal_is_a_problem() -> None:
    """RejectedError promises nothing was journaled: a refused id in a journal is reported."""
    journals = {"a": [message(1, "w-1"), message(2, "w-2")]}
    assert check_refused(["w-9"], journals) == []
    assert check_refused(["w-2"], journals) == [
        "write w-2 was refused to its client, but it is journaled"
    ]


def test_on_a_redis_cluster_a_redis_kill_hits_one_node_and_its_restart_the_same_node() -> None:
    """With backend redis-cluster each redis_kill names a node of the site's cluster (every
    node is drawn), its redis_restart the same node; on a single server the node is 0."""
    options = ChaosOptions(seed=3, duration_s=60.0, backend="redis-cluster", p_redis_kill=0.5)
    faults = plan_chaos(options).faults
    kills = [f for f in faults if f.action == "redis_kill"]
    assert {f.node for f in kills} == set(range(CLUSTER_MASTERS))
    down: dict[str, int] = {}
    for fault in faults:
        if fault.action == "redis_kill":
            down[fault.site] = fault.node
        elif fault.action == "redis_restart":
            assert down.pop(fault.site) == fault.node
    assert "node 2" in next(f for f in kills if f.node == 2).describe()
    single = ChaosOptions(seed=3, duration_s=60.0, backend="redis", p_redis_kill=0.5)
    assert {f.node for f in plan_chaos(single).faults} == {0}
