"""The live router: an HTTP reverse proxy in front of every site's application servers.

    multiactive router run --topology weibo.toml --site bj-unicom

For each request: the client address (the peer, or from `X-Forwarded-For` when the peer is a
trusted proxy), the routing key (the first of `key_from` present), the policy's decision
(region, unit, home site, stand-in when the home is out), the unit's access mode (read-only
refuses writes, none refuses everything), then one of the serving site's upstreams that is up,
round robin. The answer carries `site_header` naming the site that served it.

The router keeps the policy its own site holds (polling that site's `GET /routing`, so a
change published anywhere reaches it within a round trip and a poll), and checks every
upstream itself (`routing.health`): a site whose upstreams are all down is evacuated to the
stand-ins, and comes back when one of them is up again.

Paths under `/_router/` are the router's own: `status` (JSON) and `metrics` (Prometheus).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from multiactive.clock import SYSTEM_CLOCK, Clock
from multiactive.errors import ConfigError, ConnectionLost, ProtocolError
from multiactive.logs import get_logger
from multiactive.model.topology import Address
from multiactive.routing.config import KeySource, Network, RoutingConfig
from multiactive.routing.health import HealthChecker
from multiactive.routing.policy import Decision, Policy, PolicyState, state_problem
from multiactive.routing.upstream import UpstreamPool, UpstreamResponse

DEFAULT_POLICY_POLL_S = 0.5
UPSTREAM_TIMEOUT_S = 30.0
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
IDEMPOTENT_METHODS = SAFE_METHODS | {"PUT", "DELETE", "TRACE"}  # may be sent upstream again
HOP_BY_HOP = frozenset(
    h.lower()
    for h in ("Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE",
              "Trailers", "Transfer-Encoding", "Upgrade", "Content-Length", "Host")
)  # fmt: skip
# request headers not passed on as they came: hop-by-hop ones, and those the router rewrites
# (the body is read whole first, so an `Expect: 100-continue` is already answered)
NOT_FORWARDED = frozenset(
    h.encode() for h in (HOP_BY_HOP | {"x-forwarded-for", "expect"}) - {"host"}
)
MAX_BODY_BYTES = 64 * 1024 * 1024
HOME_HEADER = "X-Home-Site"
OWN_PREFIX = "/_router/"

log = get_logger("router")


def client_address(peer: str, forwarded_for: str | None, trusted: Iterable[Network]) -> str:
    """The client's address: the peer, unless the peer is a trusted proxy, in which case the
    right-most `X-Forwarded-For` entry that is not itself a trusted proxy."""
    nets = tuple(trusted)
    if not forwarded_for or not _trusted(peer, nets):
        return peer
    for entry in reversed([e.strip() for e in forwarded_for.split(",") if e.strip()]):
        if not _trusted(entry, nets):
            return entry
    return peer


def _trusted(address: str, nets: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip.version == n.version and ip in n for n in nets)


def routing_key(
    sources: Iterable[KeySource],
    headers: Mapping[str, str],
    query: Mapping[str, str],
) -> str | None:
    """The first routing key present: a header, a cookie or a query parameter."""
    for source in sources:
        if source.place == "header":
            value = headers.get(source.name)
        elif source.place == "query":
            value = query.get(source.name)
        else:
            value = _cookie(headers.get("Cookie", ""), source.name)
        if value:
            return value
    return None


def _cookie(text: str, name: str) -> str | None:
    if not text:
        return None
    jar: SimpleCookie = SimpleCookie()
    with contextlib.suppress(CookieError):
        jar.load(text)
    morsel = jar.get(name)
    return morsel.value if morsel is not None else None


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    reason: str
    text: str


def refusal(decision: Decision, method: str, config: RoutingConfig) -> Refusal | None:
    """Why a request may not be served, or None (pure)."""
    if decision.reason == "no-key":
        keys = ", ".join(str(k) for k in config.key_from)
        return Refusal(400, "no-key", f"no routing key ({keys}); routing.no_key = reject")
    if decision.reason == "all-down":
        return Refusal(
            503, "all-down",
            f"no site can serve region {decision.region} (home {decision.home} is out); "
            "routing.all_down = closed",
        )  # fmt: skip
    if decision.mode == "none":
        return Refusal(503, "unit-closed", f"unit {decision.unit} is closed (mode none)")
    if decision.mode == "read-only" and method not in SAFE_METHODS:
        return Refusal(
            403, "read-only",
            f"unit {decision.unit} is read-only: writes are refused; its home site is "
            f"{decision.home}",
        )  # fmt: skip
    return None


class PolicyFeed:
    """The policy the router's own site holds, polled from its admin API."""

    def __init__(
        self, config: RoutingConfig, admin: Address | None, clock: Clock,
        interval_s: float = DEFAULT_POLICY_POLL_S, token: str | None = None,
    ) -> None:  # fmt: skip
        self.policy = Policy(config)
        self.config = config
        self._admin = admin
        self._clock = clock
        self._interval_s = interval_s
        # an admin token, for a site whose [tls] has admin_read = "token"
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.fetches = 0
        self.failures = 0

    async def refresh(self, session: aiohttp.ClientSession) -> None:
        if self._admin is None:
            return
        try:
            url = f"http://{self._admin}/routing"
            async with session.get(url, headers=self._headers) as response:
                if response.status != 200:
                    raise ValueError(f"HTTP {response.status}")
                body = await response.json()
            state = PolicyState.from_json(body["policy"])
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
            self.failures += 1
            log.warning("policy_fetch_failed", admin=str(self._admin), error=str(exc))
            return
        self.fetches += 1
        problem = state_problem(self.config, state)
        if problem is not None:
            self.failures += 1
            log.warning("policy_does_not_fit", admin=str(self._admin), problem=problem)
            return
        if state != self.policy.state:
            log.info("policy_changed", revision=state.revision)
            self.policy = Policy(self.config, state)

    async def run(self, session: aiohttp.ClientSession) -> None:
        while True:
            await self.refresh(session)
            await self._clock.sleep(self._interval_s)


