"""A small typed client for the proxy store's read API (`idproxy store serve`).

One `httpx.Client` per `ProxyClient` (connections are reused); every call has a timeout;
connection errors, timeouts and 5xx answers are retried ``retries`` times with exponential
backoff, 4xx never. Failures raise: `ProxyNotFound` (404 item), `UnknownVersion` (404
version), `ProxyUnavailable` (no answer after the retries) or `ProxyAPIError` (any other
error answer, with ``status``, ``error`` and ``reason``); a miss in a batch is explicit in
``found``, never a silent zero vector. The examples run against a live server
(tests/store/test_client.py) holding items "a" and "b/c" in version v1:

>>> client = ProxyClient(base_url, token=token, timeout_s=5.0, retries=2)
>>> client.healthz()["status"]
'ok'
>>> rec = client.get("a")
>>> rec.version, rec.p_coarse.shape, rec.p_coarse.dtype
('v1', (4,), dtype('float32'))
>>> batch = client.get_many(["a", "nope", "b/c"])
>>> batch.version, batch.p_fine.shape, batch.found.tolist()
('v1', (3, 4), [True, False, True])
>>> batch.missing
['nope']
>>> client.get_many(["a"], binary=False).p_coarse.tolist() == [rec.p_coarse.tolist()]
True
>>> client.versions()["active"]
'v1'
>>> client.get("nope")
Traceback (most recent call last):
...
idproxy.client.ProxyNotFound: 404 not_found: no proxy for item 'nope' in version 'v1'
>>> client.get("a", version="v9")
Traceback (most recent call last):
...
idproxy.client.UnknownVersion: 404 unknown_version: unknown version 'v9'
>>> client.close()
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np

from idproxy.proxy_wire import CORRUPT, FOUND, WireFormatError, decode_batch

OCTET = "application/octet-stream"


class ProxyAPIError(Exception):
    """An error answer (``status``, ``error`` kind, ``reason``) or a broken response."""

    def __init__(self, status: int | None, error: str, reason: str) -> None:
        super().__init__(f"{status} {error}: {reason}" if status else f"{error}: {reason}")
        self.status, self.error, self.reason = status, error, reason


class ProxyNotFound(ProxyAPIError):
    """404: the item has no proxy in the version."""


class UnknownVersion(ProxyAPIError):
    """404: the version does not exist or is not published."""


class ProxyUnavailable(ProxyAPIError):
    """No usable answer after the retries (connection error, timeout or 5xx)."""


@dataclass(frozen=True)
class Proxy:
    """One item's proxies: p_coarse [d], p_fine [d] float32."""

    item_id: str
    version: str
    p_coarse: np.ndarray
    p_fine: np.ndarray


@dataclass(frozen=True)
class ProxyBatch:
    """p_coarse / p_fine [n, d] float32, found / corrupt [n] bool, from one version.

    Rows where ``found`` is False hold zeros: use the mask. Binary answers are read-only
    views over the response body (``.copy()`` to write).
    """

    item_ids: list[str]
    version: str | None
    p_coarse: np.ndarray
    p_fine: np.ndarray
    found: np.ndarray
    corrupt: np.ndarray = field(repr=False)

    @property
    def missing(self) -> list[str]:
        """The ids with no usable proxy (absent or corrupt)."""
        return [i for i, ok in zip(self.item_ids, self.found, strict=True) if not ok]


