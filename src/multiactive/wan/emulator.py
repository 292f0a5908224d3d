"""The WAN emulator process: several emulated links and an HTTP control endpoint.

    multiactive wan run --control 127.0.0.1:9900 \\
        --link "gz-to-bj=127.0.0.1:9001>127.0.0.1:7101,delay_ms=20,jitter_ms=1"

Control endpoint (JSON):

    GET  /links                  every link's statistics
    POST /links/{name}/cut       body {"mode": "reset" | "blackhole"} (default reset)
    POST /links/{name}/heal
    POST /links/{name}/shape     body {"delay_ms": .., "jitter_ms": .., "bandwidth_mbps": ..}
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web

from multiactive.errors import ConfigError
from multiactive.model.topology import Address, parse_address
from multiactive.wan.proxy import CutMode, WanLink
from multiactive.wan.shape import LinkShape

_SHAPE_KEYS = {"delay_ms", "jitter_ms", "bandwidth_mbps", "mbps"}


@dataclass(frozen=True, slots=True)
class LinkSpec:
    name: str
    listen: Address
    target: Address
    shape: LinkShape

    def __str__(self) -> str:
        s = self.shape
        return (
            f"{self.name}={self.listen}>{self.target},delay_ms={s.delay_ms},"
            f"jitter_ms={s.jitter_ms},bandwidth_mbps={s.bandwidth_mbps}"
        )


def parse_link_spec(text: str) -> LinkSpec:
    """`NAME=LISTEN>TARGET[,delay_ms=N][,jitter_ms=N][,bandwidth_mbps=N]`."""
    where = f"--link {text!r}"
    name, sep, rest = text.partition("=")
    ends, *options = rest.split(",")
    listen, arrow, target = ends.partition(">")
    if not sep or not name or not arrow:
        raise ConfigError(f"{where}: expected NAME=LISTEN>TARGET[,delay_ms=N,...]")
    values: dict[str, float] = {}
    for option in options:
        key, eq, value = option.partition("=")
        if key not in _SHAPE_KEYS or not eq:
            raise ConfigError(f"{where}: unknown option {option!r}; known: {sorted(_SHAPE_KEYS)}")
        try:
            values["bandwidth_mbps" if key == "mbps" else key] = float(value)
        except ValueError:
            raise ConfigError(f"{where}: {key} must be a number, got {value!r}") from None
    return LinkSpec(
        name,
        parse_address(listen, f"{where} listen"),
        parse_address(target, f"{where} target"),
        LinkShape(**values),
    )


class WanEmulator:
    def __init__(self, specs: list[LinkSpec], control: Address | None) -> None:
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ConfigError(f"link names must be unique, got {names}")
        self.links = {s.name: WanLink(s.name, s.listen, s.target, s.shape) for s in specs}
        self._control = control
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        for link in self.links.values():
            try:
                await link.start()
            except OSError as exc:
                raise ConfigError(
                    f"link {link.name} cannot listen on {link.listen}: {exc}"
                ) from exc
        if self._control is not None:
            self._runner = web.AppRunner(self.app(), access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, self._control.host, self._control.port).start()

    async def stop(self) -> None:
        for link in self.links.values():
            await link.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes(
            [
                web.get("/links", self._list),
                web.post("/links/{name}/cut", self._cut),
                web.post("/links/{name}/heal", self._heal),
                web.post("/links/{name}/shape", self._shape),
            ]
        )
        return app

    def _link(self, request: web.Request) -> WanLink:
        name = request.match_info["name"]
        if name not in self.links:
            raise web.HTTPNotFound(text=f"no link {name!r}; links: {', '.join(self.links)}")
        return self.links[name]

    async def _list(self, request: web.Request) -> web.Response:
        return web.json_response([asdict(link.statistics()) for link in self.links.values()])

    async def _cut(self, request: web.Request) -> web.Response:
        link = self._link(request)
        body = await _json(request)
        mode = body.get("mode", "reset")
        if mode not in ("reset", "blackhole"):
            raise web.HTTPBadRequest(text=f'mode must be "reset" or "blackhole", got {mode!r}')
        await link.cut(_mode(mode))
        return web.json_response(asdict(link.statistics()))

    async def _heal(self, request: web.Request) -> web.Response:
        link = self._link(request)
        await link.heal()
        return web.json_response(asdict(link.statistics()))

    async def _shape(self, request: web.Request) -> web.Response:
        link = self._link(request)
        body = await _json(request)
        unknown = set(body) - _SHAPE_KEYS
        if unknown:
            raise web.HTTPBadRequest(text=f"unknown shape keys {sorted(unknown)}")
        current = asdict(link.shape)
        current.update({k: float(v) for k, v in body.items()})
        try:
            link.reshape(LinkShape(**current))
        except ConfigError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from exc
        return web.json_response(asdict(link.statistics()))


def _mode(mode: str) -> CutMode:
    return "blackhole" if mode == "blackhole" else "reset"


async def _json(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return body


async def run_emulator(emulator: WanEmulator, stop: asyncio.Event) -> None:
    await emulator.start()
    try:
        await stop.wait()
    finally:
        await emulator.stop()
