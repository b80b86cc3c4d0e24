"""`idproxy.client.ProxyClient` against a real server, and its retries against fakes."""

from __future__ import annotations

import doctest
import json
import socket

import httpx
import numpy as np
import pytest

import idproxy.client
from idproxy.client import (
    ProxyAPIError,
    ProxyClient,
    ProxyNotFound,
    ProxyUnavailable,
    UnknownVersion,
)
from idproxy.proxy_wire import FOUND, encode_batch
from tests.store.conftest import DIM


def test_docstring_examples_run_against_a_live_server(api_server):
    base, _, _ = api_server(token="tok")
    result = doctest.testmod(
        idproxy.client, extraglobs={"base_url": base, "token": "tok"}, optionflags=doctest.ELLIPSIS
    )
    assert result.attempted > 5 and result.failed == 0


def test_get_many_binary_and_json_agree(api_server):
    base, _, _ = api_server()
    with ProxyClient(base) as client:
        ids = ["b/c", "missing", "a"]
        binary, as_json = client.get_many(ids), client.get_many(ids, binary=False)
        for got in (binary, as_json):
            assert got.version == "v1" and got.found.tolist() == [True, False, True]
            assert got.p_coarse.dtype == np.float32 and got.p_fine.shape == (3, DIM)
        assert binary.p_coarse.tobytes() == as_json.p_coarse.tobytes()
        assert binary.p_fine.tobytes() == as_json.p_fine.tobytes()
        assert binary.missing == ["missing"] and not binary.corrupt.any()
        assert client.get("b/c").p_fine.tolist() == [-4.0, -5.0, -6.0, -7.0]
        assert client.versions()["active"] == "v1"


class RecordingTransport(httpx.HTTPTransport):
    """A real HTTP transport that keeps the JSON bodies it sent."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[dict] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.content:
            self.bodies.append(json.loads(request.content))
        return super().handle_request(request)


def test_get_many_splits_over_max_batch_items_and_pins_the_first_version(api_server):
    base, _, _ = api_server()
    ids = ["a", "missing", "b/c", "a", "nope"]
    with ProxyClient(base) as whole:
        want = whole.get_many(ids)
    transport = RecordingTransport()
    with ProxyClient(base, max_batch_items=2, transport=transport) as client:
        for binary in (True, False):
            transport.bodies.clear()
            got = client.get_many(ids, binary=binary)
            assert [len(b["item_ids"]) for b in transport.bodies] == [2, 2, 1]
            assert [b.get("version") for b in transport.bodies] == [None, "v1", "v1"]
            assert got.item_ids == ids and got.version == want.version == "v1"
            assert got.found.tolist() == want.found.tolist() == [True, False, True, True, False]
            assert got.p_coarse.tobytes() == want.p_coarse.tobytes()
            assert got.p_fine.tobytes() == want.p_fine.tobytes()


def test_errors_are_raised_never_zeros(api_server):
    base, _, _ = api_server(token="tok")
    with ProxyClient(base, token="tok") as client:
        with pytest.raises(ProxyNotFound) as err:
            client.get("nope")
        assert err.value.status == 404 and "nope" in err.value.reason
        with pytest.raises(UnknownVersion):
            client.get_many(["a"], version="v9")
        with pytest.raises(ProxyAPIError) as err:
            client.get_many([str(i) for i in range(51)])
        assert err.value.status == 400 and err.value.error == "too_many_items"
    with ProxyClient(base, token="wrong") as client, pytest.raises(ProxyAPIError) as err:
        client.get("a")
    assert err.value.status == 401 and "wrong" not in str(err.value)


def _counting(handler):
    calls = []

    def transport(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return handler(len(calls))

    return calls, httpx.MockTransport(transport)


def test_retries_5xx_with_backoff_then_succeeds():
    ok = {"status": "ok", "active_version": "v1"}
    calls, transport = _counting(
        lambda n: (
            httpx.Response(503, json={"error": "x", "reason": "busy"})
            if n < 3
            else httpx.Response(200, json=ok)
        )
    )
    client = ProxyClient("http://api", retries=2, backoff_s=0.001, transport=transport)
    assert client.healthz() == ok and len(calls) == 3


def test_gives_up_after_the_retries_and_never_retries_4xx():
    calls, transport = _counting(lambda n: httpx.Response(500, text="boom"))
    client = ProxyClient("http://api", retries=2, backoff_s=0.001, transport=transport)
    with pytest.raises(ProxyUnavailable) as err:
        client.versions()
    assert len(calls) == 3 and err.value.status == 500 and "after 3 attempts" in err.value.reason
    calls, transport = _counting(
        lambda n: httpx.Response(400, json={"error": "bad_request", "reason": "no"})
    )
    client = ProxyClient("http://api", retries=5, backoff_s=0.001, transport=transport)
    with pytest.raises(ProxyAPIError) as err:
        client.get("a")
    assert len(calls) == 1 and err.value.status == 400 and err.value.error == "bad_request"


def test_connection_errors_are_retried_then_raised():
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = ProxyClient(f"http://127.0.0.1:{port}", retries=2, backoff_s=0.001, timeout_s=1)
    with pytest.raises(ProxyUnavailable) as err:
        client.healthz()
    assert err.value.status is None and err.value.error == "ConnectError"


def test_malformed_binary_answers_raise():
    body = encode_batch("v1", np.array([FOUND], np.uint8), np.zeros((1, DIM)), np.zeros((1, DIM)))
    for content, kind in ((body[:-4], "application/octet-stream"), (body, "application/json")):
        transport = httpx.MockTransport(
            lambda _, c=content, k=kind: httpx.Response(200, content=c, headers={"content-type": k})
        )
        client = ProxyClient("http://api", transport=transport)
        with pytest.raises(ProxyAPIError, match="bad_response"):
            client.get_many(["a"])
    transport = httpx.MockTransport(  # one row for two ids
        lambda _: httpx.Response(
            200, content=body, headers={"content-type": "application/octet-stream"}
        )
    )
    with pytest.raises(ProxyAPIError, match="1 rows for 2"):
        ProxyClient("http://api", transport=transport).get_many(["a", "b"])
