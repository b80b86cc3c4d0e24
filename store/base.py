"""The proxy store's contract: `ProxyStoreProtocol`, its records and its guarantees.

The contract follows Feast's ``OnlineStore`` (write batch / read / update / teardown), with
versions as first-class objects. ``store.rocksdb_store.ProxyStore`` implements it on one
RocksDB; ``store.open_store(settings)`` builds it. Vectors are float32 with d =
``settings.model.id_dim`` (stored as float32 or float16, ``settings.store.dtype``).

Versions and guarantees:

* ``stage(v)`` opens a version for writing; ``write_batch`` is idempotent (same input, same
  bytes) and validates everything before one atomic write, so a rejected call writes
  nothing. A published version only takes *appends* (``append=True``): items it does not
  hold yet, from the same model version, e.g. items uploaded after the publish; its
  ``item_count`` grows with them in the same atomic write, so ``versions()`` is true.
* ``publish(v)`` refuses an incomplete version (fewer items than ``expected_items``), then
  switches the active pointer and the version statuses in **one** atomic, synced write.
  Values of a published version are never rewritten, so a reader that resolved the pointer
  to v keeps seeing a whole v even while a newer version is published.
* After a writer is SIGKILLed mid-version, the old version is still active and whole; the
  partial version stays *staged* and is **resumable**: stage it again, rewrite (idempotent)
  and publish. ``discard(v)`` drops it instead.
* ``gc()`` keeps the last ``retain_versions`` published versions and never collects the
  active or the previous one.
* Reads: ``get`` / ``get_many`` read the active version by default; a missing item is a
  miss (``None`` / ``found=False``), never an exception; a corrupt value is reported
  (``CorruptValueError`` from ``get``, ``corrupt=True`` from ``get_many``), never returned.
* One writer process per store. A read-only instance follows the writer (``refresh()``
  catches up) and only ever reads published versions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, Field

Status = Literal["staged", "active", "retired"]


class VersionInfo(BaseModel):
    """Metadata of one proxy version (times in unix seconds)."""

    version: str
    status: Status
    created_at: float
    published_at: float | None = None
    item_count: int = 0
    expected_items: int | None = None
    manifest: dict = Field(default_factory=dict)


@dataclass(frozen=True)
class ProxyRecord:
    """One item's proxies: p_coarse [d], p_fine [d] float32."""

    item_id: str
    version: str
    p_coarse: np.ndarray
    p_fine: np.ndarray


@dataclass(frozen=True)
class BatchResult:
    """p_coarse / p_fine [N, d] float32 (zeros where not found); found, corrupt [N] bool."""

    version: str | None
    p_coarse: np.ndarray
    p_fine: np.ndarray
    found: np.ndarray
    corrupt: np.ndarray


@runtime_checkable
class ProxyStoreProtocol(Protocol):
    """What the materializer, the read API and the CLI use of a versioned proxy store.

    Errors are ``store.errors.StoreError`` subclasses; see the module docstring for the
    guarantees every implementation keeps.
    """

    path: Path
    dim: int  # d of every vector
    read_only: bool

    # versions
    def stage(
        self, version: str, manifest: dict | None = None, expected_items: int | None = None
    ) -> None:
        """Opens ``version`` for writing (idempotent; a published version is refused)."""

    def write_batch(
        self,
        version: str,
        item_ids: Sequence[str],
        p_coarse: np.ndarray,
        p_fine: np.ndarray,
        *,
        append: bool = False,
    ) -> None:
        """Writes [B, d] proxies of B items into a version, atomically and idempotently."""

    def count_items(self, version: str) -> int:
        """Items written into ``version`` so far."""

    def publish(self, version: str, expected_items: int | None = None) -> VersionInfo:
        """Makes a complete ``version`` the active one in one atomic pointer switch."""

    def rollback(self, version: str) -> VersionInfo:
        """Makes an earlier published (retired) version active again."""

    def discard(self, version: str) -> None:
        """Drops a staged (e.g. partial) version and its values."""

    def gc(self) -> list[str]:
        """Deletes published versions beyond the retention; returns their names."""

    def version_info(self, version: str) -> VersionInfo | None:
        """The version's metadata, or None if it does not exist."""

    def versions(self) -> list[VersionInfo]:
        """All known versions, oldest first."""

    def active_version(self) -> str | None:
        """The version reads go to by default (None before the first publish)."""

    def previous_version(self) -> str | None:
        """The version that was active before the active one."""

    def pointer(self) -> tuple[str | None, str | None]:
        """(active, previous) from one read: never a mix of two states."""

    # reads
    def get(self, item_id: str, version: str | None = None) -> ProxyRecord | None:
        """One item's proxies from the active (or a named published) version; None if absent."""

    def get_many(self, item_ids: Sequence[str], version: str | None = None) -> BatchResult:
        """Vectorised read of N items: [N, d] arrays plus found / corrupt masks."""

    def refresh(self) -> None:
        """Read-only instances: catch up with the writer's latest published state."""

    # lifecycle
    def reopen(self) -> None:
        """Opens the store again after a failed write (``StoreIOError`` if it cannot)."""

    def close(self) -> None:
        """Releases the store (a read-only instance also drops its scratch directory)."""

    def __enter__(self) -> ProxyStoreProtocol: ...

    def __exit__(self, *exc: object) -> None: ...
