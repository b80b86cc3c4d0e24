"""The Prometheus endpoints of the long-running components (proxy worker, online trainer).

They bind ``settings.metrics_host``: 127.0.0.1 by default, so only the local host can
scrape; ``IDPROXY_METRICS_HOST=0.0.0.0`` lets a Prometheus in another container or host
reach them.

>>> from prometheus_client import CollectorRegistry
>>> host, port = serve_metrics(CollectorRegistry(), 0, "127.0.0.1")
>>> host, port > 0
('127.0.0.1', True)
"""

from __future__ import annotations


def serve_metrics(registry, port: int, host: str) -> tuple[str, int]:
    """Serves ``registry`` on http://host:port/metrics (daemon thread) -> the bound address.

    ``port`` 0 picks a free port.
    """
    from prometheus_client import start_http_server

    server, _ = start_http_server(port, addr=host, registry=registry)
    return server.server_address[0], server.server_address[1]
