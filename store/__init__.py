"""The versioned proxy store and its HTTP read API.

``store.base.ProxyStoreProtocol`` is the contract; ``ProxyStore`` (``store.rocksdb_store``)
implements it on RocksDB; ``open_store(settings)`` builds it from the settings.
"""

from store.base import BatchResult, ProxyRecord, ProxyStoreProtocol, VersionInfo
from store.errors import (
    CorruptValueError,
    IncompleteVersionError,
    InvalidVectorError,
    StoreError,
    UnknownVersionError,
    VersionStateError,
)
from store.factory import open_store
from store.rocksdb_store import ProxyStore

__all__ = [
    "BatchResult",
    "CorruptValueError",
    "IncompleteVersionError",
    "InvalidVectorError",
    "ProxyRecord",
    "ProxyStore",
    "ProxyStoreProtocol",
    "StoreError",
    "UnknownVersionError",
    "VersionInfo",
    "VersionStateError",
    "open_store",
]
