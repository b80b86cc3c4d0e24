"""`RocksDBHandle`: one open RocksDB (rocksdict, raw bytes keys) and its failure handling.

A writer opens the database as the primary (RocksDB's lock refuses a second writer); a
reader (``read_only=True``) opens a *secondary* instance in a scratch directory that
follows the primary (``refresh()`` catches up). The engine's I/O failures (rocksdict
raises a bare ``Exception``) become ``StoreError`` / ``StoreIOError`` with the path.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from rocksdict import AccessType, Options, Rdict, WriteOptions

from store.errors import StoreError, StoreIOError


class RocksDBHandle:
    """The database of one store directory; ``db`` is the rocksdict ``Rdict``."""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        options = Options(raw_mode=True)
        if read_only:
            if not (self.path / "CURRENT").exists():
                raise StoreError(f"no store at {self.path}")
            self._secondary_dir = tempfile.TemporaryDirectory(prefix="idproxy-store-reader-")
            access = AccessType.secondary(self._secondary_dir.name)
            self.db = Rdict(str(self.path), options=options, access_type=access)
        else:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                self.db = Rdict(str(self.path), options=options)
            except Exception as exc:  # read-only or full filesystem, held lock, ...
                raise StoreError(f"cannot open store for writing at {self.path}: {exc}") from exc
        self._sync = WriteOptions()
        self._sync.sync = True

    def _writable(self) -> None:
        if self.read_only:
            raise StoreError("this store was opened read-only")

    def _prefix_keys(self, prefix: bytes) -> Iterator[bytes]:
        for key in self.db.keys(from_key=prefix):
            if not key.startswith(prefix):
                return
            yield key

    def _prefix_items(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self.db.items(from_key=prefix):
            if not key.startswith(prefix):
                return
            yield key, value

    @contextlib.contextmanager
    def _disk(self, what: str) -> Iterator[None]:
        """Turns the engine's I/O failures (rocksdict raises a bare Exception) into
        StoreIOError with the path and the reason."""
        try:
            yield
        except StoreError:
            raise
        except Exception as exc:
            raise StoreIOError(f"{what} failed at {self.path}: {exc}") from exc

    def refresh(self) -> None:
        """Read-only instances: catch up with the writer's latest published state."""
        if self.read_only:
            self.db.try_catch_up_with_primary()

    def reopen(self) -> None:
        """Closes and opens the database again (RocksDB stays read-only after a failed
        write until it is reopened); StoreError if it cannot be opened."""
        with contextlib.suppress(Exception):  # it may be closed already
            self.db.close()
        try:
            self.db = Rdict(str(self.path), options=Options(raw_mode=True))
        except Exception as exc:
            raise StoreIOError(f"cannot reopen store at {self.path}: {exc}") from exc

    def close(self) -> None:
        self.db.close()
        if self.read_only:
            self._secondary_dir.cleanup()
