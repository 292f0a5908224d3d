"""Statistics records as JSON-ready dicts: one rendering for the admin API, the CLI and tests."""

from __future__ import annotations

import base64
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from multiactive.state.base import Entry

if TYPE_CHECKING:
    from multiactive.site.node import SiteStatistics


def entry_json(entry: Entry) -> dict[str, Any]:
    return {
        "key": entry.key,
        "value": None if entry.value is None else base64.b64encode(entry.value).decode(),
        "deleted": entry.deleted,
        "version": entry.version,
        "origin": entry.origin,
    }


def statistics_json(stats: SiteStatistics) -> dict[str, Any]:
    streams = []
    origins: dict[str, dict[str, int]] = {}
    for stream, progress in stats.processor.streams.items():
        head = stats.heads.get(stream, progress.head)
        streams.append(
            {
                "origin": stream.origin,
                "partition": stream.partition,
                "head": head,
                "applied": progress.applied,
                "applied_count": progress.count,
                "lag": head - progress.applied,
            }
        )
        totals = origins.setdefault(stream.origin, {"head": 0, "applied": 0, "applied_count": 0})
        totals["head"] += head
        totals["applied"] += progress.applied
        totals["applied_count"] += progress.count
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
