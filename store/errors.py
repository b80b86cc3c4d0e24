"""Errors of the proxy store. Every rejection happens before anything is written."""


class StoreError(Exception):
    """Base class of all store errors."""


class InvalidVectorError(StoreError):
    """Wrong shape, dimension or dtype, or a NaN/Inf value."""


class UnknownVersionError(StoreError):
    """The version was never staged (or was garbage-collected)."""


class VersionStateError(StoreError):
    """The operation does not fit the version's state (e.g. writing to a published one)."""


class IncompleteVersionError(StoreError):
    """publish() refused: fewer items written than the version expects."""


class CorruptValueError(StoreError):
    """A stored value failed its header or checksum check."""


class StoreIOError(StoreError):
    """The disk refused a write (full, read-only, I/O error). Nothing half-written becomes
    visible; the caller should keep its input (e.g. not commit offsets) and retry later."""
