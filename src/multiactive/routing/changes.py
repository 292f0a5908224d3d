"""Operator changes to the policy, pure: the new state, the record of the change and its
impact. `multiactive route` computes them from the policy a site holds and publishes them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from multiactive.errors import ConfigError
from multiactive.routing.messages import Change
from multiactive.routing.policy import (
    Impact,
    Policy,
    PolicyState,
    impact,
    set_site_state,
    set_unit_mode,
    shift,
)

KINDS = ("shift", "drain", "undrain", "down", "set-mode")


def apply_change(policy: Policy, kind: str, args: Mapping[str, Any]) -> PolicyState:
    """The state after one change (ConfigError naming what is wrong with it)."""
    if kind == "shift":
        return shift(
            policy, str(args["from"]), str(args["to"]), float(args["percent"]), args.get("region")
        )
    if kind in ("drain", "undrain", "down"):
        state = {"drain": "draining", "undrain": "active", "down": "down"}[kind]
        return set_site_state(policy, str(args["site"]), state)  # type: ignore[arg-type]
    if kind == "set-mode":
        return set_unit_mode(policy, str(args["unit"]), str(args["mode"]))
    raise ConfigError(f"unknown policy change {kind!r}; known: {', '.join(KINDS)}")


def touched(before: PolicyState, after: PolicyState) -> tuple[dict[str, Any], dict[str, Any]]:
    """The parts of the policy that differ, before and after (what the change record keeps)."""
    old: dict[str, Any] = {}
    new: dict[str, Any] = {}
    for name in ("assignments", "site_states", "unit_modes"):
        was, now = before.to_json()[name], after.to_json()[name]
        keys = sorted(k for k in set(was) | set(now) if was.get(k) != now.get(k))
        if keys:
            old[name] = {k: was.get(k) for k in keys}
            new[name] = {k: now.get(k) for k in keys}
    return old, new


def make_change(
    policy: Policy, kind: str, args: Mapping[str, Any], who: str, at_ms: int
) -> tuple[PolicyState, Change, Impact]:
    after = apply_change(policy, kind, args)
    old, new = touched(policy.state, after)
    change = Change(after.revision, kind, dict(args), who, at_ms, old, new)
    return after, change, impact(policy, policy.with_state(after))
