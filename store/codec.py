"""Binary layout of one stored proxy value: a 16-byte header and the raw vectors.

Header (little endian)::

    magic  2s  b"PX"
    format u1  1
    dtype  u1  0 = float32, 1 = float16
    dim    u2  d
    pad    u2  0
    vhash  u4  crc32 of the version string (a value copied under another version is caught)
    csum   u4  position-weighted word checksum of the payload (see :func:`checksum`)

Payload: ``p_coarse`` then ``p_fine``, each ``d`` values of ``dtype``. Every value of one
version has the same size, so a batch of values decodes with a handful of numpy calls
instead of a Python loop per item (that is what keeps ``get_many`` close to the raw engine).

>>> import numpy as np
>>> blob = encode(np.ones(4, np.float32), np.zeros(4, np.float32), "v1", "float32")
>>> len(blob), decode_many([blob], 4, "float32", "v1")[2].tolist()
(48, [True])
"""

from __future__ import annotations

import functools
import struct
import zlib

import numpy as np

from store.errors import InvalidVectorError

MAGIC = b"PX"
FORMAT = 1
HEADER = struct.Struct("<2sBBHHII")
DTYPES = {"float32": (0, np.dtype("<f4")), "float16": (1, np.dtype("<f2"))}


def version_hash(version: str) -> int:
    return zlib.crc32(version.encode())


def value_size(dim: int, dtype: str) -> int:
    """Bytes of one stored value: header + 2·dim elements."""
    return HEADER.size + 2 * dim * DTYPES[dtype][1].itemsize


def checksum(payload_words: np.ndarray) -> np.ndarray:
    """[B, W] uint32 payload words -> [B] uint32: Σ_i (i+1)·w_i mod 2^32.

    Position weights make swapped words change the sum; any single corrupted word changes
    it too. For W ≤ 1024 every partial sum stays below 2^53, so a float64 matrix-vector
    product is exact and much faster than integer reductions; larger W use uint64.
    """
    n_words = payload_words.shape[1]
    if n_words <= 1024:
        weights = np.arange(1, n_words + 1, dtype=np.float64)
        sums = payload_words.astype(np.float64) @ weights
        return np.fmod(sums, 2.0**32).astype(np.uint64).astype(np.uint32)
    weights = np.arange(1, n_words + 1, dtype=np.uint64)
    return ((payload_words.astype(np.uint64) * weights).sum(axis=1) & 0xFFFFFFFF).astype(np.uint32)


def validate_vectors(p_coarse: np.ndarray, p_fine: np.ndarray, dim: int) -> None:
    """Raises InvalidVectorError unless both are finite floating arrays of shape [B, dim]."""
    for name, arr in (("p_coarse", p_coarse), ("p_fine", p_fine)):
        if not isinstance(arr, np.ndarray) or not np.issubdtype(arr.dtype, np.floating):
            raise InvalidVectorError(
                f"{name} must be a floating numpy array, got {getattr(arr, 'dtype', type(arr))}"
            )
        if arr.ndim != 2 or arr.shape[1] != dim:
            raise InvalidVectorError(f"{name} has shape {arr.shape}, expected [B, {dim}]")
        if not np.isfinite(arr).all():
            raise InvalidVectorError(f"{name} contains NaN or Inf")
    if p_coarse.shape[0] != p_fine.shape[0]:
        raise InvalidVectorError(f"p_coarse has {p_coarse.shape[0]} rows, p_fine {p_fine.shape[0]}")


def encode_batch(p_coarse: np.ndarray, p_fine: np.ndarray, version: str, dtype: str) -> list[bytes]:
    """[B, d] + [B, d] -> B values (validated by the caller)."""
    code, np_dtype = DTYPES[dtype]
    dim = p_coarse.shape[1]
    payload = np.ascontiguousarray(np.concatenate([p_coarse, p_fine], axis=1).astype(np_dtype))
    if (payload.shape[1] * np_dtype.itemsize) % 4:
        raise InvalidVectorError(f"dim {dim} with {dtype} does not fill whole 4-byte words")
    sums = checksum(payload.view("<u4"))
    vh = version_hash(version)
    rows = payload.tobytes()
    step = payload.shape[1] * np_dtype.itemsize
    return [
        HEADER.pack(MAGIC, FORMAT, code, dim, 0, vh, int(sums[i])) + rows[i * step : (i + 1) * step]
        for i in range(payload.shape[0])
    ]


def encode(p_coarse: np.ndarray, p_fine: np.ndarray, version: str, dtype: str) -> bytes:
    return encode_batch(p_coarse[None], p_fine[None], version, dtype)[0]


@functools.lru_cache(maxsize=16)
def _record_dtypes(dim: int, dtype: str) -> tuple[np.dtype, np.dtype]:
    """Two views of one stored value: header + payload as uint32 words, and as floats."""
    np_dtype = DTYPES[dtype][1]
    head = [
        ("magic", "S2"),
        ("format", "u1"),
        ("dtype", "u1"),
        ("dim", "<u2"),
        ("pad", "<u2"),
        ("vhash", "<u4"),
        ("csum", "<u4"),
    ]
    words = 2 * dim * np_dtype.itemsize // 4
    return np.dtype([*head, ("words", "<u4", (words,))]), np.dtype(
        [*head, ("vec", np_dtype, (2 * dim,))]
    )


def decode_many(
    values: list[bytes], dim: int, dtype: str, version: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Values (same version) -> (p_coarse [B,d] float32, p_fine [B,d] float32, ok [B] bool).

    A value whose size, header or checksum is wrong gets ok=False and zero vectors. The
    common case (every value has the right size) decodes without a per-item Python step.
    """
    size = value_size(dim, dtype)
    n = len(values)
    buf = b"".join(values)
    if len(buf) == n * size:
        good_size = np.ones(n, bool)
    else:
        good_size = np.fromiter((len(v) == size for v in values), bool, count=n)
        buf = b"".join(v if ok else bytes(size) for v, ok in zip(values, good_size, strict=True))
    as_words, as_floats = _record_dtypes(dim, dtype)
    rec = np.frombuffer(buf, dtype=as_words)
    ok = (
        good_size
        & (rec["magic"] == MAGIC)
        & (rec["format"] == FORMAT)
        & (rec["dtype"] == DTYPES[dtype][0])
        & (rec["dim"] == dim)
        & (rec["vhash"] == version_hash(version))
        & (checksum(rec["words"]) == rec["csum"])
    )
    vectors = np.frombuffer(buf, dtype=as_floats)["vec"].astype(np.float32)
    if not ok.all():
        vectors[~ok] = 0.0
    return vectors[:, :dim], vectors[:, dim:], ok
