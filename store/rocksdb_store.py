"""`ProxyStore`: the RocksDB (rocksdict) implementation of `store.base.ProxyStoreProtocol`.

Versioned proxies, item features and model manifests live in one RocksDB (key layout:
``store.keys``; value format: ``store.codec``). Every multi-key change is one atomic
RocksDB write batch; pointer switches and version metadata are synced writes.
``read_only=True`` opens a RocksDB *secondary* instance that follows the writer.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rocksdict import WriteBatch
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from store.base import BatchResult, ProxyRecord, VersionInfo
from store.codec import DTYPES, decode_many, encode_batch, validate_vectors
from store.errors import (
    CorruptValueError,
    IncompleteVersionError,
    InvalidVectorError,
    StoreError,
    UnknownVersionError,
    VersionStateError,
)
from store.keys import (
    POINTER_KEY,
    check_version_name,
    item_key,
    item_prefix,
    model_key,
    version_key,
)
from store.rocksdb_handle import RocksDBHandle


class ProxyStore(RocksDBHandle):
    """Versioned proxy store on rocksdict; the guarantees are ``store.base``'s."""

    def __init__(
        self,
        path: str | Path,
        *,
        dim: int,
        dtype: str = "float32",
        read_only: bool = False,
        retain_versions: int = 3,
    ) -> None:
        if dtype not in DTYPES:
            raise StoreError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if retain_versions < 2:
            raise StoreError("retain_versions must be at least 2 (active + previous)")
        super().__init__(path, read_only=read_only)
        self.dim = dim
        self.dtype = dtype
        self.retain_versions = retain_versions

    # ---------------------------------------------------------------- versions
    def _info(self, version: str) -> VersionInfo | None:
        raw = self.db.get(version_key(version))
        return VersionInfo.model_validate_json(raw) if raw is not None else None

    def version_info(self, version: str) -> VersionInfo | None:
        """The version's metadata, or None if it does not exist."""
        check_version_name(version)
        return self._info(version)

    def _require(self, version: str) -> VersionInfo:
        check_version_name(version)
        info = self._info(version)
        if info is None:
            raise UnknownVersionError(f"unknown version {version!r}")
        return info

    def _pointer(self) -> dict:
        raw = self.db.get(POINTER_KEY)
        return json.loads(raw) if raw is not None else {"active": None, "previous": None}

    def active_version(self) -> str | None:
        """The version reads go to by default (None before the first publish)."""
        return self._pointer()["active"]

    def previous_version(self) -> str | None:
        """The version that was active before the active one."""
        return self._pointer()["previous"]

    def pointer(self) -> tuple[str | None, str | None]:
        """(active, previous) from one read of the pointer: never a mix of two states."""
        ptr = self._pointer()
        return ptr["active"], ptr["previous"]

    def versions(self) -> list[VersionInfo]:
        """All known versions, oldest first."""
        infos = [VersionInfo.model_validate_json(v) for k, v in self._prefix_items(b"ver/")]
        return sorted(infos, key=lambda i: i.created_at)

    def stage(
        self, version: str, manifest: dict | None = None, expected_items: int | None = None
    ) -> None:
        """Opens ``version`` for writing (idempotent; a published version is refused)."""
        self._writable()
        check_version_name(version)
        info = self._info(version)
        if info is not None and info.status != "staged":
            raise VersionStateError(f"version {version!r} is already {info.status}")
        if info is None:
            info = VersionInfo(version=version, status="staged", created_at=time.time())
        info.manifest = manifest if manifest is not None else info.manifest
        info.expected_items = expected_items if expected_items is not None else info.expected_items
        with self._disk("staging a version"):
            self.db.put(version_key(version), info.model_dump_json().encode(), write_opt=self._sync)

    def write_batch(
        self,
        version: str,
        item_ids: Sequence[str],
        p_coarse: np.ndarray,
        p_fine: np.ndarray,
        *,
        append: bool = False,
    ) -> None:
        """Writes [B, d] proxies of B items into a version, atomically and idempotently.

        A staged version takes any write. A published version is immutable, except that
        with ``append=True`` it accepts items it does not have yet (new uploads proxied by
        the same model version) and byte-identical rewrites (redelivered records).
        """
        self._writable()
        info = self._require(version)
        validate_vectors(p_coarse, p_fine, self.dim)
        if len(item_ids) != p_coarse.shape[0]:
            raise InvalidVectorError(f"{len(item_ids)} item ids for {p_coarse.shape[0]} rows")
        keys = [item_key("prx", version, i) for i in item_ids]
        values = encode_batch(p_coarse, p_fine, version, self.dtype)
        if info.status != "staged":
            if not append:
                raise VersionStateError(
                    f"version {version!r} is {info.status}: values are immutable"
                )
            existing = self.db[keys]
            changed = sum(old not in (None, new) for old, new in zip(existing, values, strict=True))
            if changed:
                raise VersionStateError(
                    f"version {version!r} is {info.status}: {changed} stored values would change"
                )
            added = len({k for k, old in zip(keys, existing, strict=True) if old is None})
        batch = WriteBatch(raw_mode=True)
        for key, value in zip(keys, values, strict=True):
            batch.put(key, value)
        if info.status != "staged" and added:
            # appended items count in the version's metadata, in the same atomic write
            info.item_count += added
            batch.put(version_key(version), info.model_dump_json().encode())
        with self._disk("writing proxies"):
            self.db.write(batch)

    def count_items(self, version: str) -> int:
        """Items written into ``version`` so far (a key scan)."""
        return sum(1 for _ in self._prefix_keys(item_prefix("prx", version)))

    def publish(self, version: str, expected_items: int | None = None) -> VersionInfo:
        """Makes ``version`` the active one in one atomic pointer switch (only if complete)."""
        self._writable()
        info = self._require(version)
        if info.status == "active":
            return info
        if info.status != "staged":
            raise VersionStateError(f"version {version!r} is {info.status}; use rollback()")
        expected = expected_items if expected_items is not None else info.expected_items
        count = self.count_items(version)
        if count == 0 or (expected is not None and count < expected):
            raise IncompleteVersionError(
                f"version {version!r} has {count} items, expected {expected or '> 0'}"
            )
        return self._switch(info, count=count)

    def rollback(self, version: str) -> VersionInfo:
        """Makes an earlier published (retired) version active again."""
        self._writable()
        info = self._require(version)
        if info.status == "staged":
            raise VersionStateError(f"version {version!r} was never published: publish() it")
        return self._switch(info)

    def _switch(self, info: VersionInfo, count: int | None = None) -> VersionInfo:
        pointer = self._pointer()
        old = pointer["active"]
        if old == info.version:
            return info
        now = time.time()
        batch = WriteBatch(raw_mode=True)
        if old is not None and (old_info := self._info(old)) is not None:
            old_info.status = "retired"
            batch.put(version_key(old), old_info.model_dump_json().encode())
        info.status = "active"
        info.published_at = info.published_at or now
        if count is not None:
            info.item_count = count
        batch.put(version_key(info.version), info.model_dump_json().encode())
        batch.put(POINTER_KEY, json.dumps({"active": info.version, "previous": old}).encode())
        with self._disk("switching the active version"):
            self.db.write(batch, write_opt=self._sync)
        return info

    def discard(self, version: str) -> None:
        """Drops a staged (e.g. partial) version and its values."""
        self._writable()
        info = self._require(version)
        if info.status != "staged":
            raise VersionStateError(f"version {version!r} is {info.status}, not staged")
        self._delete_version(version)

    def _delete_version(self, version: str) -> None:
        prefix = item_prefix("prx", version)
        self.db.delete_range(prefix, prefix[:-1] + b"0")  # '0' sorts right after '/'
        self.db.delete(version_key(version), write_opt=self._sync)

    def gc(self) -> list[str]:
        """Deletes published versions beyond the newest ``retain_versions`` (never active/previous)."""
        self._writable()
        pointer = self._pointer()
        keep = {pointer["active"], pointer["previous"]}
        published = sorted(
            (i for i in self.versions() if i.status != "staged"),
            key=lambda i: i.published_at or i.created_at,
            reverse=True,
        )
        removed = []
        for info in published[self.retain_versions :]:
            if info.version not in keep:
                self._delete_version(info.version)
                removed.append(info.version)
        return removed

    # ------------------------------------------------------------------- reads
    def _readable_version(self, version: str | None) -> str | None:
        if version is None:
            return self.active_version()
        info = self._require(version)
        if info.status == "staged":
            raise VersionStateError(f"version {version!r} is not published yet")
        return version

    def get(self, item_id: str, version: str | None = None) -> ProxyRecord | None:
        """One item's proxies from the active (or a named published) version; None if absent."""
        v = self._readable_version(version)
        if v is None:
            return None
        raw = self.db.get(item_key("prx", v, item_id))
        if raw is None:
            return None
        coarse, fine, ok = decode_many([raw], self.dim, self.dtype, v)
        if not ok[0]:
            raise CorruptValueError(f"stored value of item {item_id!r} in {v!r} is corrupt")
        return ProxyRecord(item_id=item_id, version=v, p_coarse=coarse[0], p_fine=fine[0])

    def get_many(self, item_ids: Sequence[str], version: str | None = None) -> BatchResult:
        """Vectorised read: [N, d] arrays plus found / corrupt masks; misses are zeros."""
        v = self._readable_version(version)
        n = len(item_ids)
        zeros = np.zeros((n, self.dim), np.float32)
        if v is None or n == 0:
            none = np.zeros(n, bool)
            return BatchResult(v, zeros, zeros.copy(), none, none.copy())
        prefix = item_prefix("prx", v)
        raws = self.db[[prefix + i.encode() for i in item_ids]]
        present = [r for r in raws if r is not None]
        if len(present) == n:  # the common case: everything found
            coarse, fine, ok = decode_many(raws, self.dim, self.dtype, v)
            return BatchResult(v, coarse, fine, ok, ~ok)
        found = np.fromiter((r is not None for r in raws), bool, count=n)
        coarse, fine = zeros, zeros.copy()
        corrupt = np.zeros(n, bool)
        if present:
            c, f, ok = decode_many(present, self.dim, self.dtype, v)
            coarse[found], fine[found] = c, f
            corrupt[found] = ~ok
            found &= ~corrupt
        return BatchResult(v, coarse, fine, found, corrupt)

    # ---------------------------------------------------------------- features
    def put_features(
        self, item_id: str, encoder_version: str, vectors: dict[str, np.ndarray]
    ) -> None:
        """Caches one item's features (e.g. {"z": [D], "z_groups": [G, D]}) for an encoder version."""
        self._writable()
        check_version_name(encoder_version)
        for name, arr in vectors.items():
            if not isinstance(arr, np.ndarray) or not np.issubdtype(arr.dtype, np.floating):
                raise InvalidVectorError(f"feature {name!r} must be a floating numpy array")
            if not np.isfinite(arr).all():
                raise InvalidVectorError(f"feature {name!r} contains NaN or Inf")
        blob = st_save({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in vectors.items()})
        with self._disk("writing features"):
            self.db.put(
                item_key("fea", encoder_version, item_id),
                zlib.crc32(blob).to_bytes(4, "little") + blob,
            )

    def get_features(self, item_id: str, encoder_version: str) -> dict[str, np.ndarray] | None:
        """The cached features of an item, or None; CorruptValueError on a bad checksum."""
        raw = self.db.get(item_key("fea", encoder_version, item_id))
        if raw is None:
            return None
        if zlib.crc32(raw[4:]).to_bytes(4, "little") != raw[:4]:
            raise CorruptValueError(
                f"features of {item_id!r} under {encoder_version!r} are corrupt"
            )
        return st_load(raw[4:])

    # ---------------------------------------------------------------- registry
    def register_model(
        self, name: str, version: str, manifest: dict, weights_path: str | None = None
    ) -> None:
        """Records a model version's manifest and where its safetensors weights live."""
        self._writable()
        check_version_name(name)
        check_version_name(version)
        record = {"manifest": manifest, "weights_path": weights_path, "registered_at": time.time()}
        self.db.put(model_key(name, version), json.dumps(record).encode(), write_opt=self._sync)

    def get_model(self, name: str, version: str) -> dict | None:
        """{manifest, weights_path, registered_at} of a registered model version, or None."""
        raw = self.db.get(model_key(name, version))
        return json.loads(raw) if raw is not None else None

    def __enter__(self) -> ProxyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
