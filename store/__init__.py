"""The RocksDB versioned proxy store (`ProxyStore`) and its HTTP read API."""

from store.errors import (
    CorruptValueError,
    IncompleteVersionError,
    InvalidVectorError,
    StoreError,
    UnknownVersionError,
    VersionStateError,
)
from store.proxy_store import BatchResult, ProxyRecord, ProxyStore, VersionInfo

__all__ = [
    "BatchResult",
    "CorruptValueError",
    "IncompleteVersionError",
    "InvalidVectorError",
    "ProxyRecord",
    "ProxyStore",
    "StoreError",
    "UnknownVersionError",
    "VersionInfo",
    "VersionStateError",
]
