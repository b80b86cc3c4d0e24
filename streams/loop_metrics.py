"""The Prometheus metrics of a consume loop (``streams/consume_loop.py``): the proxy worker
(``idproxy_worker_*``, ``IDPROXY_WORKER_METRICS_PORT``) and the materializer
(``idproxy_materializer_*``, ``IDPROXY_MATERIALIZER_METRICS_PORT``).

Per component: records handled (``_items``), dead letters, batch latency, consumer lag
(high watermark − committed), partitions owned (0 while joining: not ready), and freshness
(a record's Kafka timestamp to its batch flushed and committed, seconds; for the worker,
upload to proxy).

>>> from unittest import mock
>>> with mock.patch("idproxy.prometheus.serve_metrics", lambda registry, port, host: (host, port)):
...     m = LoopMetrics("materializer", 9102, "127.0.0.1")
>>> sorted(n for n in m.registry._names_to_collectors if n.endswith("partitions"))
['idproxy_materializer_assigned_partitions']
"""

from __future__ import annotations

import time

FRESHNESS_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)


class LoopMetrics:
    """Prometheus metrics on host:port (off when port is 0); ``address`` is the bound one."""

    def __init__(self, component: str, port: int, host: str) -> None:
        self.enabled = port > 0
        if not self.enabled:
            return
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        from idproxy.prometheus import ready_gauge, serve_metrics

        self.registry = r = CollectorRegistry()
        name = f"idproxy_{component}"
        self.items = Counter(f"{name}_items", "records handled", registry=r)
        self.dlq = Gauge(f"{name}_dead_letters", "dead letters sent", registry=r)
        self.latency = Histogram(f"{name}_batch_seconds", "batch latency", registry=r)
        self.lag = Gauge(f"{name}_lag", "high watermark - committed offset", registry=r)
        self.assigned = Gauge(
            f"{name}_assigned_partitions", "partitions owned (0: joining, not ready)", registry=r
        )
        self.freshness = Histogram(
            f"{name}_freshness_seconds",
            "record's Kafka timestamp -> its batch flushed and committed",
            buckets=FRESHNESS_BUCKETS_S,
            registry=r,
        )
        self.ready = ready_gauge(component, r)
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

    def started(self) -> None:
        """The loop turns: the component is ready."""
        if self.enabled:
            self.ready.set(1)

    def owned(self, consumer) -> None:
        """The partitions the consumer owns now (every loop turn)."""
        if self.enabled:
            self.assigned.set(len(consumer.assignment()))