class ProxyClient:
    """Client of the read API at ``base_url`` (e.g. ``http://127.0.0.1:8765``)."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout_s: float = 5.0,
        retries: int = 2,
        backoff_s: float = 0.1,
        max_batch_items: int = 1000,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.retries, self.backoff_s = retries, backoff_s
        self.max_batch_items = max_batch_items  # the server's store.max_batch_items
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s, transport=transport
        )

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request with bounded retries on connection errors, timeouts and 5xx."""
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                resp = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if last:
                    raise ProxyUnavailable(
                        None, type(exc).__name__, str(exc) or "no answer"
                    ) from exc
            else:
                if resp.status_code < 500 or last:
                    return _check(resp, attempts=attempt + 1)
            time.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    def get(self, item_id: str, version: str | None = None) -> Proxy:
        """One item's proxies; `ProxyNotFound` when it has none."""
        params = {"version": version} if version is not None else None
        doc = self._call("GET", f"/v1/proxies/{quote(item_id, safe='')}", params=params).json()
        return Proxy(
            item_id=doc["item_id"],
            version=doc["version"],
            p_coarse=np.asarray(doc["p_coarse"], np.float32),
            p_fine=np.asarray(doc["p_fine"], np.float32),
        )

    def get_many(
        self, item_ids: list[str], version: str | None = None, binary: bool = True
    ) -> ProxyBatch:
        """Many items from one version (binary answer by default, JSON with binary=False).

        More than ``max_batch_items`` ids go in several requests; the first one's version
        is pinned for the others, so the answer never mixes two versions.
        """
        ids, step = list(item_ids), max(1, self.max_batch_items)
        if len(ids) <= step:
            return self._get_batch(ids, version, binary)
        parts = [self._get_batch(ids[:step], version, binary)]
        pinned = version if version is not None else parts[0].version
        parts += [
            self._get_batch(ids[k : k + step], pinned, binary) for k in range(step, len(ids), step)
        ]
        return ProxyBatch(
            ids,
            parts[0].version,
            *(
                np.concatenate([getattr(p, a) for p in parts])
                for a in ("p_coarse", "p_fine", "found", "corrupt")
            ),
        )

    def _get_batch(self, item_ids: list[str], version: str | None, binary: bool) -> ProxyBatch:
        body: dict[str, Any] = {"item_ids": item_ids}
        if version is not None:
            body["version"] = version
        accept = OCTET if binary else "application/json"
        resp = self._call("POST", "/v1/proxies:batch", json=body, headers={"Accept": accept})
        n = len(body["item_ids"])
        if binary:
            if resp.headers.get("content-type", "").split(";")[0] != OCTET:
                raise ProxyAPIError(resp.status_code, "bad_response", "expected a binary body")
            try:
                wire = decode_batch(resp.content)
            except WireFormatError as exc:
                raise ProxyAPIError(resp.status_code, "bad_response", str(exc)) from exc
            out = ProxyBatch(
                body["item_ids"],
                wire.version,
                wire.p_coarse,
                wire.p_fine,
                wire.mask == FOUND,
                wire.mask == CORRUPT,
            )
        else:
            doc = resp.json()
            out = ProxyBatch(
                body["item_ids"],
                doc["version"],
                np.asarray(doc["p_coarse"], np.float32).reshape(n, -1),
                np.asarray(doc["p_fine"], np.float32).reshape(n, -1),
                np.asarray(doc["found"], bool),
                np.asarray(doc["corrupt"], bool),
            )
        if len(out.found) != n or out.p_coarse.shape[0] != n:
            raise ProxyAPIError(resp.status_code, "bad_response", f"{len(out.found)} rows for {n}")
        return out

    def versions(self) -> dict[str, Any]:
        """``{active, previous, versions: [...]}``."""
        return self._call("GET", "/v1/versions").json()

    def healthz(self) -> dict[str, Any]:
        """``{status, active_version}``."""
        return self._call("GET", "/healthz").json()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ProxyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check(resp: httpx.Response, attempts: int) -> httpx.Response:
    """The response if 2xx, else the matching exception."""
    if resp.is_success:
        return resp
    try:
        doc = resp.json()
        error, reason = str(doc["error"]), str(doc["reason"])
    except (ValueError, KeyError, TypeError):
        error, reason = "http_error", resp.text[:200] or resp.reason_phrase
    if resp.status_code == 404 and error == "not_found":
        raise ProxyNotFound(404, error, reason)
    if resp.status_code == 404 and error == "unknown_version":
        raise UnknownVersion(404, error, reason)
    if resp.status_code >= 500:
        raise ProxyUnavailable(resp.status_code, error, f"{reason} (after {attempts} attempts)")
    raise ProxyAPIError(resp.status_code, error, reason)
