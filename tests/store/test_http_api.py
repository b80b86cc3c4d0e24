"""The HTTP read API against a real server on loopback."""

import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from store import ProxyStore
from store.api_server import make_server
from store.http_api import ProxyApi

DIM = 4


@pytest.fixture
def server(tmp_path):
    path = tmp_path / "db"
    writer = ProxyStore(path, dim=DIM)
    c = np.arange(2 * DIM, dtype=np.float32).reshape(2, DIM)
    writer.stage("v1")
    writer.write_batch("v1", ["a", "b/c"], c, -c)
    writer.publish("v1")
    reader = ProxyStore(path, dim=DIM, read_only=True)
    api = ProxyApi(reader, max_request_bytes=2000, max_batch_items=50, refresh_interval_s=0.0)
    srv = make_server(api).start()
    host, port = srv.server_address
    yield f"http://{host}:{port}", writer
    srv.shutdown()
    srv.server_close()
    reader.close()
    writer.close()


def call(url, body=None, method=None):
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data else "GET"))
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_binds_loopback(server):
    base, _ = server
    assert base.startswith("http://127.0.0.1:")


def test_get_one_and_miss(server):
    base, _ = server
    status, body = call(f"{base}/v1/proxies/a")
    assert status == 200
    doc = json.loads(body)
    assert doc["version"] == "v1" and doc["p_coarse"] == [0.0, 1.0, 2.0, 3.0]
    assert call(f"{base}/v1/proxies/b%2Fc")[0] == 200  # ids with a slash are url-encoded
    status, body = call(f"{base}/v1/proxies/nope")
    assert status == 404 and json.loads(body)["error"] == "not_found"
    status, body = call(f"{base}/v1/proxies/a?version=v9")
    assert status == 404 and json.loads(body)["error"] == "unknown_version"


def test_batch(server):
    base, _ = server
    status, body = call(f"{base}/v1/proxies:batch", {"item_ids": ["b/c", "x", "a"]})
    doc = json.loads(body)
    assert status == 200 and doc["found"] == [True, False, True]
    assert doc["p_fine"][0] == [-4.0, -5.0, -6.0, -7.0]


def test_limits_and_bad_requests(server):
    base, _ = server
    status, body = call(f"{base}/v1/proxies:batch", {"item_ids": [str(i) for i in range(51)]})
    assert status == 400 and json.loads(body)["error"] == "too_many_items"
    status, body = call(f"{base}/v1/proxies:batch", b"x" * 3000)
    assert status == 413 and "limit 2000" in json.loads(body)["reason"]
    status, body = call(f"{base}/v1/proxies:batch", b"{not json")
    assert status == 400 and json.loads(body)["error"] == "invalid_request"
    status, body = call(f"{base}/v1/proxies:batch", {"item_ids": ["a"], "extra": 1})
    assert status == 400
    assert call(f"{base}/nowhere")[0] == 404


def test_versions_health_metrics_and_live_publish(server):
    base, writer = server
    assert json.loads(call(f"{base}/healthz")[1]) == {"status": "ok", "active_version": "v1"}
    c = np.ones((1, DIM), np.float32)
    writer.stage("v2")
    writer.write_batch("v2", ["a"], c, c)
    writer.publish("v2")
    doc = json.loads(call(f"{base}/v1/versions")[1])
    assert doc["active"] == "v2" and doc["previous"] == "v1"
    assert json.loads(call(f"{base}/v1/proxies/a")[1])["version"] == "v2"
    metrics = call(f"{base}/metrics")[1].decode()
    assert 'idproxy_api_requests_total{route="get",status="200"}' in metrics
    assert "idproxy_api_latency_seconds_bucket" in metrics
