"""The admin API's records survive JSON both ways, and a shape that does not fit is named."""

from __future__ import annotations

import json

import pytest

from multiactive.errors import DecodeError
from multiactive.model.message import Message
from multiactive.model.topology import LinkConfig
from multiactive.records import (
    ClusterTrace,
    HeadsAnswer,
    IngressStatistics,
    MessageRecord,
    OriginTotals,
    PositionTrace,
    ProcessorSummary,
    ReconcileReport,
    RetryState,
    SiteStatus,
    StreamHeads,
    StreamStatus,
)
from multiactive.replication.links import LinkMonitor
from multiactive.state.base import DeadLetter
from multiactive.testing import FakeClock


def status() -> SiteStatus:
    monitor = LinkMonitor(LinkConfig("a", "b", "push"), "sender", clock=FakeClock())
    monitor.origin_heads.update({0: 5, 3: 2})
    return SiteStatus(
        "a", "demo", 12.5, {"a": OriginTotals(5, 5, 4, 4, 1, 0.25)},
        (StreamStatus("a", 0, 5, 5, 4, 1, 0.25, 5, 4),),
        IngressStatistics(10, 1, 0, 3, 0, 0), ProcessorSummary(4, 0, 0, 1.5, None),
        (monitor.snapshot(),), 2, None, {"b": {"age_s": 1.0, "travel_ms": 20.0}},
    )  # fmt: skip


def roundtrip(record: object) -> object:
    kind = type(record)
    return kind.from_json(json.loads(json.dumps(record.to_json())))  # type: ignore[attr-defined]


def test_a_site_status_survives_json_with_int_keyed_heads() -> None:
    original = status()
    again = roundtrip(original)
    assert again == original
    assert isinstance(again, SiteStatus)
    assert again.links[0].origin_heads == {0: 5, 3: 2}


@pytest.mark.parametrize(
    "record",
    [
        HeadsAnswer("a", (StreamHeads("a", 0, 3, 2),)),
        PositionTrace("b", True, 9, False, 8, DeadLetter("a", 0, 9, "x", "t", "k", "e", 5, 1),
                      RetryState(9, 2, 0.5, "boom"), "parked", None),
        ClusterTrace("x", True, "a", MessageRecord.of(Message("x", "a", 0, 1, "kv.set", "k", 7, 1,
                     b"\x00\xff")), {"a": None}),
        ReconcileReport("a", 1, 2.5, 8, 0, 0, (), 0, 0, 0, 0, ("p",)),
    ],
)  # fmt: skip
def test_every_record_survives_json(record: object) -> None:
    assert roundtrip(record) == record


def test_a_field_of_the_wrong_shape_is_named() -> None:
    data = status().to_json()
    data["streams"][0]["head"] = "five"
    with pytest.raises(DecodeError, match=r"streams\[0\]\.head: expected int"):
        SiteStatus.from_json(data)
    del data["site"]
    with pytest.raises(DecodeError, match="field 'site' is missing"):
        SiteStatus.from_json(data)


def test_a_message_record_keeps_binary_payloads() -> None:
    message = Message("id", "a", 1, 2, "kv.set", "k", 3, 4, b"\x00\x01\xfe", {"h": "v"})
    assert MessageRecord.from_json(MessageRecord.of(message).to_json()).to_message() == message
