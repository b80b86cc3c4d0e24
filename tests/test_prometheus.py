"""The worker's, materializer's and trainer's Prometheus endpoints bind the configured host."""

import functools
import urllib.request

import pytest

from idproxy.settings import Settings
from streams.broker import free_port
from streams.loop_metrics import LoopMetrics
from trainer.online_report import TrainerMetrics


def test_metrics_host_defaults_to_loopback_and_reads_the_environment(monkeypatch):
    assert Settings().metrics_host == "127.0.0.1"
    monkeypatch.setenv("IDPROXY_METRICS_HOST", "0.0.0.0")
    assert Settings().metrics_host == "0.0.0.0"


WORKER = functools.partial(LoopMetrics, "worker")
MATERIALIZER = functools.partial(LoopMetrics, "materializer")
ENDPOINTS = [WORKER, MATERIALIZER, TrainerMetrics]
NAMES = ["worker", "materializer", "trainer"]


@pytest.mark.parametrize("metrics", ENDPOINTS, ids=NAMES)
@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_endpoint_binds_the_configured_host_and_serves_metrics(metrics, host):
    port = free_port()
    endpoint = metrics(port, host)
    assert endpoint.address == (host, port)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "idproxy_" in body


@pytest.mark.parametrize("metrics", ENDPOINTS, ids=NAMES)
def test_port_zero_means_no_endpoint(metrics):
    assert not metrics(0, "127.0.0.1").enabled


def test_worker_freshness_is_upload_timestamp_to_commit(monkeypatch):
    """The worker's freshness histogram: now - the upload record's Kafka timestamp (ms);
    records without a timestamp are not counted."""
    from types import SimpleNamespace

    import streams.loop_metrics

    monkeypatch.setattr("idproxy.prometheus.serve_metrics", lambda registry, port, host: None)
    metrics = WORKER(9100, "127.0.0.1")
    monkeypatch.setattr(streams.loop_metrics.time, "time", lambda: 1000.0)
    consumer = SimpleNamespace(assignment=lambda: [])
    records = [SimpleNamespace(timestamp=t) for t in (999_000, 995_500, -1, None)]
    metrics.observe(consumer, 0, records, 0.1)
    value = metrics.registry.get_sample_value
    assert value("idproxy_worker_freshness_seconds_count") == 2
    assert value("idproxy_worker_freshness_seconds_sum") == 1.0 + 4.5
    assert value("idproxy_worker_freshness_seconds_bucket", {"le": "1.0"}) == 1
    assert value("idproxy_worker_items_total") == 4


@pytest.mark.parametrize("metrics", ENDPOINTS, ids=NAMES)
def test_the_readiness_probe_answers_once_the_component_has_started(metrics):
    """The demo waits on ``idproxy_<component>_ready`` through ``metrics_probe``."""
    from idproxy.supervisor import http_probe, metrics_probe

    port = free_port()
    endpoint = metrics(port, "127.0.0.1")
    component = NAMES[ENDPOINTS.index(metrics)]
    probe = metrics_probe(component, port)
    assert not probe()  # serving, not started
    endpoint.started()
    assert probe()
    assert not metrics_probe(component, free_port())()  # nothing listens there
    assert http_probe(f"http://127.0.0.1:{port}/metrics")()
