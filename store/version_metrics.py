"""Prometheus metrics of the store's versions, read at scrape time (the read API's
``/metrics``): which version is served, how old it is, how many items each published
version holds.

>>> from prometheus_client import CollectorRegistry, generate_latest
>>> registry = CollectorRegistry()
>>> _ = registry.register(VersionCollector(lambda: None))  # no store yet: empty families
>>> b"idproxy_store_active_version_age_seconds" in generate_latest(registry)
True
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from store.base import ProxyStoreProtocol

log = logging.getLogger(__name__)


class VersionCollector(Collector):
    """``store()`` -> the store to read (refreshed by the caller), or None."""

    def __init__(self, store: Callable[[], ProxyStoreProtocol | None]) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        active = GaugeMetricFamily(
            "idproxy_store_active_version_info", "1 for the version reads go to", labels=["version"]
        )
        age = GaugeMetricFamily(
            "idproxy_store_active_version_age_seconds",
            "seconds since the active version was first published",
        )
        items = GaugeMetricFamily(
            "idproxy_store_version_items", "items stored per published version", labels=["version"]
        )
        published = GaugeMetricFamily(
            "idproxy_store_published_versions", "published versions kept in the store"
        )
        store = self.store()
        if store is not None:
            try:
                infos = [i for i in store.versions() if i.status != "staged"]  # readable
                current = store.active_version()
            except Exception as exc:  # a scrape must not fail the API: report no samples
                log.warning("version metrics unavailable: %s", exc)
                infos, current = [], None
            for info in infos:
                items.add_metric([info.version], info.item_count)
                if info.version == current:
                    active.add_metric([info.version], 1)
                    if info.published_at is not None:
                        age.add_metric([], max(0.0, time.time() - info.published_at))
            published.add_metric([], len(infos))
        yield from (active, age, items, published)
