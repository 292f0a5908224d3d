"""Reads: the site's cache for applications, cache-aside fills and position-gated reloads."""

from multiactive.reads.cache import Cache, Cached, CacheStatistics, Loaded, Loader, ReloadSink
from multiactive.reads.gate import CurrentGate, ManualGate, PositionGate

__all__ = [
    "Cache",
    "CacheStatistics",
    "Cached",
    "CurrentGate",
    "Loaded",
    "Loader",
    "ManualGate",
    "PositionGate",
    "ReloadSink",
]
