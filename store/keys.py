"""The RocksDB key layout of `ProxyStore` (raw bytes keys in one database)::

    ptr                          JSON {"active": v, "previous": u}: the one pointer readers follow
    ver/<version>                JSON VersionInfo (status staged|active|retired, counts, manifest)
    prx/<version>/<item_id>      proxy value (store.codec: header + p_coarse + p_fine)
    fea/<encoder_version>/<item> crc32 + safetensors bytes of named feature vectors
    mdl/<name>/<version>         JSON {manifest, weights_path, registered_at}

Version names are 1-96 of ``[A-Za-z0-9._-]``; item ids are non-empty strings of at most
``MAX_ITEM_ID_BYTES`` UTF-8 bytes.
"""

from __future__ import annotations

import re

from store.errors import InvalidVectorError, StoreError

VERSION_RE = re.compile(r"^[A-Za-z0-9._-]{1,96}$")
MAX_ITEM_ID_BYTES = 256
POINTER_KEY = b"ptr"


def check_version_name(version: str) -> None:
    """Raises StoreError unless ``version`` is a valid version (or model/encoder) name."""
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise StoreError(f"invalid version name {version!r}: use 1-96 of [A-Za-z0-9._-]")


def version_key(version: str) -> bytes:
    return f"ver/{version}".encode()


def model_key(name: str, version: str) -> bytes:
    return f"mdl/{name}/{version}".encode()


def item_prefix(prefix: str, version: str) -> bytes:
    """``<prefix>/<version>/``: the start of every item key of one version."""
    return f"{prefix}/{version}/".encode()


def item_key(prefix: str, version: str, item_id: str) -> bytes:
    """``<prefix>/<version>/<item_id>``; InvalidVectorError for an empty or too long id."""
    if not isinstance(item_id, str) or not item_id:
        raise InvalidVectorError(f"item id must be a non-empty string, got {item_id!r}")
    raw = item_id.encode()
    if len(raw) > MAX_ITEM_ID_BYTES:
        raise InvalidVectorError(f"item id longer than {MAX_ITEM_ID_BYTES} bytes")
    return item_prefix(prefix, version) + raw
