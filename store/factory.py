"""`open_store`: the one place a proxy store is built from the settings."""

from __future__ import annotations

from pathlib import Path

from idproxy.settings import Settings
from store.base import ProxyStoreProtocol
from store.rocksdb_store import ProxyStore


def open_store(
    settings: Settings,
    path: str | Path | None = None,
    *,
    read_only: bool = False,
    dim: int | None = None,
) -> ProxyStoreProtocol:
    """Opens the RocksDB store at ``path`` (default ``settings.store.path``).

    d is ``settings.model.id_dim`` unless ``dim`` overrides it (e.g. a tiny model's 8);
    dtype and retention come from ``settings.store``. A writer unless ``read_only``
    (a reader follows the writer, see ``ProxyStoreProtocol.refresh``). Raises StoreError
    if the store cannot be opened.
    """
    s = settings.store
    return ProxyStore(
        path or s.path,
        dim=dim if dim is not None else settings.model.id_dim,
        dtype=s.dtype,
        read_only=read_only,
        retain_versions=s.retain_versions,
    )
