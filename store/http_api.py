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
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from idproxy.proxy_wire import CORRUPT, FOUND, encode_batch
from store.base import BatchResult, ProxyStoreProtocol, VersionInfo
from store.errors import StoreError, UnknownVersionError, VersionStateError
from store.version_metrics import VersionCollector

OCTET = "application/octet-stream"
PUBLIC_PATHS = frozenset({"/healthz", "/metrics", "/openapi.json"})  # no proxy data


class BatchRequest(BaseModel):
    """Body of POST /v1/proxies:batch."""

    model_config = {"extra": "forbid"}
    item_ids: list[str] = Field(min_length=1)
    version: str | None = None


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


class ApiError(Exception):
    def __init__(self, status: int, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.kind, self.reason = status, kind, reason


def _route(path: str) -> str:
    if path == "/v1/proxies:batch":
        return "batch"
    if path.startswith("/v1/proxies/"):
        return "get"
    return {
        "/v1/versions": "versions",
        "/healthz": "healthz",
        "/metrics": "metrics",
        "/openapi.json": "openapi",
    }.get(path, "unknown")


def _error(status: int, kind: str, reason: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": kind, "reason": reason}, status_code=status, headers=headers)


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
        self.lookups.labels("found").inc(found)
        self.lookups.labels("corrupt").inc(corrupt)
        self.lookups.labels("missing").inc(len(item_ids) - found - corrupt)
        return res


class _Guard:
    """ASGI middleware: metrics, the bearer token, then the body-size limit (413)."""

    def __init__(self, app: Any, api: ProxyApi) -> None:
        self.app, self.api = app, api

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        api, route, start = self.api, _route(scope["path"]), time.perf_counter()

        async def counted_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                # counted before the reply goes out: a client reading /metrics right after
                # its answer must see its own request
                api.requests.labels(route, str(message["status"])).inc()
                api.latency.labels(route).observe(time.perf_counter() - start)
            await send(message)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if scope["path"] not in PUBLIC_PATHS and not api.authorized(headers.get("authorization")):
            reason = "missing or invalid bearer token (Authorization: Bearer <token>)"
            resp = _error(401, "unauthorized", reason, {"WWW-Authenticate": "Bearer"})
            return await resp(scope, receive, counted_send)
        if scope["method"] == "POST":
            body, too_large = await _read_body(receive, headers, api.max_request_bytes)
            if too_large is not None:
                reason = f"body of {too_large} bytes, limit {api.max_request_bytes}"
                resp = _error(413, "too_large", reason, {"Connection": "close"})
                return await resp(scope, receive, counted_send)
            receive = _replay(body)
        await self.app(scope, receive, counted_send)


async def _read_body(receive: Any, headers: dict, limit: int) -> tuple[bytes, int | None]:
    """The whole body, or (b"", size) as soon as it is known to exceed ``limit``."""
    declared = int(headers.get("content-length") or 0)
    if declared > limit:
        return b"", declared
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        more = message.get("more_body", False)
        if size > limit:
            return b"", size
    return b"".join(chunks), None


def _replay(body: bytes) -> Any:
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


_BATCH_BODY = {
    "required": True,
    "content": {"application/json": {"schema": BatchRequest.model_json_schema()}},
}


async def _batch_body(request: Request) -> BatchRequest:
    """The JSON body whatever the Content-Type says (as the stdlib server did)."""
    try:
        return BatchRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        errors = exc.errors()
        raise ApiError(
            400, "invalid_request", str(errors[0]["msg"]) if errors else "invalid"
        ) from exc


def create_app(api: ProxyApi) -> FastAPI:
    """The FastAPI application over ``api`` (sync routes run in the thread pool)."""
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
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.kind, exc.reason)

    @app.exception_handler(StoreError)
    async def _store_error(_: Request, exc: StoreError) -> JSONResponse:
        if isinstance(exc, UnknownVersionError | VersionStateError):
            return _error(404, "unknown_version", str(exc))
        return _error(400, "bad_request", str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        return _error(400, "invalid_request", str(errors[0]["msg"]) if errors else "invalid")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "no_route" if exc.status_code in (404, 405) else "http_error"
        return _error(exc.status_code, kind, f"{exc.detail}: {request.method} {request.url.path}")

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        return _error(500, "internal", f"{type(exc).__name__}: {exc}")

    # The two read routes are ``async def``: a lookup is a sub-millisecond RocksDB read, cheaper
    # on the event loop than a hop to the thread pool; they return pre-encoded JSON (the
    # response model documents the shape in the OpenAPI document, it is not re-validated).
    @app.get("/v1/proxies/{item_id:path}", response_model=ProxyOut)
    async def get_proxy(item_id: str, version: Annotated[str | None, Query()] = None) -> Response:
        """One item's proxies from the active (or the named) version."""
        res = api.lookup([item_id], version)
        if res.corrupt[0]:
            raise ApiError(500, "corrupt", f"value of {item_id!r} failed its checksum")
        if not res.found[0]:
            raise ApiError(
                404, "not_found", f"no proxy for item {item_id!r} in version {res.version!r}"
            )
        doc = {
            "item_id": item_id,
            "version": res.version,
            "p_coarse": res.p_coarse[0].tolist(),
            "p_fine": res.p_fine[0].tolist(),
        }
        return Response(json.dumps(doc), media_type="application/json")

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
        res = api.lookup(req.item_ids, req.version)
        if _wants_binary(request.headers.get("accept", "")):
            mask = res.found.astype("u1") * FOUND + res.corrupt.astype("u1") * CORRUPT
            return Response(
                encode_batch(res.version, mask, res.p_coarse, res.p_fine), 200, None, OCTET
            )
        doc = {
            "version": res.version,
            "found": res.found.tolist(),
            "corrupt": res.corrupt.tolist(),
            "p_coarse": res.p_coarse.tolist(),
            "p_fine": res.p_fine.tolist(),
        }  # serialised directly: validating 2 x n x d floats would cost more than encoding
        return Response(json.dumps(doc), media_type="application/json")

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

    return _with_guard(app, api)


def _with_guard(app: FastAPI, api: ProxyApi) -> FastAPI:
    app.add_middleware(_Guard, api=api)
    if api.token is not None:  # document the bearer scheme in the OpenAPI document
        schema = app.openapi()
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"}
        }
        schema["security"] = [{"bearer": []}]
    return app


def _wants_binary(accept: str) -> bool:
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if media == OCTET:
            return not any(p.replace(" ", "") in ("q=0", "q=0.0") for p in params)
    return False