@dataclass(slots=True)
class RouterCounters:
    requests: dict[tuple[str, str, str, str], int] = field(default_factory=dict)
    refused: dict[tuple[str, str], int] = field(default_factory=dict)
    upstream_errors: dict[str, int] = field(default_factory=dict)

    def served(self, site: str, region: str, unit: str, reason: str) -> None:
        key = (site, region, unit, reason)
        self.requests[key] = self.requests.get(key, 0) + 1

    def refuse(self, region: str, reason: str) -> None:
        self.refused[(region, reason)] = self.refused.get((region, reason), 0) + 1

    def per_site(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for (site, _, _, _), n in self.requests.items():
            found[site] = found.get(site, 0) + n
        return found


class Router:
    def __init__(
        self,
        site: str,
        config: RoutingConfig,
        admin: Address | None,
        clock: Clock = SYSTEM_CLOCK,
        policy_poll_s: float = DEFAULT_POLICY_POLL_S,
        admin_token: str | None = None,
    ) -> None:
        self.site = site
        self.config = config
        self.feed = PolicyFeed(config, admin, clock, policy_poll_s, admin_token)
        self.health = HealthChecker(config.upstreams, config.health, self._probe, clock)
        self.counters = RouterCounters()
        self._clock = clock
        self._turn = itertools.count()
        self._session: aiohttp.ClientSession | None = None  # policy reads, health checks
        self._pool: UpstreamPool | None = None  # proxied requests
        self._runner: web.ServerRunner | None = None
        self.address: Address | None = None

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, listen: Address) -> None:
        """Open the upstream pool, read the policy once, check every upstream once, listen."""
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=UPSTREAM_TIMEOUT_S),
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=None),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )
        self._pool = UpstreamPool(UPSTREAM_TIMEOUT_S)
        await self.feed.refresh(self._session)
        await self.health.check_once()
        self._runner = web.ServerRunner(self.server())
        await self._runner.setup()
        site = web.TCPSite(self._runner, listen.host, listen.port)
        try:
            await site.start()
        except OSError as exc:
            await self.stop()
            raise ConfigError(
                f"the router of {self.site} cannot listen on {listen} "
                f"(routing.routers.{self.site} or --listen): {exc.strerror}"
            ) from exc
        self.address = listen
        log.info("router_started", site=self.site, listen=str(listen),
                 revision=self.feed.policy.revision)  # fmt: skip

    async def run(self, stop: asyncio.Event) -> None:
        """Health checks and policy polling until `stop` is set; then close. Call start()."""
        assert self._session is not None
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self.health.run()),
                    group.create_task(self.feed.run(self._session)),
                ]
                await stop.wait()
                for task in tasks:
                    task.cancel()
        finally:
            await self.stop()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    # -- requests -----------------------------------------------------------------------

    def server(self) -> web.Server:
        """aiohttp's low-level server (no URL dispatcher: one path test per request)."""
        return web.Server(self._handle, request_factory=_request_factory, access_log=None)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "GET" and request.path.startswith(OWN_PREFIX):
            if request.path == OWN_PREFIX + "status":
                return await self._status(request)
            if request.path == OWN_PREFIX + "metrics":
                return await self._metrics(request)
        return await self._proxy(request)

    def decide(self, request: web.BaseRequest) -> tuple[Decision, str]:
        config = self.config
        peer = request.remote or ""
        client = client_address(peer, request.headers.get("X-Forwarded-For"),
                                config.trusted_proxies)  # fmt: skip
        key = routing_key(config.key_from, request.headers, _LazyQuery(request))
        return self.feed.policy.route(client, key, self.health.unhealthy_sites()), client

    async def _proxy(self, request: web.BaseRequest) -> web.StreamResponse:
        decision, _client = self.decide(request)
        refused = refusal(decision, request.method, self.config)
        if refused is not None:
            self.counters.refuse(decision.region, refused.reason)
            headers = {HOME_HEADER: decision.home} if decision.home else {}
            return web.Response(status=refused.status, text=refused.text + "\n", headers=headers)
        assert decision.site is not None
        response = await self._forward(request, decision.site)
        if response.status != 502:
            self.counters.served(decision.site, decision.region, decision.unit, decision.reason)
        return response

    def _upstreams(self, site: str) -> Sequence[Address]:
        up = self.health.up_upstreams(site)
        return up or self.config.upstreams_of(site)  # all down: try them anyway

    async def _forward(self, request: web.BaseRequest, site: str) -> web.StreamResponse:
        upstreams = self._upstreams(site)
        if not upstreams:
            return web.Response(
                status=502, text=f"site {site} has no upstreams (routing.upstreams.{site})\n"
            )
        body = await request.read()
        start = next(self._turn)
        last_error = ""
        for attempt in range(min(2, len(upstreams))):
            address = upstreams[(start + attempt) % len(upstreams)]
            try:
                return await self._send(request, address, body, site)
            except (OSError, ConnectionLost, ProtocolError, TimeoutError) as exc:
                self.health.report(address, False)
                self.counters.upstream_errors[str(address)] = (
                    self.counters.upstream_errors.get(str(address), 0) + 1
                )
                last_error = f"{address}: {exc or type(exc).__name__}"
        return web.Response(status=502, text=f"site {site}: upstream failed: {last_error}\n",
                            headers={self.config.site_header: site})  # fmt: skip

    async def _send(
        self, request: web.BaseRequest, address: Address, body: bytes, site: str
    ) -> web.Response:
        assert self._pool is not None
        message = upstream_request(request, body)
        method = request.method
        answer = await self._pool.exchange(
            address, message, head_only=method == "HEAD", replayable=method in IDEMPOTENT_METHODS
        )
        return client_response(answer, self.config.site_header, site)

    async def _probe(self, address: Address) -> bool:
        if self._session is None:
            return False
        url = f"http://{address}{self.config.health.path}"
        try:
            async with self._session.get(url) as response:
                await response.read()
                return response.status < 500
        except aiohttp.ClientError:
            return False

    # -- introspection ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "revision": self.feed.policy.revision,
            "unhealthy_sites": sorted(self.health.unhealthy_sites()),
            "upstreams": [_status_json(s) for s in self.health.statuses()],
            "served": self.counters.per_site(),
            "refused": {f"{r}/{why}": n for (r, why), n in self.counters.refused.items()},
            # keep-alive to the upstreams: connections opened so far (not one per request)
            "upstream_connections_opened": self._pool.opened if self._pool else 0,
        }

    async def _status(self, request: web.BaseRequest) -> web.Response:
        return web.json_response(self.status())

    async def _metrics(self, request: web.BaseRequest) -> web.Response:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_RouterCollector(self))
        response = web.Response(body=generate_latest(registry))
        response.content_type = "text/plain"
        return response


