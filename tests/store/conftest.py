"""A real read API (uvicorn on 127.0.0.1, a free port) over a real ProxyStore in tmp_path."""

from __future__ import annotations

import numpy as np
import pytest

from store import ProxyStore
from store.api_server import make_server
from store.http_api import ProxyApi

DIM = 4


@pytest.fixture
def api_server(tmp_path):
    """Factory: ``api_server(token=None, **limits) -> (base_url, writer, api)``.

    The store holds v1 with items "a" and "b/c" (p_coarse rows 0..3 and 4..7, p_fine = -p_coarse).
    """
    path = tmp_path / "db"
    writer = ProxyStore(path, dim=DIM)
    c = np.arange(2 * DIM, dtype=np.float32).reshape(2, DIM)
    writer.stage("v1")
    writer.write_batch("v1", ["a", "b/c"], c, -c)
    writer.publish("v1")
    opened = []

    def start(token: str | None = None, **kwargs):
        reader = ProxyStore(path, dim=DIM, read_only=True)
        limits = {"max_request_bytes": 2000, "max_batch_items": 50, "refresh_interval_s": 0.0}
        api = ProxyApi(reader, token=token, **{**limits, **kwargs})
        srv = make_server(api).start()
        opened.append((srv, reader))
        return srv.url, writer, api

    yield start
    for srv, reader in opened:
        srv.shutdown()
        srv.server_close()
        reader.close()
    writer.close()
