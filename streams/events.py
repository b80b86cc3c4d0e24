"""Event schemas (pydantic, each with a schema version) and their wire formats.

* JSON events: ``ItemUploaded``, ``Click``, ``VersionCommit``, ``ModelAnnouncement``,
  ``DeadLetter``. Parsing is strict: unknown fields, wrong types or a wrong
  ``schema_version`` raise :class:`EventError`, whose message is the DLQ reason.
* Vector records (``ItemFeaturesRecord``, ``ProxyRecordEvent``) travel as a compact binary
  frame, not JSON floats::

      b"IDPF" | u32 header length | JSON header | raw little-endian arrays

  The header lists each array's name, shape and (when not float32) dtype; the frame must
  be exactly that long. Training samples travel in the same frame as columnar
  micro-batches (``streams/sample_batch.py``).

JSON Schemas generated from these models are in ``schemas/`` (``idproxy schemas``,
``streams/schemas.py``); byte layouts, keys and limits in docs/WIRE_FORMAT.md.

>>> rec = ProxyRecordEvent(item_id="7", proxy_version="p1", encoder_version="e1",
...                        uploaded_at=1.0, produced_at=2.0)
>>> import numpy as np
>>> frame = encode_frame(rec, {"p_coarse": np.ones(2, np.float32), "p_fine": np.zeros(2, np.float32)})
>>> back, arrays = decode_frame(frame, ProxyRecordEvent)
>>> back.item_id, arrays["p_coarse"].tolist()
('7', [1.0, 1.0])
"""

from __future__ import annotations

import json
import math
import struct
import time
from typing import Annotated, Literal, TypeVar

import numpy as np
from pydantic import Base64Bytes, BaseModel, ConfigDict, Field, ValidationError, field_validator

FRAME_MAGIC = b"IDPF"
ItemId = str
ModelT = TypeVar("ModelT", bound=BaseModel)


class EventError(ValueError):
    """An event that cannot be accepted; ``str(err)`` is the reason sent to the DLQ."""


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)
    schema_version: Literal[1] = Field(1, description="version of this event's schema (1)")


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be finite")
    return value


class ItemUploaded(_Event):
    """A new item: text fields, an optional image (base64 or a local path), upload time (s)."""

    item_id: ItemId = Field(min_length=1, max_length=256, description="the item's id")
    title: str = Field(min_length=1, description="the item's title")
    text: str = Field("", description="more text (title + text: at most 4000 chars by default)")
    image_b64: Base64Bytes | None = Field(None, description="the image file's bytes, base64")
    image_path: str | None = Field(
        None, description="an image file inside the workers' image root (used without image_b64)"
    )
    uploaded_at: float = Field(
        default_factory=time.time, description="upload time, Unix seconds (default: when parsed)"
    )

    _check_time = field_validator("uploaded_at")(_finite)

    def content_text(self) -> str:
        return f"{self.title}. {self.text}".strip() if self.text else self.title


# A click's context value: strings, int64 integers and finite floats, checked on the
# click itself (where a bad value is dead-lettered with the click's own bytes).
ContextValue = (
    str
    | Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
    | Annotated[float, Field(allow_inf_nan=False)]
)
MAX_CLICK_BYTES = 64 << 10  # a click's JSON; its re-keyed copy must fit the broker's limit


class Click(_Event):
    """A user's response to an item: label 1 = click, 0 = shown but not clicked.

    Context values are strings, int64 integers or finite floats:

    >>> parse_json(b'{"user_id":"u","item_id":"i","label":1,"ts":5,"context":{"a":NaN}}', Click)
    Traceback (most recent call last):
    ...
    streams.events.EventError: invalid Click: context.a.str: Input should be a valid string
    """

    user_id: str = Field(min_length=1, max_length=256, description="the user's id")
    item_id: ItemId = Field(min_length=1, max_length=256, description="the item's id")
    label: Literal[0, 1] = Field(description="1 = clicked, 0 = shown but not clicked")
    ts: float = Field(description="time of the response, Unix seconds (finite)")
    context: dict[str, ContextValue] = Field(
        default_factory=dict, description="free context: strings, int64 integers, finite floats"
    )

    _check_time = field_validator("ts")(_finite)


class VersionCommit(_Event):
    """Control marker: publish ``version`` once ``expected_items`` of it are stored."""

    version: str = Field(
        pattern=r"^[A-Za-z0-9._-]{1,96}$", description="the proxy version to publish"
    )
    expected_items: int = Field(ge=1, description="items the version must hold to be published")
    kind: Literal["proxies"] = Field("proxies", description="what is versioned")
    created_at: float = Field(default_factory=time.time, description="Unix seconds")


class ModelAnnouncement(_Event):
    """A model artefact on the compacted ``models`` topic (key = ``key``; the newest wins).

    ``kind`` "bundle": proxy heads (coarse φ, fine φ̃, normaliser, pooling), key "bundle";
    "snapshot": an online trainer's ID table (ids, rows, update counts) and fine head, key
    "snapshot/<variant>". The file is at ``uri`` in the artefact store; readers load it
    only if its bytes hash to ``sha256`` (``proxy_model.artifacts``).
    """

    key: str = Field(pattern=r"^[A-Za-z0-9._/-]{1,96}$", description="compaction key")
    id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,96}$", description="artefact id")
    kind: Literal["bundle", "snapshot"]
    parent: str | None = Field(None, description="the artefact this one was derived from")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="of the file's bytes")
    uri: str = Field(max_length=2048, description="fsspec URI of the safetensors file")
    producer: str = Field(max_length=96, description="the component that wrote it")
    created_at: float = Field(default_factory=time.time, description="Unix seconds")


