"""BASELINE ONLY for `idproxy bench serve`: the read API's routes on the stdlib's
``ThreadingHTTPServer`` (the same code as ``store/http_api.py`` at commit 9888c19). Not used
in production and not maintained: it has no bearer token, no binary batches and no OpenAPI;
the served API is ``store.http_api``.

A small HTTP read API over a read-only `ProxyStore` (stdlib server, 127.0.0.1 by default).

Endpoints (all JSON; errors are ``{"error": <kind>, "reason": <text>}``)::

    GET  /v1/proxies/{item_id}[?version=V]  -> {item_id, version, p_coarse, p_fine} | 404
    POST /v1/proxies:batch  {"item_ids": [...], "version": V?}
                                            -> {version, found: [bool], p_coarse: [[..]], p_fine: [[..]]}
    GET  /v1/versions                       -> {active, previous, versions: [VersionInfo]}
    GET  /healthz                           -> {status: "ok", active_version}
    GET  /metrics                           -> Prometheus text format

Request bodies over ``max_request_bytes`` get 413 and batches over ``max_batch_items`` 400.
The store is opened as a secondary (read-only) instance and catches up with the writer at
most once per ``refresh_interval_s``.
"""

from __future__ import annotations

import json
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, Field, ValidationError

from store.base import ProxyStoreProtocol
from store.errors import StoreError, UnknownVersionError, VersionStateError


class BatchRequest(BaseModel):
    """Body of POST /v1/proxies:batch."""

    model_config = {"extra": "forbid"}
    item_ids: list[str] = Field(min_length=1)
    version: str | None = None


class ApiError(Exception):
    def __init__(self, status: HTTPStatus, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.kind, self.reason = status, kind, reason


class ProxyApi:
    """The request logic, separate from the HTTP plumbing."""

    def __init__(
        self,
        store: ProxyStoreProtocol,
        *,
        max_request_bytes: int,
        max_batch_items: int,
        refresh_interval_s: float = 1.0,
    ) -> None:
        self.store = store
        self.max_request_bytes = max_request_bytes
        self.max_batch_items = max_batch_items
        self.refresh_interval_s = refresh_interval_s
        self._last_refresh = 0.0
        self._lock = threading.Lock()
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "idproxy_api_requests", "HTTP requests", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "idproxy_api_latency_seconds", "request latency", ["route"], registry=self.registry
        )
        self.lookups = Counter(
            "idproxy_api_item_lookups", "items looked up", ["result"], registry=self.registry
        )

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._last_refresh >= self.refresh_interval_s:
            with self._lock:
                self.store.refresh()
                self._last_refresh = now

    def _count(self, found: int, corrupt: int, total: int) -> None:
        self.lookups.labels("found").inc(found)
        self.lookups.labels("corrupt").inc(corrupt)
        self.lookups.labels("missing").inc(total - found - corrupt)

    def get_one(self, item_id: str, version: str | None) -> dict:
        self._refresh()
        res = self.store.get_many([item_id], version)
        self._count(int(res.found.sum()), int(res.corrupt.sum()), 1)
        if res.corrupt[0]:
            raise ApiError(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                "corrupt",
                f"value of {item_id!r} failed its checksum",
            )
        if not res.found[0]:
            raise ApiError(
                HTTPStatus.NOT_FOUND,
                "not_found",
                f"no proxy for item {item_id!r} in version {res.version!r}",
            )
        return {
            "item_id": item_id,
            "version": res.version,
            "p_coarse": res.p_coarse[0].tolist(),
            "p_fine": res.p_fine[0].tolist(),
        }

    def get_batch(self, body: bytes) -> dict:
        try:
            req = BatchRequest.model_validate_json(body)
        except ValidationError as exc:
            raise ApiError(
                HTTPStatus.BAD_REQUEST, "invalid_request", str(exc.errors()[0]["msg"])
            ) from exc
        if len(req.item_ids) > self.max_batch_items:
            raise ApiError(
                HTTPStatus.BAD_REQUEST,
                "too_many_items",
                f"{len(req.item_ids)} items, limit {self.max_batch_items}",
            )
        self._refresh()
        res = self.store.get_many(req.item_ids, req.version)
        self._count(int(res.found.sum()), int(res.corrupt.sum()), len(req.item_ids))
        return {
            "version": res.version,
            "found": res.found.tolist(),
            "corrupt": res.corrupt.tolist(),
            "p_coarse": res.p_coarse.tolist(),
            "p_fine": res.p_fine.tolist(),
        }

    def versions(self) -> dict:
        self._refresh()
        return {
            "active": self.store.active_version(),
            "previous": self.store.previous_version(),
            "versions": [v.model_dump() for v in self.store.versions()],
        }


