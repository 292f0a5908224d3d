"""A site's routing endpoints (served by its admin API): the policy it holds, and publishing
a change into the mesh.

    GET  /routing          {"site", "policy": PolicyState, "changes": [Change, newest first]}
    POST /routing/change   {"policy", "change", "base_revision"}: journal a change as an
                           `ma.route.policy` message; 409 when the site's policy is no longer
                           at base_revision (someone else changed it: look again); answers once
                           the change is durable and applied here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from multiactive.errors import DecodeError
from multiactive.routing.config import RoutingConfig
from multiactive.routing.messages import (
    CHANGES_KEY,
    POLICY_KEY,
    POLICY_TYPE,
    Change,
    decode_change,
    encode_change,
)
from multiactive.routing.policy import PolicyState, initial_state, state_problem
from multiactive.state.base import StateBackend
from multiactive.wire.protocol import RESULT_OK

APPLY_TIMEOUT_S = 10.0
APPLY_POLL_S = 0.02

Submit = Callable[[Sequence[Any]], Awaitable[list[Any]]]  # internal drafts -> results


async def held_policy(config: RoutingConfig, state: StateBackend) -> PolicyState:
    """The policy this site's state holds (revision 0 from the topology until a change)."""
    entry = await state.get(POLICY_KEY)
    if entry is None or entry.value is None:
        return initial_state(config)
    try:
        held = decode_change(entry.value)[0]
    except DecodeError:
        return initial_state(config)
    return initial_state(config) if state_problem(config, held) else held


async def held_changes(state: StateBackend) -> list[Change]:
    changes = []
    for member in await state.zset(CHANGES_KEY):
        try:
            changes.append(Change.from_json(json.loads(member.member)))
        except (ValueError, KeyError, TypeError):
            continue
    return changes


class RoutingService:
    def __init__(
        self, site: str, config: RoutingConfig, state: StateBackend, submit: Submit
    ) -> None:
        self._site = site
        self._config = config
        self._state = state
        self._submit = submit

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/routing", self._show), web.post("/routing/change", self._change)]

    async def _show(self, request: web.Request) -> web.Response:
        policy = await held_policy(self._config, self._state)
        changes = await held_changes(self._state)
        return web.json_response(
            {
                "site": self._site,
                "policy": policy.to_json(),
                "changes": [c.to_json() for c in changes],
            }
        )

    async def _change(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            state = PolicyState.from_json(body["policy"])
            change = Change.from_json(body["change"])
            base = int(body["base_revision"])
        except (ValueError, KeyError, TypeError) as exc:
            raise web.HTTPBadRequest(text=f"not a policy change: {exc}") from exc
        problem = state_problem(self._config, state)
        if problem is not None:
            raise web.HTTPBadRequest(
                text=f"the policy does not fit {self._config.source}: {problem}"
            )
        held = await held_policy(self._config, self._state)
        if held.revision != base or state.revision != base + 1:
            raise web.HTTPConflict(
                text=f"site {self._site} holds policy revision {held.revision}, the change was "
                f"made from revision {base}: show the policy again and redo the change"
            )
        change = dataclasses.replace(change, site=self._site)
        payload = encode_change(state, change)
        results = await self._submit([["", POLICY_TYPE, POLICY_KEY, {}, payload]])
        if results[0][0] != RESULT_OK:
            raise web.HTTPBadRequest(text=f"the site refused the change: {results[0][2]}")
        await self._wait_applied(state.revision)
        return web.json_response({"site": self._site, "change": change.to_json()})

    async def _wait_applied(self, revision: int) -> None:
        deadline = time.monotonic() + APPLY_TIMEOUT_S
        while (await held_policy(self._config, self._state)).revision < revision:
            if time.monotonic() > deadline:
                raise web.HTTPGatewayTimeout(
                    text=f"the change is journaled but not applied here within {APPLY_TIMEOUT_S} s"
                )
            await asyncio.sleep(APPLY_POLL_S)
