"""The ``samples`` contract: training samples as binary columnar micro-batches.

One Kafka record on ``samples`` holds the samples the processor built from one partition
of ``clicks-by-item`` in a short window, as one ``IDPF`` frame (``streams/events.py``):
a :class:`SampleBatchHeader` and one array per column, all of length ``count`` (N):

============================  ==========  ==============================================
column                        dtype       meaning
============================  ==========  ==============================================
``sample_key``  [N]           int64       the click's identity: partition << 40 | offset
``user``        [N]           int64       :func:`id_hash` of the user id
``item``        [N]           int64       :func:`id_hash` of the item id
``label``       [N]           int8        0 or 1
``ts``          [N]           float64     the click's time, Unix seconds
``item_interactions`` [N]     int32       the item's interactions before this one
``item_age_s``  [N]           float32     seconds since the item's upload (NaN: unknown)
``item_known``  [N]           bool        the upload was seen before the click
``history``     [N, H]        int64       the user's clicked items before it, oldest first
``history_count`` [N]         int8        how many of the H history slots are used
============================  ==========  ==============================================

**Ids are a stable 64-bit hash of the string id** (BLAKE2b, 8 bytes, little-endian,
signed), not ids the processor assigns. A hash needs no shared dictionary: any producer,
the trainer and a ranking team's own code compute the same id from the string, a
restarted processor needs no id table, and a replica of the trainer needs no id
exchange. The cost is a collision chance of about n² / 2⁶⁵ (n = distinct ids: 2·10⁻⁶ for
10 million items), accepted here. Padding slots of ``history`` hold 0; a real id that
hashes to 0 is mapped to 1 (:func:`id_hash`).

**The sample key** replaces the string ``<topic>/<partition>/<offset>`` of the click:
duplicates (re-deliveries after a crash) have the same key. Offsets below 2⁴⁰ (10¹²) and
partitions below 2²³ fit.

The click's free-form ``context`` is not carried: the rankers do not use it; a column is
the way to add it.

>>> batch = SampleBatch.from_rows([
...     dict(sample_key=sample_key(0, 7), user="u1", item="42", label=1, ts=5.0,
...          history=["3", "9"], item_interactions=0, item_age_s=None, item_known=True)],
...     history_len=3)
>>> back = SampleBatch.decode(batch.encode())
>>> back.count, back.history_count.tolist(), back.item_age_s.tolist()
(1, [2], [nan])
>>> bool(back.item[0] == id_hash("42")), int(back.history[0, 2])
(True, 0)
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from streams.events import EventError, decode_frame, encode_frame

PARTITION_SHIFT = 40
MAX_BATCH_SAMPLES = 100_000  # a frame with more is refused (bounded input)
MAX_HISTORY_LEN = 127  # history_count is int8
COLUMNS: dict[str, str] = {
    "sample_key": "<i8",
    "user": "<i8",
    "item": "<i8",
    "label": "|i1",
    "ts": "<f8",
    "item_interactions": "<i4",
    "item_age_s": "<f4",
    "item_known": "|b1",
    "history": "<i8",
    "history_count": "|i1",
}
_DTYPES = {name: np.dtype(dtype) for name, dtype in COLUMNS.items()}


def id_hash(item_or_user_id: str) -> int:
    """Stable signed 64-bit id of a string id (never 0: 0 pads history)."""
    digest = hashlib.blake2b(item_or_user_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True) or 1


def id_hashes(ids: Iterable[str]) -> np.ndarray:
    """:func:`id_hash` of each id -> int64 [n]."""
    return np.fromiter((id_hash(i) for i in ids), dtype=np.int64)


def sample_key(partition: int, offset: int) -> int:
    """The click's identity as one int64."""
    if not 0 <= offset < 1 << PARTITION_SHIFT or not 0 <= partition < 1 << 23:
        raise ValueError(f"partition {partition} / offset {offset} out of range")
    return partition << PARTITION_SHIFT | offset


