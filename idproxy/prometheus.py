"""The Prometheus endpoints of the long-running components (proxy worker, materializer,
online trainer, processor), and their readiness gauge.

Every component's endpoint exports ``idproxy_<component>_ready``: 0 while it starts, 1 once
it consumes. The demo and the benchmarks wait on it (``idproxy.supervisor``), not on log
lines; ``is_ready`` reads it from a scrape.

They bind ``settings.metrics_host``: 127.0.0.1 by default, so only the local host can
scrape; ``IDPROXY_METRICS_HOST=0.0.0.0`` lets a Prometheus in another container or host
reach them.

>>> from prometheus_client import CollectorRegistry
>>> host, port = serve_metrics(CollectorRegistry(), 0, "127.0.0.1")
>>> host, port > 0
('127.0.0.1', True)
"""

from __future__ import annotations


def ready_gauge(component: str, registry):
    """The ``idproxy_<component>_ready`` gauge (0 until the component sets it to 1)."""
    from prometheus_client import Gauge

    return Gauge(f"idproxy_{component}_ready", "1 once the component consumes", registry=registry)


def is_ready(component: str, scrape: str) -> bool:
    """True when a ``/metrics`` scrape says the component is ready.

    >>> is_ready("worker", "idproxy_worker_ready 1.0"), is_ready("worker", "")
    (True, False)
    """
    return f"idproxy_{component}_ready 1.0" in scrape


def serve_ready_gauge(component: str, port: int, host: str):
    """An endpoint on host:port exporting only ``idproxy_<component>_ready``; the gauge."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    gauge = ready_gauge(component, registry)
    serve_metrics(registry, port, host)
    return gauge


def serve_metrics(registry, port: int, host: str) -> tuple[str, int]:
    """Serves ``registry`` on http://host:port/metrics (daemon thread) -> the bound address.

    ``port`` 0 picks a free port.
    """
    from prometheus_client import start_http_server

    server, _ = start_http_server(port, addr=host, registry=registry)
    return server.server_address[0], server.server_address[1]
