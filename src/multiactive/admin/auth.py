"""Who may call the admin API: with `[tls]`, mutating endpoints need an admin token.

    Authorization: Bearer <token>      # a token listed under `admin` in the tokens file

Rules (`[tls]` in the topology; without it the API is open, as on a private network):
- a request that changes something (any method but GET/HEAD: replay, reconcile now, and
  the route and failover changes to come) needs an admin token: 401 without one, 403 with
  a wrong one;
- read-only endpoints are open unless `admin_read = "token"`;
- `/health` (liveness) is always open.

Refusals are logged with the method, path and caller's address, never with the token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from multiactive.logs import get_logger
from multiactive.security.tls import TlsMaterial

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
OPEN_PATHS = frozenset({"/health"})

log = get_logger("admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def needs_token(tls: TlsMaterial, request: web.Request) -> bool:
    if request.path in OPEN_PATHS:
        return False
    if request.method not in READ_METHODS:
        return True
    return tls.settings.admin_read == "token"


def guard(site: str, tls: TlsMaterial | None) -> Middleware:
    """An aiohttp middleware enforcing the rules above (a no-op without `[tls]`)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if tls is None or not needs_token(tls, request):
            return await handler(request)
        token = bearer(request)
        if token is None:
            _refused(site, request, "no_token")
            raise web.HTTPUnauthorized(
                text="this endpoint needs an admin token: Authorization: Bearer <token> "
                "(admin in the [tls] tokens file)",
                headers={"WWW-Authenticate": 'Bearer realm="multiactive"'},
            )
        if not tls.tokens.admin_ok(token):
            _refused(site, request, "bad_token")
            raise web.HTTPForbidden(text="the admin token is not one of this site's")
        return await handler(request)

    return middleware


def _refused(site: str, request: web.Request, reason: str) -> None:
    log.warning("admin_refused", site=site, method=request.method, path=request.path,
                remote=request.remote or "?", reason=reason)  # fmt: skip
