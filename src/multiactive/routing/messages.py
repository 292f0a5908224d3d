"""Policy changes as replicated messages: the reserved built-in type `ma.route.policy`.

A change is published at one site like any write (journaled, then shipped on that site's links
to every other site, caught up after a cut like any message) with

    type     ma.route.policy
    key      ma:routing:policy
    payload  JSON {"policy": PolicyState, "change": Change}

Every site's processor applies it as two built-in operations on its own state, atomically with
the watermark (P3), so the policy lives in each site's state and converges like any register:

    kv.set   ma:routing:policy   the payload: the policy with the highest (version, origin) wins
    zset.add ma:routing:changes  the change record, for the history (its newest `zset_cap` shown)

Two changes made at the same moment at two sites are both recorded; the later one (by hybrid
clock) is the policy. Operators make changes from one place (`multiactive route`), which
refuses a change computed from an outdated revision (`base_revision`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from multiactive.errors import DecodeError
from multiactive.routing.policy import PolicyState
from multiactive.state.ops import KV_SET, ZSET_ADD

POLICY_TYPE = "ma.route.policy"
POLICY_KEY = "ma:routing:policy"
CHANGES_KEY = "ma:routing:changes"
CONTROL_TYPES = frozenset({POLICY_TYPE})

OpTuple = tuple[str, str, int, str, bytes]


@dataclass(frozen=True, slots=True)
class Change:
    """One policy change as recorded: who made it, when, what it did."""

    revision: int
    kind: str  # shift | drain | undrain | down | set-mode
    args: Mapping[str, Any]
    who: str
    at_ms: int
    before: Mapping[str, Any]  # the part of the policy the change touched, before
    after: Mapping[str, Any]  # and after
    site: str = ""  # where it was published

    def to_json(self) -> dict[str, Any]:
        return {
            "revision": self.revision, "kind": self.kind, "args": dict(self.args),
            "who": self.who, "at_ms": self.at_ms, "before": dict(self.before),
            "after": dict(self.after), "site": self.site,
        }  # fmt: skip

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Change:
        return cls(
            int(raw["revision"]), str(raw["kind"]), dict(raw["args"]), str(raw["who"]),
            int(raw["at_ms"]), dict(raw["before"]), dict(raw["after"]), str(raw.get("site", "")),
        )  # fmt: skip


def encode_change(state: PolicyState, change: Change) -> bytes:
    body = {"policy": state.to_json(), "change": change.to_json()}
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def decode_change(payload: bytes) -> tuple[PolicyState, Change]:
    try:
        body = json.loads(payload)
        return PolicyState.from_json(body["policy"]), Change.from_json(body["change"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DecodeError(f"{POLICY_TYPE} payload is not a policy change: {exc}") from exc


def builtin_ops(type_: str, version: int, origin: str, payload: bytes) -> list[OpTuple]:
    """The built-in operations a control message applies as (the processor calls this);
    none for a payload that does not decode, which the processor then parks as a dead letter."""
    if type_ != POLICY_TYPE:
        return []
    try:
        change = json.dumps(json.loads(payload)["change"], sort_keys=True).encode()
    except (ValueError, KeyError, TypeError):
        return []
    return [
        (KV_SET, POLICY_KEY, version, origin, payload),
        (ZSET_ADD, CHANGES_KEY, version, origin, change),
    ]