def _status_json(status: Any) -> dict[str, Any]:
    return {"site": status.site, "address": status.address, "up": status.up,
            "failures": status.failures, "checks": status.checks}  # fmt: skip


def upstream_request(request: web.BaseRequest, body: bytes) -> bytes:
    """The HTTP/1.1 request sent upstream: the client's, less hop-by-hop headers, with the
    peer added to `X-Forwarded-For` and the body (read whole) given a Content-Length."""
    peer = request.remote or ""
    previous = request.headers.get("X-Forwarded-For")
    forwarded = f"{previous}, {peer}" if previous else peer
    parts = [f"{request.method} {request.raw_path} HTTP/1.1\r\n".encode()]
    has_host = False
    for name, value in request.raw_headers:
        lower = name.lower()
        if lower not in NOT_FORWARDED:
            parts += (name, b": ", value, b"\r\n")
            has_host = has_host or lower == b"host"
    if not has_host:
        parts.append(f"Host: {request.host}\r\n".encode())
    parts.append(f"X-Forwarded-For: {forwarded}\r\n".encode())
    if body or request.method not in SAFE_METHODS:
        parts.append(f"Content-Length: {len(body)}\r\n".encode())
    parts += (b"\r\n", body)
    return b"".join(parts)


def client_response(answer: UpstreamResponse, site_header: str, site: str) -> web.Response:
    """The answer to the client: the upstream's, less hop-by-hop headers, naming the site."""
    headers: CIMultiDict[str] = CIMultiDict(answer.headers)
    for name in HOP_BY_HOP.intersection(map(str.lower, headers)):
        del headers[name]
    headers[site_header] = site
    return web.Response(status=answer.status, body=answer.body, headers=headers)


