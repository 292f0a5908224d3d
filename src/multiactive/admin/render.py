"""State and topology as JSON-ready dicts for the admin API (entries, members, snapshots)."""

from __future__ import annotations

import base64
from dataclasses import asdict
from typing import Any

from multiactive.model.topology import Topology
from multiactive.state.base import Entry, Member, Snapshot


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
