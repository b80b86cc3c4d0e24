"""The HTTP read API over a read-only proxy store: FastAPI on uvicorn, 127.0.0.1 by default.

Endpoints (errors are JSON ``{"error": <kind>, "reason": <text>}``)::

    GET  /v1/proxies/{item_id}[?version=V]  -> {item_id, version, p_coarse, p_fine} | 404
    POST /v1/proxies:batch  {"item_ids": [...], "version": V?}
                                            -> {version, found, corrupt, p_coarse, p_fine}
    GET  /v1/versions                       -> {active, previous, versions: [VersionInfo]}
    GET  /healthz                           -> {status: "ok", active_version}   (no token)
    GET  /metrics                           -> Prometheus text format            (no token)
    GET  /openapi.json                      -> the OpenAPI document              (no token)

Binary batch: with ``Accept: application/octet-stream`` the batch answers (little-endian)::

    offset 0   4s  magic b"IDPX"          offset 12  u32  dim d
    offset 4   u16 format version (1)     offset 16  u16  version string length L
    offset 6   u16 flags (bit 0: a version is active)
    offset 8   u32 n items                offset 18  u16  reserved (0)
    offset 20  L bytes version (utf-8), then n mask bytes (0 missing, 1 found, 2 corrupt),
               zero padding to a multiple of 4, then p_coarse [n, d] and p_fine [n, d] float32

It is ``idproxy.proxy_wire``; chosen over Arrow IPC because it needs no extra dependency on
either side and ``numpy.frombuffer`` reads it without a copy. The values are bit-identical
to the JSON answer (float32 -> JSON double -> float32 is exact).

Bodies over ``max_request_bytes`` get 413, batches over ``max_batch_items`` 400. With a
``token``, every route but /healthz, /metrics and /openapi.json needs ``Authorization: Bearer <token>``
(else 401); ``store.api_server.make_server`` refuses a non-loopback host without one. The store is a secondary
(read-only) instance that catches up at most once per ``refresh_interval_s``; each request
resolves its version once (one pointer read), so one answer never mixes two versions.

The two read routes are answered by ``store.http_hot_path.HotPath`` in front of FastAPI,
which also enforces the token and the size limit and keeps the metrics; FastAPI declares
them for the OpenAPI document and serves /v1/versions, /healthz, /metrics and the errors.
"""

from __future__ import annotations

import hmac
import threading
import time
from typing import Annotated

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from store.base import BatchResult, ProxyStoreProtocol, VersionInfo
from store.errors import StoreError
from store.http_hot_path import (
    JSON,
    OCTET,
    Answer,
    ApiError,
    BatchRequest,
    HotPath,
    answer_batch,
    answer_get,
    error_answer,
    error_body,
    parse_batch,
)
from store.version_metrics import VersionCollector


class ProxyOut(BaseModel):
    item_id: str
    version: str
    p_coarse: list[float]
    p_fine: list[float]


class BatchOut(BaseModel):
    version: str | None
    found: list[bool]
    corrupt: list[bool]
    p_coarse: list[list[float]]
    p_fine: list[list[float]]


class VersionsOut(BaseModel):
    active: str | None
    previous: str | None
    versions: list[VersionInfo]


class HealthOut(BaseModel):
    status: str
    active_version: str | None


class ErrorOut(BaseModel):
    error: str
    reason: str


def _error(status: int, kind: str, reason: str) -> Response:
    return Response(error_body(kind, reason), status, media_type=JSON)


def _response(answer: Answer) -> Response:
    status, media, body = answer
    return Response(body, status, media_type=media)