class SampleBatchHeader(BaseModel):
    """The JSON header of a samples frame."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["samples"] = "samples"
    schema_version: Literal[1] = 1
    count: int = Field(ge=1, le=MAX_BATCH_SAMPLES, description="samples in the batch (N)")
    history_len: int = Field(ge=0, le=MAX_HISTORY_LEN, description="history slots (H)")
    produced_at: float = Field(default_factory=time.time, description="Unix seconds")


@dataclass(frozen=True)
class SampleBatch:
    """One micro-batch of training samples, column by column (see the module docstring)."""

    sample_key: np.ndarray
    user: np.ndarray
    item: np.ndarray
    label: np.ndarray
    ts: np.ndarray
    item_interactions: np.ndarray
    item_age_s: np.ndarray
    item_known: np.ndarray
    history: np.ndarray
    history_count: np.ndarray

    @property
    def count(self) -> int:
        return len(self.sample_key)

    @property
    def history_len(self) -> int:
        return self.history.shape[1]

    @classmethod
    def from_rows(cls, rows: Sequence[dict], history_len: int) -> SampleBatch:
        """Rows with string ``user``/``item``/``history`` (the last ``history_len`` kept)."""
        n = len(rows)
        history = np.zeros((n, history_len), np.int64)
        counts = np.zeros(n, np.int8)
        for k, row in enumerate(rows):
            kept = list(row["history"])[-history_len:] if history_len else []
            history[k, : len(kept)] = id_hashes(kept)
            counts[k] = len(kept)
        ages = [np.nan if r["item_age_s"] is None else r["item_age_s"] for r in rows]
        return cls(
            sample_key=np.array([r["sample_key"] for r in rows], np.int64),
            user=id_hashes(r["user"] for r in rows),
            item=id_hashes(r["item"] for r in rows),
            label=np.array([r["label"] for r in rows], np.int8),
            ts=np.array([r["ts"] for r in rows], np.float64),
            item_interactions=np.array([r["item_interactions"] for r in rows], np.int32),
            item_age_s=np.array(ages, np.float32),
            item_known=np.array([r["item_known"] for r in rows], bool),
            history=history,
            history_count=counts,
        )

    def encode(self) -> bytes:
        header = SampleBatchHeader(count=self.count, history_len=self.history_len)
        arrays = {name: getattr(self, name) for name in COLUMNS}
        return encode_frame(header, arrays, COLUMNS)

    @classmethod
    def decode(cls, raw: bytes | None, *, check_values: bool = True) -> SampleBatch:
        """One frame -> a batch; :class:`EventError` (the dead-letter reason) when the frame
        is malformed or any column breaks the contract. ``check_values=False`` checks the
        header, the columns' dtypes and shapes only, and leaves :meth:`check` (the
        values) to the caller: a consumer of many frames of one ``history_len`` may check
        their columns joined at once (a join passes exactly when every frame does)."""
        header, arrays = decode_frame(raw, SampleBatchHeader)
        n, h = header.count, header.history_len
        if set(arrays) != set(COLUMNS):
            raise EventError(f"samples frame columns {sorted(arrays)}, want {sorted(COLUMNS)}")
        for name, dtype in COLUMNS.items():
            a = arrays[name]
            shape = (n, h) if name == "history" else (n,)
            if a.dtype != _DTYPES[name] or a.shape != shape:
                raise EventError(
                    f"column {name!r} is {a.dtype}{list(a.shape)}, want {dtype}{list(shape)}"
                )
        batch = cls(**arrays)
        if check_values:
            batch.check()
        return batch

    def check(self) -> None:
        """:class:`EventError` when a value breaks the contract (every check is per sample)."""
        problem = self._problem()
        if problem:
            raise EventError(f"invalid samples batch: {problem}")

    def _problem(self) -> str | None:
        if ((self.label != 0) & (self.label != 1)).any():
            return "label not in {0, 1}"
        if not np.isfinite(self.ts).all():
            return "non-finite ts"
        if (self.item_interactions < 0).any():
            return "negative item_interactions"
        age = self.item_age_s
        if np.isinf(age).any() or (age < 0).any():
            return "item_age_s negative or infinite"
        if ((self.history_count < 0) | (self.history_count > self.history_len)).any():
            return "history_count outside [0, history_len]"
        used = np.arange(self.history_len)[None, :] < self.history_count[:, None]
        if ((self.history != 0) != used).any():
            return "history padding is not exactly the slots past history_count"
        if (self.user == 0).any() or (self.item == 0).any() or (self.sample_key < 0).any():
            return "zero user/item id or negative sample_key"
        return None
