"""The proxy worker's Prometheus metrics (``idproxy worker --metrics-port``): items,
dead letters, batch latency, consumer lag, and freshness (an upload's Kafka timestamp to
its proxy flushed and committed, seconds)."""

from __future__ import annotations

import time

FRESHNESS_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)


class WorkerMetrics:
    """Prometheus metrics on host:port (off when port is 0); ``address`` is the bound one."""

    def __init__(self, port: int, host: str) -> None:
        self.enabled = port > 0
        if not self.enabled:
            return
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        from idproxy.prometheus import serve_metrics

        self.registry = CollectorRegistry()
        self.items = Counter("idproxy_worker_items", "items proxied", registry=self.registry)
        self.dlq = Gauge("idproxy_worker_dead_letters", "dead letters sent", registry=self.registry)
        self.latency = Histogram(
            "idproxy_worker_batch_seconds", "batch latency", registry=self.registry
        )
        self.lag = Gauge(
            "idproxy_worker_lag", "high watermark - committed offset", registry=self.registry
        )
        self.freshness = Histogram(
            "idproxy_worker_freshness_seconds",
            "upload record's Kafka timestamp -> its proxy flushed and committed",
            buckets=FRESHNESS_BUCKETS_S,
            registry=self.registry,
        )
        self.address = serve_metrics(self.registry, port, host)

    def observe(self, consumer, dead_letters: int, messages: list, seconds: float) -> None:
        """After a batch's proxies are flushed and its offsets committed."""
        if not self.enabled:
            return
        now_ms = time.time() * 1000
        for m in messages:
            if m.timestamp is not None and m.timestamp > 0:
                self.freshness.observe(max(0.0, now_ms - m.timestamp) / 1000)
        self.items.inc(len(messages))
        self.dlq.set(dead_letters)
        self.latency.observe(seconds)
        lag = 0
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            committed = consumer.committed(tp) or 0
            if high is not None:
                lag += max(0, high - committed)
        self.lag.set(lag)


# ---------------------------------------------------------------------- CLI
