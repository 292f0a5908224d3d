"""The admin HTTP API of one site (JSON), served with aiohttp.

GET /health             liveness: {"site", "status": "ok"}
GET /status             statistics of the whole site (heads, links, processor, ingress)
GET /state/digest       digest of the state and its entry count
GET /state/kv/{key}     one entry (tombstones included), 404 when never written
GET /state/entries      every entry (?limit=N, default 10000)
GET /deadletters        parked messages (?limit=N, default 1000)
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

from aiohttp import web

from multiactive.admin.render import entry_json, statistics_json
from multiactive.errors import ConfigError

if TYPE_CHECKING:
    from multiactive.site.node import SiteNode

NODE = web.AppKey("node", object)


class AdminServer:
    def __init__(self, node: SiteNode) -> None:
        self._node = node
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app[NODE] = self._node
        app.add_routes(
            [
                web.get("/health", self._health),
                web.get("/status", self._status),
                web.get("/state/digest", self._digest),
                web.get("/state/kv/{key}", self._kv),
                web.get("/state/entries", self._entries),
                web.get("/deadletters", self._dead_letters),
            ]
        )
        return app

    async def start(self) -> None:
        address = self._node.config.admin
        assert address is not None
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, address.host, address.port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(
                f"site {self._node.name} cannot serve its admin API on {address} "
                f"(sites[].admin in {self._node.topology.source}): {exc.strerror}"
            ) from exc

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"site": self._node.name, "status": "ok"})

    async def _status(self, request: web.Request) -> web.Response:
        stats = self._node.statistics()
        return web.json_response(statistics_json(stats, await self._node.lag()))

    async def _digest(self, request: web.Request) -> web.Response:
        entries = await self._node.state.entries()
        digest = await self._node.state.digest()
        return web.json_response(
            {"site": self._node.name, "digest": digest, "entries": len(entries)}
        )

    async def _kv(self, request: web.Request) -> web.Response:
        entry = await self._node.state.get(request.match_info["key"])
        if entry is None:
            raise web.HTTPNotFound(text=f"key {request.match_info['key']!r} was never written")
        return web.json_response(entry_json(entry))

    async def _entries(self, request: web.Request) -> web.Response:
        limit = _limit(request, 10_000)
        entries = await self._node.state.entries()
        return web.json_response([entry_json(e) for e in entries[:limit]])

    async def _dead_letters(self, request: web.Request) -> web.Response:
        letters = await self._node.state.dead_letters(_limit(request, 1000))
        return web.json_response([asdict(d) for d in letters])


def _limit(request: web.Request, default: int) -> int:
    text = request.query.get("limit", str(default))
    if not text.isdigit():
        raise web.HTTPBadRequest(text=f"limit must be a whole number, got {text!r}")
    return int(text)
