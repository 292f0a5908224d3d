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

from multiactive.admin.render import (
    entry_json,
    member_json,
    message_json,
    snapshot_json,
    statistics_json,
)
from multiactive.errors import ConfigError
from multiactive.model.message import StreamId

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
                web.get("/state/snapshot", self._snapshot),
                web.get("/state/counter/{key}", self._counter),
                web.get("/state/zset/{key}", self._zset),
                web.get("/journal/messages", self._messages),
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

    async def _snapshot(self, request: web.Request) -> web.Response:
        return web.json_response(snapshot_json(await self._node.state.snapshot()))

    async def _counter(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        return web.json_response({"key": key, "value": await self._node.state.counter(key)})

    async def _zset(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        members = await self._node.state.zset(key)
        return web.json_response({"key": key, "members": [member_json(m) for m in members]})

    async def _messages(self, request: web.Request) -> web.Response:
        origin = request.query.get("origin", "")
        if origin not in self._node.topology.site_names:
            raise web.HTTPBadRequest(text=f"origin must be one of {self._node.topology.site_names}")
        stream = StreamId(origin, _int(request, "partition", 0))
        start, limit = _int(request, "from_seq", 1), _int(request, "limit", 1000)
        found: list[dict[str, object]] = []
        while len(found) < limit:
            batches = await self._node.journal.read(stream, start, 1 << 20)
            if not batches:
                break
            for batch in batches:
                found += [message_json(m) for m in batch.messages() if m.seq >= start]
            start = batches[-1].last_seq + 1
        return web.json_response(found[:limit])

    async def _dead_letters(self, request: web.Request) -> web.Response:
        letters = await self._node.state.dead_letters(_limit(request, 1000))
        return web.json_response([asdict(d) for d in letters])


def _limit(request: web.Request, default: int) -> int:
    return _int(request, "limit", default)


def _int(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name, str(default))
    if not text.isdigit():
        raise web.HTTPBadRequest(text=f"{name} must be a whole number, got {text!r}")
    return int(text)
