"""Statistics records as JSON-ready dicts: one rendering for the admin API, the CLI and tests."""

from __future__ import annotations

import base64
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from multiactive.model.message import Message, StreamId
from multiactive.model.topology import Topology
from multiactive.state.base import Entry, Member, Snapshot

if TYPE_CHECKING:
    from multiactive.site.node import SiteStatistics, StreamLag


def entry_json(entry: Entry) -> dict[str, Any]:
    return {
        "key": entry.key,
        "value": None if entry.value is None else base64.b64encode(entry.value).decode(),
        "deleted": entry.deleted,
        "version": entry.version,
        "origin": entry.origin,
    }


def topology_json(topology: Topology) -> dict[str, Any]:
    return {
        "name": topology.name,
        "partitions": topology.partitions,
        "sites": [
            {
                "name": site.name,
                "listen": str(site.listen),
                "admin": None if site.admin is None else str(site.admin),
                "journal": site.journal,
                "state": site.state,
            }
            for site in topology.sites
        ],
        "links": [
            {
                "name": link.name,
                "origin": link.origin,
                "receiver": link.receiver,
                "mode": link.mode,
                "address": None if link.address is None else str(link.address),
            }
            for link in topology.links
        ],
        "limits": asdict(topology.limits),
        "replication": asdict(topology.replication),
        "audit": {"store": topology.audit.store},
    }


def member_json(member: Member) -> dict[str, Any]:
    return {
        "member": base64.b64encode(member.member).decode(),
        "version": member.version,
        "origin": member.origin,
        "present": member.present,
    }


def snapshot_json(snapshot: Snapshot) -> dict[str, Any]:
    return {
        "entries": [entry_json(e) for e in snapshot.entries],
        "counters": dict(snapshot.counters),
        "zsets": {key: [member_json(m) for m in members] for key, members in snapshot.zsets},
    }


def message_json(message: Message) -> dict[str, Any]:
    return {
        "id": message.id,
        "origin": message.origin,
        "partition": message.partition,
        "seq": message.seq,
        "type": message.type,
        "key": message.key,
        "version": message.version,
        "created_ms": message.created_ms,
        "headers": message.headers,
        "payload": base64.b64encode(message.payload).decode(),
    }


def statistics_json(stats: SiteStatistics, lags: list[StreamLag]) -> dict[str, Any]:
    progress = stats.processor.streams
    streams = []
    origins: dict[str, dict[str, Any]] = {}
    for lag in lags:
        count = progress[_stream(lag)].count if _stream(lag) in progress else 0
        stream = asdict(lag)
        stream.update(head=lag.received, applied_count=count)
        streams.append(stream)
        totals = origins.setdefault(
            lag.origin,
            {"origin_head": 0, "head": 0, "applied": 0, "applied_count": 0, "lag_messages": 0,
             "lag_s": 0.0},
        )  # fmt: skip
        totals["origin_head"] += lag.origin_head
        totals["head"] += lag.received
        totals["applied"] += lag.applied
        totals["applied_count"] += count
        totals["lag_messages"] += lag.lag_messages
        if totals["lag_s"] is not None:
            totals["lag_s"] = None if lag.lag_s is None else max(totals["lag_s"], lag.lag_s)
    processor = asdict(stats.processor)
    processor.pop("streams")
    return {
        "site": stats.site,
        "cluster": stats.cluster,
        "uptime_s": round(stats.uptime_s, 3),
        "origins": origins,
        "streams": streams,
        "ingress": asdict(stats.ingress),
        "processor": processor,
        "links": [asdict(link) for link in stats.links],
    }


def _stream(lag: StreamLag) -> StreamId:
    return StreamId(lag.origin, lag.partition)
