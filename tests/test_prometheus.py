"""The worker's and trainer's Prometheus endpoints bind the configured host."""

import urllib.request

import pytest

from idproxy.settings import Settings
from streams.broker import free_port
from streams.worker import _Metrics as WorkerMetrics
from trainer.online_report import TrainerMetrics


def test_metrics_host_defaults_to_loopback_and_reads_the_environment(monkeypatch):
    assert Settings().metrics_host == "127.0.0.1"
    monkeypatch.setenv("IDPROXY_METRICS_HOST", "0.0.0.0")
    assert Settings().metrics_host == "0.0.0.0"


@pytest.mark.parametrize("metrics", [WorkerMetrics, TrainerMetrics], ids=["worker", "trainer"])
@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_endpoint_binds_the_configured_host_and_serves_metrics(metrics, host):
    port = free_port()
    endpoint = metrics(port, host)
    assert endpoint.address == (host, port)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "idproxy_" in body


@pytest.mark.parametrize("metrics", [WorkerMetrics, TrainerMetrics], ids=["worker", "trainer"])
def test_port_zero_means_no_endpoint(metrics):
    assert not metrics(0, "127.0.0.1").enabled
