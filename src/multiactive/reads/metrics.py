"""Prometheus metrics of an application's cache: its hits, misses, loads and fills.

Fills happen in the application's process, so the application exports them:

    from prometheus_client import REGISTRY
    REGISTRY.register(CacheCollector(cache, site="gz"))

The site process exports the reloads and the database's health itself (`/metrics`).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from multiactive.reads.cache import Cache

_COUNTERS = (  # (CacheStatistics field, metric name, help)
    ("hits", "cache_hits", "Reads the cache answered."),
    ("misses", "cache_misses", "Reads of keys the cache did not hold."),
    ("loads", "cache_loads", "Loader calls (single flight: at most one per key at once)."),
    ("fills", "cache_fills", "Loaded values written into the cache."),
    ("fills_lost", "cache_fills_lost", "Loaded values not written: the cache held newer."),
    ("unavailable", "cache_unavailable", "Misses that found the database not answering."),
    ("reloads_dropped", "reloads_dropped", "Fills not queued: the reload queue was full."),
)


class CacheCollector(Collector):
    """Renders `cache.statistics()` at scrape time (nothing is counted twice)."""

    def __init__(self, cache: Cache, site: str) -> None:
        self._cache, self._site = cache, site

    def collect(self) -> Iterator[Metric]:
        stats = self._cache.statistics()
        for field, name, doc in _COUNTERS:
            family = CounterMetricFamily(f"multiactive_{name}", doc, labels=["site"])
            family.add_metric([self._site], getattr(stats, field))
            yield family