def _handler(api: ProxyApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "idproxy-store"

        def log_message(self, *args: object) -> None:  # quiet; metrics count requests
            pass

        def _send(
            self, status: HTTPStatus, body: bytes, content_type: str = "application/json"
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _dispatch(self, route: str, fn) -> None:
            start = time.perf_counter()
            try:
                status, payload = HTTPStatus.OK, fn()
            except ApiError as exc:
                status, payload = exc.status, {"error": exc.kind, "reason": exc.reason}
            except (UnknownVersionError, VersionStateError) as exc:
                status, payload = (
                    HTTPStatus.NOT_FOUND,
                    {"error": "unknown_version", "reason": str(exc)},
                )
            except StoreError as exc:
                status, payload = (
                    HTTPStatus.BAD_REQUEST,
                    {"error": "bad_request", "reason": str(exc)},
                )
            if isinstance(payload, bytes):  # the /metrics exposition
                body, kind = payload, CONTENT_TYPE_LATEST
            else:
                body, kind = json.dumps(payload).encode(), "application/json"
            # counted before the reply goes out: a client that reads /metrics right after
            # its answer must see its own request (the server is threaded)
            api.requests.labels(route, str(int(status))).inc()
            api.latency.labels(route).observe(time.perf_counter() - start)
            self._send(status, body, kind)

        def do_GET(self) -> None:
            url = urlparse(self.path)
            query = parse_qs(url.query)
            version = query.get("version", [None])[0]
            if url.path.startswith("/v1/proxies/"):
                item = unquote(url.path[len("/v1/proxies/") :])
                self._dispatch("get", lambda: api.get_one(item, version))
            elif url.path == "/v1/versions":
                self._dispatch("versions", api.versions)
            elif url.path == "/healthz":
                self._dispatch(
                    "healthz",
                    lambda: {"status": "ok", "active_version": api.store.active_version()},
                )
            elif url.path == "/metrics":
                self._dispatch("metrics", lambda: generate_latest(api.registry))
            else:
                self._dispatch("unknown", lambda: _not_found(url.path))

        def do_POST(self) -> None:
            if urlparse(self.path).path != "/v1/proxies:batch":
                return self._dispatch("unknown", lambda: _not_found(self.path))
            length = int(self.headers.get("Content-Length") or 0)
            if length > api.max_request_bytes:
                self.close_connection = True
                return self._dispatch(
                    "batch",
                    lambda: _raise(
                        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        "too_large",
                        f"body of {length} bytes, limit {api.max_request_bytes}",
                    ),
                )
            body = self.rfile.read(length)
            self._dispatch("batch", lambda: api.get_batch(body))

    return Handler


def _raise(status: HTTPStatus, kind: str, reason: str):
    raise ApiError(status, kind, reason)


def _not_found(path: str):
    raise ApiError(HTTPStatus.NOT_FOUND, "no_route", f"no route {path}")


def make_server(api: ProxyApi, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A threaded server bound to ``host:port`` (port 0 picks a free one); not started."""
    server = ThreadingHTTPServer((host, port), _handler(api))
    server.daemon_threads = True
    return server
