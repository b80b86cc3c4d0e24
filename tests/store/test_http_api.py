"""The HTTP read API against a real server on loopback."""

import json
import threading
import time
import urllib.error
import urllib.request

import httpx
import numpy as np
import pytest

from idproxy.proxy_wire import FOUND, decode_batch
from store import ProxyStore
from store.api_server import InsecureBindError, is_loopback, make_server
from store.http_api import ProxyApi
from tests.store.conftest import DIM


@pytest.fixture
def server(api_server):
    base, writer, _ = api_server()
    return base, writer


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
    # the store's versions, read at scrape time: v2 is served, both published versions kept
    assert 'idproxy_store_active_version_info{version="v2"} 1.0' in metrics
    assert 'idproxy_store_active_version_info{version="v1"}' not in metrics
    assert 'idproxy_store_version_items{version="v2"} 1.0' in metrics
    assert "idproxy_store_published_versions 2.0" in metrics
    (age,) = [
        float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith("idproxy_store_active_version_age_seconds ")
    ]
    assert 0 <= age < 60


def test_binary_batch_is_bit_identical_to_json(server):
    base, _ = server
    ids = ["b/c", "x", "a"]
    status, body = call(f"{base}/v1/proxies:batch", {"item_ids": ids})
    doc = json.loads(body)
    req = urllib.request.Request(
        f"{base}/v1/proxies:batch",
        data=json.dumps({"item_ids": ids, "version": "v1"}).encode(),
        headers={"Accept": "application/octet-stream"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["Content-Type"] == "application/octet-stream"
        raw = resp.read()
    assert raw[:4] == b"IDPX"
    wire = decode_batch(raw)
    assert wire.version == doc["version"] == "v1"
    assert (wire.mask == FOUND).tolist() == doc["found"] == [True, False, True]
    for name, arr in (("p_coarse", wire.p_coarse), ("p_fine", wire.p_fine)):
        as_json = np.asarray(doc[name], np.float32)
        assert arr.shape == (3, DIM)
        assert arr.view(np.uint32).tolist() == as_json.view(np.uint32).tolist()
    # q=0 refuses the binary form: JSON again
    req.add_header("Accept", "application/octet-stream;q=0, application/json")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert json.loads(resp.read()) == doc


def test_chunked_body_over_the_limit_gets_413(server):
    base, _ = server
    chunks = (b"x" * 500 for _ in range(10))  # no Content-Length: chunked transfer
    resp = httpx.post(f"{base}/v1/proxies:batch", content=chunks, timeout=10)
    assert resp.status_code == 413 and resp.json()["error"] == "too_large"


def test_errors_are_json(server):
    base, _ = server
    for url, method, code, kind in (
        (f"{base}/nowhere", "GET", 404, "no_route"),
        (f"{base}/v1/proxies:batch", "GET", 405, "no_route"),
        (f"{base}/v1/proxies/a?version=bad%20name", "GET", 400, "bad_request"),
        (f"{base}/v1/proxies:batch", "POST", 400, "invalid_request"),  # empty body
    ):
        resp = httpx.request(method, url, timeout=10)
        assert resp.status_code == code and resp.json()["error"] == kind, (url, resp.text)
        assert set(resp.json()) == {"error", "reason"}


def test_openapi_document(api_server):
    base, _, _ = api_server(token="s3cret")
    resp = httpx.get(f"{base}/openapi.json", timeout=10)  # public, like /healthz
    assert resp.status_code == 200
    doc = resp.json()
    assert {"/v1/proxies/{item_id}", "/v1/proxies:batch", "/v1/versions", "/healthz"} <= set(
        doc["paths"]
    )
    assert {"ProxyOut", "BatchOut", "VersionsOut", "ErrorOut"} <= set(doc["components"]["schemas"])
    batch = doc["paths"]["/v1/proxies:batch"]["post"]
    assert "application/octet-stream" in batch["responses"]["200"]["content"]
    assert "item_ids" in batch["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_bearer_token(api_server):
    base, _, _ = api_server(token="s3cret")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
        for path in ("/v1/proxies/a", "/v1/versions"):
            resp = httpx.get(f"{base}{path}", headers=headers, timeout=10)
            assert resp.status_code == 401 and resp.json()["error"] == "unauthorized"
            assert resp.headers["www-authenticate"] == "Bearer" and "wrong" not in resp.text
    resp = httpx.post(f"{base}/v1/proxies:batch", json={"item_ids": ["a"]}, timeout=10)
    assert resp.status_code == 401
    good = {"Authorization": "Bearer s3cret"}
    assert httpx.get(f"{base}/v1/proxies/a", headers=good, timeout=10).status_code == 200
    resp = httpx.post(f"{base}/v1/proxies:batch", json={"item_ids": ["a"]}, headers=good)
    assert resp.status_code == 200 and resp.json()["found"] == [True]
    assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200  # liveness probes
    metrics = httpx.get(f"{base}/metrics", timeout=10).text  # scrapers need no token
    assert 'idproxy_api_requests_total{route="get",status="401"} 3.0' in metrics


def test_refuses_a_public_host_without_a_token(tmp_path):
    with ProxyStore(tmp_path / "db", dim=DIM) as store:
        api = ProxyApi(store, max_request_bytes=100, max_batch_items=10)
        for host in ("0.0.0.0", "::", "192.0.2.1", "example.com"):
            with pytest.raises(InsecureBindError, match="IDPROXY_STORE_API_TOKEN"):
                make_server(api, host)
        assert is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("localhost")
        api.token = "t"
        srv = make_server(api, "0.0.0.0")  # with a token it binds
        assert srv.server_address[0] == "0.0.0.0"
        srv.server_close()


def test_answers_never_mix_versions(server):
    """Readers hammer the API while the writer publishes versions whose values are the
    version number: every answer's rows carry the value of the version it names."""
    base, writer = server
    ids = [f"i{k}" for k in range(20)]
    errors: list[str] = []
    seen: set[str] = set()
    stop = threading.Event()

    def read() -> None:
        with httpx.Client(base_url=base, timeout=10) as http:
            while not stop.is_set():
                resp = http.post("/v1/proxies:batch", json={"item_ids": ids})
                doc = resp.json()
                seen.add(doc["version"])
                if doc["version"] == "v1":
                    continue
                want = float(doc["version"][1:])
                if not all(doc["found"]) or {x for r in doc["p_coarse"] for x in r} != {want}:
                    errors.append(f"{doc['version']}: {doc['found']}")

    threads = [threading.Thread(target=read) for _ in range(3)]
    for t in threads:
        t.start()
    for k in range(2, 8):
        block = np.full((len(ids), DIM), float(k), np.float32)
        writer.stage(f"v{k}")
        writer.write_batch(f"v{k}", ids, block, block)
        writer.publish(f"v{k}")
        deadline = time.monotonic() + 5
        while f"v{k}" not in seen and time.monotonic() < deadline:
            time.sleep(0.005)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert seen >= {f"v{k}" for k in range(2, 8)}  # they did see the versions change