class ProxyApi:
    """The request logic and metrics, separate from the HTTP plumbing."""

    def __init__(
        self,
        store: ProxyStoreProtocol,
        *,
        max_request_bytes: int,
        max_batch_items: int,
        refresh_interval_s: float = 1.0,
        token: str | None = None,
    ) -> None:
        self.store = store
        self.max_request_bytes = max_request_bytes
        self.max_batch_items = max_batch_items
        self.refresh_interval_s = refresh_interval_s
        self.token = token
        self._last_refresh = float("-inf")
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
        self.registry.register(VersionCollector(self._store_for_metrics))
        self._found, self._corrupt, self._missing = (
            self.lookups.labels(result) for result in ("found", "corrupt", "missing")
        )
        self._by_route: dict = {}  # (route, status) -> (requests child, latency child)

    def count_request(self, route: str, status: int, seconds: float) -> None:
        """One answered request in the metrics (label children cached: hot path)."""
        children = self._by_route.get((route, status))
        if children is None:
            children = self.requests.labels(route, str(status)), self.latency.labels(route)
            self._by_route[(route, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def _store_for_metrics(self):
        if self.store is None:
            return None
        self.refresh()
        return self.store

    def refresh(self) -> None:
        """Catches up with the writer, at most once per refresh interval (thread-safe)."""
        if time.monotonic() - self._last_refresh < self.refresh_interval_s:
            return
        with self._lock:
            now = time.monotonic()
            if now - self._last_refresh >= self.refresh_interval_s:
                self.store.refresh()
                self._last_refresh = now

    def authorized(self, header: str | None) -> bool:
        if self.token is None:
            return True
        scheme, _, given = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), self.token.encode()
        )

    def lookup(self, item_ids: list[str], version: str | None) -> BatchResult:
        """One `get_many`: the version is resolved once for the whole answer."""
        if len(item_ids) > self.max_batch_items:
            raise ApiError(
                400, "too_many_items", f"{len(item_ids)} items, limit {self.max_batch_items}"
            )
        self.refresh()
        res = self.store.get_many(item_ids, version)
        found, corrupt = int(res.found.sum()), int(res.corrupt.sum())
        self._found.inc(found)
        self._corrupt.inc(corrupt)
        self._missing.inc(len(item_ids) - found - corrupt)
        return res


_BATCH_BODY = {
    "required": True,
    "content": {"application/json": {"schema": BatchRequest.model_json_schema()}},
}


async def _batch_body(request: Request) -> BatchRequest:
    """The JSON body whatever the Content-Type says (as the stdlib server did)."""
    return parse_batch(await request.body())


def create_app(api: ProxyApi) -> HotPath:
    """The ASGI application over ``api``: :class:`HotPath` in front of the FastAPI app
    (``.app``; its sync routes run in the thread pool)."""
    app = FastAPI(
        title="IDProxy proxy store read API",
        version="1",
        docs_url=None,  # the UIs load scripts from a CDN; the JSON document is what we serve
        redoc_url=None,
        responses={
            400: {"model": ErrorOut},
            401: {"model": ErrorOut},
            404: {"model": ErrorOut},
        },
    )
    app.state.api = api

    @app.exception_handler(ApiError)
    @app.exception_handler(StoreError)
    async def _read_error(_: Request, exc: Exception) -> Response:
        return _response(error_answer(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        return _error(400, "invalid_request", str(errors[0]["msg"]) if errors else "invalid")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        kind = "no_route" if exc.status_code in (404, 405) else "http_error"
        return _error(exc.status_code, kind, f"{exc.detail}: {request.method} {request.url.path}")

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> Response:
        return _response(error_answer(exc))

    # The two read routes are answered by HotPath in front of this app through the same
    # functions; these declarations give the OpenAPI document (the response models document
    # the shapes, they are not re-validated) and serve them if HotPath is not in front.
    @app.get("/v1/proxies/{item_id:path}", response_model=ProxyOut)
    async def get_proxy(item_id: str, version: Annotated[str | None, Query()] = None) -> Response:
        """One item's proxies from the active (or the named) version."""
        return _response(answer_get(api, item_id, version))

    @app.post(
        "/v1/proxies:batch",
        response_model=BatchOut,
        responses={200: {"content": {OCTET: {}}}, 413: {"model": ErrorOut}},
        openapi_extra={"requestBody": _BATCH_BODY},
    )
    async def get_batch(
        request: Request, req: Annotated[BatchRequest, Depends(_batch_body)]
    ) -> Response:
        """Many items from one version; binary with ``Accept: application/octet-stream``."""
        return _response(answer_batch(api, req, request.headers.get("accept", "")))

    @app.get("/v1/versions", response_model=VersionsOut)
    def versions() -> VersionsOut:
        """The active and previous versions and every version's metadata."""
        api.refresh()
        active, previous = api.store.pointer()
        return VersionsOut(active=active, previous=previous, versions=api.store.versions())

    @app.get("/healthz", response_model=HealthOut)
    def healthz() -> HealthOut:
        api.refresh()
        return HealthOut(status="ok", active_version=api.store.active_version())

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    def metrics() -> Response:
        """Prometheus: requests by route/status, latency, lookups found/missing/corrupt."""
        return Response(generate_latest(api.registry), media_type=CONTENT_TYPE_LATEST)

    if api.token is not None:  # document the bearer scheme in the OpenAPI document
        schema = app.openapi()
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"}
        }
        schema["security"] = [{"bearer": []}]
    return HotPath(app, api)
