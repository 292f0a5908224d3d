"""The admin HTTP API of one site (JSON), served with aiohttp.

GET /health             liveness: {"site", "status": "ok", "pid"} while the process answers
GET /ready              readiness: {"site", "ready", "checks": {"journal", "state", "ingress"}}
                        each "ok" or what fails; HTTP 503 when not ready (a backend down)
Any endpoint answers 503 {"error"} while a backend it reads cannot be reached.
GET /status             statistics of the whole site (heads, links, processor, ingress)
GET /heads              per stream: journal head and applied watermark, from memory (cheap
                        enough to poll while the site is busy)
GET /state/digest       digest of the state and its entry count
GET /state/kv/{key}     one entry (tombstones included), 404 when never written
GET /state/entries      every entry (?limit=N, default 10000)
GET /deadletters        parked messages (?limit=N, default 1000)
POST /db/writer         {"writer", "epoch"}: journal the `ma.db.writer` control message here
                        (what `multiactive db switchover|failover` sends; docs/database.md)
POST /db/decisions      a `Decision` of `multiactive db watch`, kept in a bounded history
GET /db/decisions       that history, newest first (`DecisionHistory`; the newest also in /status)
GET /tls                this site's certificates, expiry warnings and TLS refusals
GET /history/links      this site's link ends over the last hour (?since_ms=), `LinkHistory`
GET /cluster/history    every link's history once (from its sender's site), `LinkHistory`
GET /cluster/sites/{site}/{path}  one site's deadletters, trace/position, reconcile or status,
                        read through this site (the dashboard's details panel)

Every endpoint with its answer record: docs/admin-api.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST

from multiactive.admin.auth import guard
from multiactive.admin.history import LinkHistoryRing, merge_histories, start_sampler
from multiactive.admin.metrics import Scrape, render_metrics
from multiactive.admin.render import entry_json, member_json, snapshot_json, topology_json
from multiactive.clock import SYSTEM_CLOCK, Clock
from multiactive.db.control import WRITER_KEY, WRITER_TYPE, decode_writer
from multiactive.db.decisions import STATUS_DECISIONS, Decision, DecisionHistory, DecisionLog
from multiactive.errors import ConfigError, DecodeError, MultiactiveError, StoreError
from multiactive.journal.base import Journal
from multiactive.model.message import Position, StreamId
from multiactive.model.topology import Address, Topology
from multiactive.reads.site import ReadsSummary, SiteReads
from multiactive.records import (
    HeadsAnswer,
    LinkHistory,
    LinkStatistics,
    MessageRecord,
    SiteStatus,
    StreamHeads,
    TraceAnswer,
    link_views,
)
from multiactive.replication.inspector import DEAD_LETTER_COUNT_LIMIT, SiteInspector
from multiactive.replication.processor import ProcessorView
from multiactive.replication.reconciler import Reconciler
from multiactive.routing.service import RoutingService
from multiactive.security.tls import TlsMaterial
from multiactive.state.base import StateBackend

PEER_TIMEOUT_S = 2.0
READY_TIMEOUT_S = 2.0
# What the dashboard's details panel may read from any site through this one.
PEER_DETAILS = ("deadletters", "trace/position", "reconcile", "status")
Control = Callable[[str, str, bytes], Awaitable[None]]


class AdminServer:
    """One site's admin API, over the parts of the site it reads and drives."""

    def __init__(
        self,
        site: str,
        topology: Topology,
        journal: Journal,
        state: StateBackend,
        processor: ProcessorView,
        reconciler: Reconciler,
        inspector: SiteInspector,
        control: Control | None = None,
        tls: TlsMaterial | None = None,
        routing: RoutingService | None = None,
        clock: Clock = SYSTEM_CLOCK,
        history: LinkHistoryRing | None = None,
        reads: SiteReads | None = None,
    ) -> None:
        """`control`: journals a control message (type, key, payload) at this site.
        `history`: the ring of link samples (an hour, every 5 s, when not given).
        `reads`: the site's reloads and database probe, when it has them."""
        self._site = site
        self._tls = tls
        self._topology = topology
        self._journal = journal
        self._state = state
        self._processor = processor
        self._reconciler = reconciler
        self._inspector = inspector
        self._control = control
        self._routing = routing
        self._reads = reads
        self._clock = clock
        self.history = history or LinkHistoryRing()
        self._sampler: asyncio.Task[None] | None = None
        self.decisions = DecisionLog()
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[guard(self._site, self._tls), _store_unavailable])
        app.add_routes(
            [
                web.get("/", self._to_dashboard),
                web.get("/dashboard", self._dashboard),
                web.get("/cluster/status", self._cluster_status),
                web.get("/cluster/history", self._cluster_history),
                web.get("/cluster/sites/{site}/{path:.+}", self._site_details),
                web.get("/history/links", self._link_history),
                web.get("/topology", self._topology_json),
                web.get("/health", self._health),
                web.get("/ready", self._ready),
                web.get("/tls", self._tls_status),
                web.get("/status", self._status),
                web.get("/heads", self._heads),
                web.get("/metrics", self._metrics),
                web.get("/state/digest", self._digest),
                web.get("/state/kv/{key}", self._kv),
                web.get("/state/entries", self._entries),
                web.get("/state/snapshot", self._snapshot),
                web.get("/state/counter/{key}", self._counter),
                web.get("/state/zset/{key}", self._zset),
                web.get("/journal/messages", self._messages),
                web.get("/deadletters", self._dead_letters),
                web.post("/deadletters/replay", self._replay),
                web.get("/journal/batches", self._batches),
                web.get("/reconcile", self._last_reconcile),
                web.post("/reconcile", self._reconcile_now),
                web.get("/trace/position", self._trace_position),
                web.get("/trace/{id}", self._trace),
                web.post("/db/writer", self._db_writer),
                web.post("/db/decisions", self._add_decision),
                web.get("/db/decisions", self._decisions),
            ]
        )
        if self._routing is not None:
            app.add_routes(self._routing.routes())
        return app

    async def start(self) -> None:
        address = self._topology.site(self._site).admin
        assert address is not None
        self._sampler = start_sampler(self.history, self._clock, self._look_at_links)
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, address.host, address.port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(
                f"site {self._site} cannot serve its admin API on {address} "
                f"(sites[].admin in {self._topology.source}): {exc.strerror}"
            ) from exc

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()

    async def _to_dashboard(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/dashboard")

    async def _dashboard(self, request: web.Request) -> web.Response:
        page = resources.files("multiactive.admin").joinpath("dashboard.html").read_text()
        return web.Response(text=page, content_type="text/html")

    async def _topology_json(self, request: web.Request) -> web.Response:
        return web.json_response(topology_json(self._topology))

    async def _cluster_status(self, request: web.Request) -> web.Response:
        topology = self._topology
        sites: dict[str, Any] = {}
        for site in topology.sites:
            if site.name == self._site:
                sites[site.name] = await self._site_status()
            else:
                sites[site.name] = await self._peer_status(site.admin)
        return web.json_response(
            {
                "cluster": topology.name,
                "site_names": list(topology.site_names),
                "links": [
                    {"name": x.name, "origin": x.origin, "receiver": x.receiver, "mode": x.mode}
                    for x in topology.links
                ],
                "link_views": [view.to_json() for view in _link_views(topology, sites)],
                "sites": sites,
                "tls_warnings": [] if self._tls is None else self._tls.warnings(),
            }
        )

    async def _peer_status(self, address: Address | None) -> Any:
        """A peer's /status JSON, or None when it does not answer (in time)."""
        return await self._peer_get(address, "status")

    async def _peer_get(self, address: Address | None, path: str) -> Any:
        """A peer's answer to `GET /{path}` as JSON, or None when it does not answer (in
        time) or answers an error."""
        if address is None:
            return None
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PEER_TIMEOUT_S))
        try:
            tokens = () if self._tls is None else self._tls.tokens.admin
            headers = {"Authorization": f"Bearer {tokens[0]}"} if tokens else {}
            async with self._http.get(f"http://{address}/{path}", headers=headers) as response:
                return await response.json() if response.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def _look_at_links(self) -> tuple[LinkStatistics, ...]:
        await self._inspector.refresh_senders()
        return self._inspector.statistics().links

    async def _link_history(self, request: web.Request) -> web.Response:
        since = _int(request, "since_ms", 0)
        return web.json_response(self.history.answer(self._site, since).to_json())

    async def _cluster_history(self, request: web.Request) -> web.Response:
        """Every link's samples once: from its sender's site when that answers."""
        since = _int(request, "since_ms", 0)
        answers: dict[str, LinkHistory | None] = {}
        for site in self._topology.sites:
            if site.name == self._site:
                answers[site.name] = self.history.answer(self._site, since)
                continue
            found = await self._peer_get(site.admin, f"history/links?since_ms={since}")
            answers[site.name] = None if found is None else LinkHistory.from_json(found)
        ring = self.history
        merged = merge_histories(
            self._site, self._topology.links, answers, ring.interval_s, ring.window_s
        )
        return web.json_response(merged.to_json())

    async def _site_details(self, request: web.Request) -> web.Response:
        """One site's dead letters, a position's trace, its last reconcile or its status, for
        the dashboard's details panel (which talks to this site only)."""
        name, path = request.match_info["site"], request.match_info["path"]
        if name not in self._topology.site_names:
            raise web.HTTPNotFound(text=f"no site {name!r} in {self._topology.source}")
        if path not in PEER_DETAILS:
            raise web.HTTPNotFound(text=f"{path!r} is not one of {', '.join(PEER_DETAILS)}")
        query = request.query_string
        found = await self._peer_get(
            self._topology.site(name).admin, path + (f"?{query}" if query else "")
        )
        if found is None:
            raise web.HTTPBadGateway(text=f"site {name} did not answer GET /{path}")
        return web.json_response(found)

    async def _site_status(self) -> dict[str, Any]:
        status = await self._inspector.status(self._reconciler.last)
        decisions = self.decisions.newest(STATUS_DECISIONS)
        return dataclasses.replace(
            status, db_decisions=decisions, reads=self._reads_summary()
        ).to_json()

    def _reads_summary(self) -> ReadsSummary | None:
        return None if self._reads is None else self._reads.summary()

    async def _add_decision(self, request: web.Request) -> web.Response:
        """A failover decision of a watcher (`multiactive db watch` posts each one here)."""
        try:
            decision = Decision.from_json(await request.json())
        except (ValueError, DecodeError) as exc:
            raise web.HTTPBadRequest(text=f"a Decision record is expected: {exc}") from exc
        self.decisions.add(decision)
        return web.json_response({"kept": len(self.decisions.newest())})

    async def _decisions(self, request: web.Request) -> web.Response:
        answer = DecisionHistory(self._site, self.decisions.newest(_limit(request, 200)))
        return web.json_response(answer.to_json())

    async def _tls_status(self, request: web.Request) -> web.Response:
        """This site's certificates (subject, SANs, expiry) and refused connections."""
        tls = self._tls
        if tls is None:
            return web.json_response({"site": self._site, "tls": False})
        return web.json_response({
            "site": self._site, "tls": True,
            "certificates": {name: c.to_json() for name, c in tls.certificates.items()},
            "warnings": tls.warnings(), "reloads": tls.reloads,
            "refused": [{"side": side, "reason": reason, "count": count}
                        for (side, reason), count in sorted(tls.refusals.items())],
        })  # fmt: skip

    async def _health(self, request: web.Request) -> web.Response:
        """Liveness: the process answers (a supervisor restarts it when this stops)."""
        return web.json_response({"site": self._site, "status": "ok", "pid": os.getpid()})

    async def _ready(self, request: web.Request) -> web.Response:
        """Readiness: the journal and the state answer now and ingress takes writes; 503
        naming what fails otherwise (a router sends this site no writes then)."""
        checks = {
            "journal": await _probe(self._journal.check()),
            "state": await _probe(self._state.watermarks()),
            "ingress": self._inspector.statistics().ingress.unavailable or "ok",
        }
        ready = all(value == "ok" for value in checks.values())
        body = {"site": self._site, "ready": ready, "checks": checks}
        return web.json_response(body, status=200 if ready else 503)

    async def _heads(self, request: web.Request) -> web.Response:
        applied = self._processor.applied
        streams = tuple(
            StreamHeads(s.origin, s.partition, head, applied(s))
            for s, head in sorted(self._journal.heads().items())
        )
        return web.json_response(HeadsAnswer(self._site, streams).to_json())

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(await self._site_status())

    async def _metrics(self, request: web.Request) -> web.Response:
        dead = await self._state.dead_letters(limit=1_000_000)
        report = self._reconciler.last
        figures = {} if report is None else report.figures()
        inspector = self._inspector
        await inspector.refresh_senders()
        scrape = Scrape(
            inspector.statistics(), await inspector.lag(), len(dead), figures,
            reads=self._reads_summary(),
        )  # fmt: skip
        scrape.canaries.update(self._processor.canaries())
        if self._tls is not None:
            scrape.tls_refusals.update(self._tls.refusals)
            scrape.tls_expiry_s.update(self._tls.expiries())
        response = web.Response(body=render_metrics(scrape))
        response.content_type = "text/plain"
        response.charset = "utf-8"
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def _digest(self, request: web.Request) -> web.Response:
        entries = await self._state.entries()
        digest = await self._state.digest()
        return web.json_response({"site": self._site, "digest": digest, "entries": len(entries)})

    async def _kv(self, request: web.Request) -> web.Response:
        entry = await self._state.get(request.match_info["key"])
        if entry is None:
            raise web.HTTPNotFound(text=f"key {request.match_info['key']!r} was never written")
        return web.json_response(entry_json(entry))

    async def _entries(self, request: web.Request) -> web.Response:
        limit = _limit(request, 10_000)
        entries = await self._state.entries()
        return web.json_response([entry_json(e) for e in entries[:limit]])

    async def _snapshot(self, request: web.Request) -> web.Response:
        return web.json_response(snapshot_json(await self._state.snapshot()))

    async def _counter(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        return web.json_response({"key": key, "value": await self._state.counter(key)})

    async def _zset(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        members = await self._state.zset(key)
        return web.json_response({"key": key, "members": [member_json(m) for m in members]})

    async def _messages(self, request: web.Request) -> web.Response:
        origin = request.query.get("origin", "")
        if origin not in self._topology.site_names:
            raise web.HTTPBadRequest(text=f"origin must be one of {self._topology.site_names}")
        stream = StreamId(origin, _int(request, "partition", 0))
        start, limit = _int(request, "from_seq", 1), _int(request, "limit", 1000)
        found: list[dict[str, object]] = []
        while len(found) < limit:
            batches = await self._journal.read(stream, start, 1 << 20)
            if not batches:
                break
            for batch in batches:
                found += [MessageRecord.of(m).to_json() for m in batch.messages() if m.seq >= start]
            start = batches[-1].last_seq + 1
        return web.json_response(found[:limit])

    async def _batches(self, request: web.Request) -> web.Response:
        origin = request.query.get("origin", "")
        if origin not in self._topology.site_names:
            raise web.HTTPBadRequest(text=f"origin must be one of {self._topology.site_names}")
        stream = StreamId(origin, _int(request, "partition", 0))
        start, last = _int(request, "from_seq", 1), _int(request, "to_seq", 0)
        chunks: list[bytes] = []
        while start <= last:
            batches = await self._journal.read(stream, start, 4 << 20)
            batches = [b for b in batches if b.first_seq <= last]
            if not batches:
                break
            chunks += [bytes(b.data) for b in batches]
            start = batches[-1].last_seq + 1
        return web.Response(body=b"".join(chunks), content_type="application/octet-stream")

    async def _last_reconcile(self, request: web.Request) -> web.Response:
        report = self._reconciler.last
        return web.json_response(None if report is None else report.to_json())

    async def _reconcile_now(self, request: web.Request) -> web.Response:
        report = await self._reconciler.reconcile()
        return web.json_response(report.to_json())

    async def _replay(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="body must be a JSON object")
        ids = set(body.get("ids") or [])
        kind = body.get("type")
        since, until = body.get("since_ms", 0), body.get("until_ms", 2**62)
        letters = [
            d
            for d in await self._state.dead_letters(limit=DEAD_LETTER_COUNT_LIMIT)
            if (not ids or d.id in ids)
            and (kind is None or d.type == kind)
            and since <= d.parked_ms <= until
        ]
        result = await self._reconciler.replay(letters)
        return web.json_response(result.to_json())

    async def _db_writer(self, request: web.Request) -> web.Response:
        if self._control is None:
            raise web.HTTPNotFound(text="this site takes no control messages")
        try:
            role = decode_writer(await request.read())
        except DecodeError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from exc
        if role.writer not in self._topology.site_names:
            raise web.HTTPBadRequest(text=f"writer {role.writer!r} is not a site")
        await self._control(WRITER_TYPE, WRITER_KEY, role.encode())
        return web.json_response({"writer": role.writer, "epoch": role.epoch})

    async def _trace(self, request: web.Request) -> web.Response:
        request_id = request.match_info["id"]
        found = await self._journal.lookup([request_id])
        if request_id not in found:
            return web.json_response(TraceAnswer(self._site, request_id, False).to_json())
        position = found[request_id]
        message = await self._journal.find_message(position)
        answer = TraceAnswer(
            self._site, request_id, True, (position.origin, position.partition, position.seq),
            None if message is None else MessageRecord.of(message),
            await self._inspector.trace_position(position),
        )  # fmt: skip
        return web.json_response(answer.to_json())

    async def _trace_position(self, request: web.Request) -> web.Response:
        origin = request.query.get("origin", "")
        if origin not in self._topology.site_names:
            raise web.HTTPBadRequest(text=f"origin must be one of {self._topology.site_names}")
        position = Position(origin, _int(request, "partition", 0), _int(request, "seq", 1))
        trace = await self._inspector.trace_position(position)
        return web.json_response(trace.to_json())

    async def _dead_letters(self, request: web.Request) -> web.Response:
        letters = await self._state.dead_letters(_limit(request, 1000))
        return web.json_response([d.to_json() for d in letters])


@web.middleware
async def _store_unavailable(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A backend that cannot answer (a Redis server restarting) is a 503 naming it, not a 500
    with a traceback in the log."""
    try:
        return await handler(request)
    except StoreError as exc:
        return web.json_response({"error": str(exc)}, status=503)


async def _probe(check: Awaitable[object]) -> str:
    """ "ok", or why a backend check failed or did not answer within READY_TIMEOUT_S."""
    try:
        await asyncio.wait_for(check, READY_TIMEOUT_S)
    except TimeoutError:
        return f"no answer within {READY_TIMEOUT_S:g} s"
    except MultiactiveError as exc:
        return str(exc)
    return "ok"


def _limit(request: web.Request, default: int) -> int:
    return _int(request, "limit", default)


def _int(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name, str(default))
    if not text.isdigit():
        raise web.HTTPBadRequest(text=f"{name} must be a whole number, got {text!r}")
    return int(text)


def _link_views(topology: Topology, sites: dict[str, Any]) -> list[Any]:
    """The links as the dashboard shows them: both ends merged by `records.link_views`."""
    ends = [
        link
        for answer in sites.values()
        if answer is not None
        for link in SiteStatus.from_json(answer).links
    ]
    return link_views(topology.links, ends)