class DeadLetter(_Event):
    """A rejected input with where it came from, the original bytes and the reason."""

    source_topic: str = Field(description="topic of the rejected record")
    partition: int = Field(description="its partition")
    offset: int = Field(description="its offset")
    key_b64: Base64Bytes | None = Field(
        None, description="its key, base64 (null: no key); cut to 64 KiB"
    )
    value_b64: Base64Bytes = Field(description="its value, base64 (a tombstone: ''); cut to 8 MiB")
    reason: str = Field(description="why it was rejected (a cut is noted at the end)")
    component: str = Field(
        description="who rejected it: worker, processor, materializer or trainer"
    )
    at: float = Field(default_factory=time.time, description="when, Unix seconds")


class ItemFeaturesRecord(_Event):
    """Header of a binary frame carrying z [D] and z_groups [G, D] of one item."""

    item_id: ItemId = Field(description="the item's id")
    encoder_version: str = Field(description="the encoder that produced the features")
    uploaded_at: float = Field(description="the item's upload time, Unix seconds")
    produced_at: float = Field(description="when the frame was produced, Unix seconds")


class ProxyRecordEvent(_Event):
    """Header of a binary frame carrying p_coarse [d] and p_fine [d] of one item."""

    item_id: ItemId = Field(description="the item's id")
    proxy_version: str = Field(description="the proxy version the vectors belong to")
    encoder_version: str = Field(description="the encoder behind the proxy heads")
    uploaded_at: float = Field(description="the item's upload time, Unix seconds")
    produced_at: float = Field(description="when the frame was produced, Unix seconds")


def parse_json(raw: bytes | None, model: type[ModelT]) -> ModelT:
    """Bytes -> event, or EventError with a readable reason."""
    if raw is None:
        raise EventError("empty message (tombstone)")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "message"
        raise EventError(f"invalid {model.__name__}: {where}: {first['msg']}") from exc


def to_json(event: BaseModel) -> bytes:
    return event.model_dump_json().encode()


FRAME_DTYPES = frozenset({"<f4", "<f8", "<i8", "<i4", "|i1", "|b1"})  # little-endian
_NP_DTYPES = {dtype: np.dtype(dtype) for dtype in FRAME_DTYPES}


def encode_frame(
    header: BaseModel, arrays: dict[str, np.ndarray], dtypes: dict[str, str] | None = None
) -> bytes:
    """Header model + named arrays -> one binary frame.

    Arrays are written as little-endian float32, except those named in ``dtypes`` (one of
    ``FRAME_DTYPES``), whose dtype the header then records: ``[name, shape, dtype]``.
    """
    dtypes = dtypes or {}
    entries, blobs = [], []
    for name, a in arrays.items():
        dtype = dtypes.get(name, "<f4")
        if dtype not in FRAME_DTYPES:
            raise ValueError(f"array {name!r}: dtype {dtype!r} not in {sorted(FRAME_DTYPES)}")
        a = np.ascontiguousarray(a, dtype=dtype)
        entries.append([name, list(a.shape)] + ([dtype] if dtype != "<f4" else []))
        blobs.append(a.tobytes())
    head = json.dumps({"header": header.model_dump(mode="json"), "arrays": entries}).encode()
    return FRAME_MAGIC + struct.pack("<I", len(head)) + head + b"".join(blobs)


def decode_frame(raw: bytes, model: type[ModelT]) -> tuple[ModelT, dict[str, np.ndarray]]:
    """Binary frame -> (header model, {name: array}); EventError if malformed."""
    if raw is None or len(raw) < 8 or raw[:4] != FRAME_MAGIC:
        raise EventError("not an IDPF binary frame")
    (n,) = struct.unpack("<I", raw[4:8])
    try:
        meta = json.loads(raw[8 : 8 + n])
        header = model.model_validate(meta["header"])
        arrays, offset = {}, 8 + n
        for entry in meta["arrays"]:
            name, shape, dtype = (*entry, "<f4") if len(entry) == 2 else entry
            if dtype not in FRAME_DTYPES or not isinstance(name, str):
                raise EventError(f"array {name!r} of unsupported dtype {dtype!r}")
            if any(not isinstance(d, int) or d < 0 for d in shape):
                raise EventError(f"array {name!r} has a bad shape {shape!r}")
            np_dtype = _NP_DTYPES[dtype]
            size = math.prod(shape) * np_dtype.itemsize
            if offset + size > len(raw):
                raise EventError(f"frame truncated in array {name!r}")
            a = np.frombuffer(raw[offset : offset + size], np_dtype)
            arrays[name] = a if len(shape) == 1 else a.reshape(shape)
            offset += size
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        # RecursionError: a header nested past json's recursion limit (it escaped as a
        # crash into consumers that expect EventError, e.g. the trainer's item cache)
        raise EventError(f"malformed frame: {exc}") from exc
    if offset != len(raw):
        raise EventError(f"frame has {len(raw) - offset} trailing bytes")
    return header, arrays
