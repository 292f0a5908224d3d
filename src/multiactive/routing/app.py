"""A small built-in application server, one per site: what the router's tests and the demo
put behind it. Every path answers JSON naming the site and upstream that served it, the
client address it saw and the request's routing key header; `/health` answers 200."""

from __future__ import annotations

from aiohttp import web

from multiactive.model.topology import Address


class SiteApp:
    def __init__(self, site: str, address: Address) -> None:
        self.site = site
        self.address = address
        self.requests = 0
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes([web.get("/health", self._health), web.route("*", "/{tail:.*}", self._any)])
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.address.host, self.address.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"site": self.site, "status": "ok"})

    async def _any(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.read()
        return web.json_response(
            {
                "site": self.site,
                "upstream": str(self.address),
                "method": request.method,
                "path": request.path_qs,
                "forwarded_for": request.headers.get("X-Forwarded-For", ""),
                "user": request.headers.get("X-User-Id", ""),
                "bytes": len(body),
            }
        )
