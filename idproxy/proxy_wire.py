"""The binary body of ``POST /v1/proxies:batch`` (``Accept: application/octet-stream``).

Little-endian throughout; the layout is described in ``store/http_api.py`` and
docs/STORE.md. Only numpy and struct: the client imports it without the store.

>>> import numpy as np
>>> c = np.arange(6, dtype=np.float32).reshape(2, 3)
>>> mask = np.array([FOUND, MISSING], np.uint8)
>>> body = encode_batch("v1", mask, c, -c)
>>> len(body), body[:4]
(72, b'IDPX')
>>> b = decode_batch(body)
>>> b.version, b.mask.tolist(), b.p_fine[0].tolist()
('v1', [1, 0], [-0.0, -1.0, -2.0])
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

MAGIC = b"IDPX"
FORMAT_VERSION = 1
FLAG_HAS_VERSION = 1  # flags bit 0: a version string follows (else no version is active)
# magic, format version, flags, n items, dim, version length, reserved (0)
HEADER = struct.Struct("<4sHHIIHH")
MISSING, FOUND, CORRUPT = 0, 1, 2  # the values of the per-item mask bytes


class WireFormatError(ValueError):
    """A binary batch body that does not follow the layout."""


@dataclass(frozen=True)
class WireBatch:
    """A decoded body: mask [n] uint8 (MISSING/FOUND/CORRUPT), p_coarse / p_fine [n, d]."""

    version: str | None
    mask: np.ndarray
    p_coarse: np.ndarray
    p_fine: np.ndarray


def _floats_offset(version_len: int, n: int) -> int:
    end = HEADER.size + version_len + n
    return end + (-end % 4)  # the float arrays start 4-byte aligned


def encode_batch(
    version: str | None, mask: np.ndarray, p_coarse: np.ndarray, p_fine: np.ndarray
) -> bytes:
    """Header + version + mask bytes + zero padding to 4 + p_coarse + p_fine (float32 LE)."""
    n, dim = p_coarse.shape
    vbytes = (version or "").encode()
    flags = FLAG_HAS_VERSION if version is not None else 0
    head = HEADER.pack(MAGIC, FORMAT_VERSION, flags, n, dim, len(vbytes), 0)
    pad = b"\0" * (_floats_offset(len(vbytes), n) - HEADER.size - len(vbytes) - n)
    le = np.dtype("<f4")
    return b"".join(
        (
            head,
            vbytes,
            np.ascontiguousarray(mask, np.uint8).tobytes(),
            pad,
            np.ascontiguousarray(p_coarse, le).tobytes(),
            np.ascontiguousarray(p_fine, le).tobytes(),
        )
    )


def decode_batch(body: bytes) -> WireBatch:
    """Zero-copy views (read-only) over ``body``; WireFormatError if it is malformed."""
    if len(body) < HEADER.size:
        raise WireFormatError(f"body of {len(body)} bytes is shorter than the header")
    magic, fmt, flags, n, dim, vlen, _ = HEADER.unpack_from(body)
    if magic != MAGIC or fmt != FORMAT_VERSION:
        raise WireFormatError(f"not an IDPX v{FORMAT_VERSION} body (magic {magic!r}, v{fmt})")
    start = _floats_offset(vlen, n)
    if len(body) != start + 8 * n * dim:
        raise WireFormatError(f"body of {len(body)} bytes, expected {start + 8 * n * dim}")
    version = body[HEADER.size : HEADER.size + vlen].decode() if flags & FLAG_HAS_VERSION else None
    mask = np.frombuffer(body, np.uint8, count=n, offset=HEADER.size + vlen)
    floats = np.frombuffer(body, np.dtype("<f4"), count=2 * n * dim, offset=start)
    return WireBatch(
        version, mask, floats[: n * dim].reshape(n, dim), floats[n * dim :].reshape(n, dim)
    )
