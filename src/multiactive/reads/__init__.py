"""Reads: the site's cache for applications, cache-aside fills and position-gated reloads
(docs/reads.md)."""

from multiactive.db.reader import DbReader
from multiactive.reads.cache import Cache, Cached, CacheStatistics, Loaded, Loader, Loaders
from multiactive.reads.gate import CurrentGate, ManualGate, PositionGate
from multiactive.reads.site import ReadsSummary, open_cache

__all__ = [
    "Cache",
    "CacheStatistics",
    "Cached",
    "CurrentGate",
    "DbReader",
    "Loaded",
    "Loader",
    "Loaders",
    "ManualGate",
    "PositionGate",
    "ReadsSummary",
    "open_cache",
]
