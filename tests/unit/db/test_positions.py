"""The position gate's comparison: a replica has passed a mark when, in every GTID domain of
the mark, it has applied at least the mark's seq_no."""

from __future__ import annotations

from multiactive.db.positions import CURRENT_MARK, UNKNOWN_MARK, covers, mark_passed
from multiactive.db.replication import parse_gtids


def test_a_replica_covers_a_mark_only_when_every_domain_of_it_is_applied() -> None:
    assert covers(parse_gtids("0-1-10"), parse_gtids("0-1-10"))
    assert covers(parse_gtids("0-1-11"), parse_gtids("0-1-10"))
    assert not covers(parse_gtids("0-1-9"), parse_gtids("0-1-10"))
    assert not covers(parse_gtids("0-1-10"), parse_gtids("0-1-10,1-2-3"))
    assert covers(parse_gtids("0-1-10,1-2-3,2-5-1"), parse_gtids("0-1-10,1-2-3"))


def test_seq_numbers_of_a_domain_compare_across_servers_after_a_failover() -> None:
    # The new primary (server 3) continues domain 0's sequence from the old one's (server 1).
    assert covers(parse_gtids("0-3-12"), parse_gtids("0-1-11"))
    assert not covers(parse_gtids("0-1-11"), parse_gtids("0-3-12"))


def test_the_special_marks() -> None:
    nothing = parse_gtids("")
    assert mark_passed(nothing, CURRENT_MARK)  # the local copy is the writer's own
    assert not mark_passed(parse_gtids("0-1-999"), UNKNOWN_MARK)  # only the deadline reloads
    assert mark_passed(parse_gtids("0-1-5"), "0-1-5")
    assert not mark_passed(nothing, "0-1-5")
