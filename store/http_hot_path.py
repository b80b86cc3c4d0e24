"""The read API's ASGI front: metrics, the bearer token, the body limit and the two read routes.

Every request passes through :class:`HotPath` before FastAPI sees it:

1. it is counted and timed (``idproxy_api_requests_total{route,status}``, latency);
2. a route other than /healthz, /metrics and /openapi.json needs the bearer token (401);
3. a POST body over ``max_request_bytes`` gets 413 as soon as its size is known;
4. ``GET /v1/proxies/{item_id}`` and ``POST /v1/proxies:batch`` are answered here, by
   :func:`answer_get` and :func:`answer_batch`, without FastAPI's routing, request object and
   dependency injection: on a 2-core machine those cost about as much as the lookup itself.
   FastAPI still declares both routes (the OpenAPI document) and serves them through the same
   two functions if this layer is not in front. Everything else goes on to FastAPI.

An answer is (status, media type, body bytes); errors are ``{"error", "reason"}`` JSON with
the status :func:`error_answer` gives, the same as FastAPI's exception handlers.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs

import numpy as np
import orjson
from pydantic import BaseModel, Field, ValidationError

from idproxy.proxy_wire import CORRUPT, FOUND, encode_batch
from store.errors import StoreError, UnknownVersionError, VersionStateError

OCTET = "application/octet-stream"
JSON = "application/json"
PUBLIC_PATHS = frozenset({"/healthz", "/metrics", "/openapi.json"})  # no proxy data
GET_PREFIX = "/v1/proxies/"
BATCH_PATH = "/v1/proxies:batch"

Answer = tuple[int, str, bytes]  # status, media type, body


class BatchRequest(BaseModel):
    """Body of POST /v1/proxies:batch."""

    model_config = {"extra": "forbid"}
    item_ids: list[str] = Field(min_length=1)
    version: str | None = None


class ApiError(Exception):
    def __init__(self, status: int, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.kind, self.reason = status, kind, reason


def error_body(kind: str, reason: str) -> bytes:
    return orjson.dumps({"error": kind, "reason": reason})


def _json(doc: dict) -> bytes:
    """orjson with numpy arrays as lists: float32 values in their shortest float32 form, so
    a client reading them as float32 gets the stored bits (as from the binary answer)."""
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY, default=_contiguous)


def _contiguous(value: Any) -> Any:
    """orjson's fallback for what it cannot write as is: strided arrays (store views)."""
    if isinstance(value, np.ndarray):
        return np.ascontiguousarray(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def error_answer(exc: Exception) -> Answer:
    """The answer to an exception raised while answering a read."""
    if isinstance(exc, ApiError):
        status, kind, reason = exc.status, exc.kind, exc.reason
    elif isinstance(exc, UnknownVersionError | VersionStateError):
        status, kind, reason = 404, "unknown_version", str(exc)
    elif isinstance(exc, StoreError):
        status, kind, reason = 400, "bad_request", str(exc)
    else:
        status, kind, reason = 500, "internal", f"{type(exc).__name__}: {exc}"
    return status, JSON, error_body(kind, reason)


def answer_get(api: Any, item_id: str, version: str | None) -> Answer:
    """GET /v1/proxies/{item_id}: {item_id, version, p_coarse, p_fine} or an ApiError."""
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
        "p_coarse": res.p_coarse[0],
        "p_fine": res.p_fine[0],
    }
    return 200, JSON, _json(doc)


def parse_batch(body: bytes) -> BatchRequest:
    """The JSON body whatever the Content-Type says; ApiError 400 if it is not one."""
    try:
        return BatchRequest.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors()
        raise ApiError(
            400, "invalid_request", str(errors[0]["msg"]) if errors else "invalid"
        ) from exc


def answer_batch(api: Any, req: BatchRequest, accept: str) -> Answer:
    """POST /v1/proxies:batch: binary (``idproxy.proxy_wire``) if ``accept`` asks for it."""
    res = api.lookup(req.item_ids, req.version)
    if wants_binary(accept):
        mask = res.found.astype("u1") * FOUND + res.corrupt.astype("u1") * CORRUPT
        return 200, OCTET, encode_batch(res.version, mask, res.p_coarse, res.p_fine)
    doc = {
        "version": res.version,
        "found": res.found,
        "corrupt": res.corrupt,
        "p_coarse": res.p_coarse,
        "p_fine": res.p_fine,
    }  # serialised directly: validating 2 x n x d floats would cost more than encoding
    return 200, JSON, _json(doc)


def wants_binary(accept: str) -> bool:
    """True if the Accept header lists application/octet-stream without q=0."""
    if OCTET not in accept:
        return False
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if media == OCTET:
            return not any(p.replace(" ", "") in ("q=0", "q=0.0") for p in params)
    return False


def route_of(path: str) -> str:
    """The metrics label of a path."""
    if path == BATCH_PATH:
        return "batch"
    if path.startswith(GET_PREFIX):
        return "get"
    return {
        "/v1/versions": "versions",
        "/healthz": "healthz",
        "/metrics": "metrics",
        "/openapi.json": "openapi",
    }.get(path, "unknown")


class HotPath:
    """The ASGI app: this layer in front of the FastAPI app ``app`` (module docstring)."""

    def __init__(self, app: Any, api: Any) -> None:
        self.app, self.api = app, api

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        api, path, start = self.api, scope["path"], time.perf_counter()
        route = route_of(path)

        async def counted_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                # counted before the reply goes out: a client reading /metrics right after
                # its answer must see its own request
                api.count_request(route, message["status"], time.perf_counter() - start)
            await send(message)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if path not in PUBLIC_PATHS and not api.authorized(headers.get("authorization")):
            reason = "missing or invalid bearer token (Authorization: Bearer <token>)"
            extra = [(b"www-authenticate", b"Bearer")]
            return await _reply(counted_send, 401, JSON, error_body("unauthorized", reason), extra)
        method = scope["method"]
        if method == "POST":
            body, too_large = await _read_body(receive, headers, api.max_request_bytes)
            if too_large is not None:
                reason = f"body of {too_large} bytes, limit {api.max_request_bytes}"
                extra = [(b"connection", b"close")]
                return await _reply(counted_send, 413, JSON, error_body("too_large", reason), extra)
            if route == "batch":
                try:
                    answer = answer_batch(api, parse_batch(body), headers.get("accept", ""))
                except Exception as exc:  # noqa: BLE001 - every failure is a JSON answer
                    answer = error_answer(exc)
                return await _reply(counted_send, *answer)
            receive = _replay(body)
        elif method == "GET" and route == "get":
            query = parse_qs(scope["query_string"].decode("latin-1"))
            version = query["version"][-1] if "version" in query else None
            try:
                answer = answer_get(api, path[len(GET_PREFIX) :], version)
            except Exception as exc:  # noqa: BLE001 - every failure is a JSON answer
                answer = error_answer(exc)
            return await _reply(counted_send, *answer)
        await self.app(scope, receive, counted_send)


async def _reply(
    send: Any, status: int, media: str, body: bytes, extra: list | None = None
) -> None:
    headers = [(b"content-type", media.encode()), (b"content-length", str(len(body)).encode())]
    await send(
        {"type": "http.response.start", "status": status, "headers": headers + (extra or [])}
    )
    await send({"type": "http.response.body", "body": body})


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