def _request_factory(
    message: RawRequestMessage, payload: StreamReader, protocol: RequestHandler,
    writer: AbstractStreamWriter, task: asyncio.Task[None],
) -> web.BaseRequest:  # fmt: skip
    """aiohttp's request, allowed bodies up to MAX_BODY_BYTES (its default is 1 MiB)."""
    return web.BaseRequest(message, payload, protocol, writer, task, task.get_loop(),
                           client_max_size=MAX_BODY_BYTES)  # fmt: skip


class _LazyQuery(Mapping[str, str]):
    """A request's query parameters, parsed only when a `query:` key source is reached."""

    __slots__ = ("_request",)

    def __init__(self, request: web.BaseRequest) -> None:
        self._request = request

    def __getitem__(self, name: str) -> str:
        return self._request.query[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._request.query)

    def __len__(self) -> int:
        return len(self._request.query)


class _RouterCollector(Collector):
    def __init__(self, router: Router) -> None:
        self._router = router

    def collect(self) -> list[Metric]:
        router = self._router
        requests = CounterMetricFamily(
            "multiactive_router_requests", "Requests served, by serving site, region, unit and "
            "why that site (home, stand-in, fail-open).",
            labels=["router", "site", "region", "unit", "reason"],
        )  # fmt: skip
        for (site, region, unit, reason), n in router.counters.requests.items():
            requests.add_metric([router.site, site, region, unit, reason], n)
        refused = CounterMetricFamily(
            "multiactive_router_refused", "Requests refused, by region and reason.",
            labels=["router", "region", "reason"],
        )  # fmt: skip
        for (region, reason), n in router.counters.refused.items():
            refused.add_metric([router.site, region, reason], n)
        up = GaugeMetricFamily(
            "multiactive_router_upstream_up", "1 when the upstream passes its health checks.",
            labels=["router", "site", "upstream"],
        )  # fmt: skip
        for status in router.health.statuses():
            up.add_metric([router.site, status.site, status.address], 1.0 if status.up else 0.0)
        revision = GaugeMetricFamily(
            "multiactive_router_policy_revision", "The policy revision the router routes by.",
            labels=["router"],
        )  # fmt: skip
        revision.add_metric([router.site], router.feed.policy.revision)
        return [requests, refused, up, revision]
