"""``samples`` records -> one training batch of numpy columns, for the online trainer.

A record on ``samples`` is one :class:`~streams.sample_batch.SampleBatch` frame of N
samples (the contract: ``streams/sample_batch.py``, docs/WIRE_FORMAT.md). The decoder:

1. decodes each record with :meth:`SampleBatch.decode` (header, dtypes, shapes), and
   checks the values (:meth:`SampleBatch.check`) once over the joined columns of the
   records of one history length, record by record only when that fails (every check is
   per sample, so the verdicts and reasons are those of ``SampleBatch.decode`` alone); a
   record that fails is rejected *whole*, with the :class:`EventError` reason (the
   trainer dead-letters it);
2. concatenates the columns of the records that passed, in record order, and cuts or pads
   each record's history to the trainer's ``history_len`` h (the newest h items,
   left-aligned, oldest first; 0 pads);
3. drops repeats by ``sample_key``: a key seen earlier in the batch or among the last
   ``dedup_window`` kept keys (:class:`RecentKeys`, restored from the checkpoint);
4. computes ``is_new`` = ``item_interactions < new_item_interactions`` or
   ``item_age_s < new_item_age_s`` (an unknown age, NaN, is not young).

All of it is a few numpy calls per batch and one :meth:`SampleBatch.decode` per record, no
Python work per sample. Ids stay the contract's int64 ids: the model's tables map them to
rows (``GrowingEmbedding.rows``, called by ``trainer.online_core.BatchBuilder``), which hold
the trainer's only id -> row map. The module imports neither torch nor Kafka.

>>> from streams.sample_batch import SampleBatch, id_hash, sample_key
>>> def frame(*rows):
...     return SampleBatch.from_rows([dict(sample_key=sample_key(0, k), user="u1", item=i,
...         label=1, ts=5.0, history=h, item_interactions=n, item_age_s=None,
...         item_known=True) for k, i, h, n in rows], history_len=4).encode()
>>> d = SampleDecoder(history_len=2, dedup_window=10, new_item_interactions=5,
...                   new_item_age_s=0.0)
>>> b = d.decode([frame((1, "a", ["x", "b", "c"], 0)), b"not a frame",
...               frame((1, "a", [], 0), (2, "c", ["b"], 9))])
>>> b.keys.tolist(), [k for k, _ in b.rejected]   # the repeat of key 1 is dropped
([1, 2], [1])
>>> b.history.tolist() == [[id_hash("b"), id_hash("c")], [id_hash("b"), 0]]
True
>>> b.labels.tolist(), b.is_new.tolist(), d.recent.keys().tolist()
([1.0, 1.0], [True, False], [1, 2])
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from streams.events import FRAME_MAGIC, EventError
from streams.sample_batch import COLUMNS, SampleBatch

_I64 = np.zeros(0, np.int64)


@dataclass
class DecodedBatch:
    """The kept samples of one batch of records, n of them, in record order (h =
    ``history_len``).

    keys int64 [n] (sample keys); users, items int64 [n] and history int64 [n, h] (ids,
    ``id_hash`` of the string ids, history left-aligned, oldest first, 0 = pad); labels
    float32 [n]; is_new bool [n]; ts float64 [n] (s); rejected: (index in the submitted
    records, reason) of the records that did not decode.
    """

    keys: np.ndarray
    users: np.ndarray
    items: np.ndarray
    history: np.ndarray
    labels: np.ndarray
    is_new: np.ndarray
    ts: np.ndarray
    rejected: list[tuple[int, str]]

    def __len__(self) -> int:
        return len(self.keys)


class RecentKeys:
    """The last ``size`` kept sample keys: a set for membership, a ring for their order.

    >>> r = RecentKeys(3, [1, 2])
    >>> r.fresh(np.array([2, 5, 5, 6, 7])).tolist()   # 2 was seen; the second 5 repeats
    [False, True, False, True, True]
    >>> r.keys().tolist()   # the window holds the last 3 kept keys
    [5, 6, 7]
    """

    def __init__(self, size: int, keys: Iterable[int] = ()) -> None:
        if size < 1:
            raise ValueError("the dedup window holds at least one key")
        self.size = size
        self.ring = np.zeros(size, np.int64)
        self.filled = 0
        self.at = 0  # the next slot written
        self.seen: set[int] = set()
        self._add(np.fromiter(keys, np.int64))

    def __len__(self) -> int:
        return self.filled

    def keys(self) -> np.ndarray:
        """The window's keys, oldest first."""
        if self.filled < self.size:
            return self.ring[: self.filled].copy()
        return np.concatenate([self.ring[self.at :], self.ring[: self.at]])

    def fresh(self, keys: np.ndarray) -> np.ndarray:
        """bool [n]: the first occurrence of a key not in the window; those keys join it."""
        listed = keys.tolist()
        if self.seen.isdisjoint(listed):
            mask = np.ones(len(listed), bool)
        else:
            seen = self.seen
            mask = np.fromiter((k not in seen for k in listed), bool, len(listed))
        if len(set(listed)) < len(listed):  # repeats inside the batch: keep the first
            first = np.zeros(len(listed), bool)
            first[np.unique(keys, return_index=True)[1]] = True
            mask &= first
        self._add(keys[mask])
        return mask

    def _add(self, kept: np.ndarray) -> None:
        """Appends keys that are not in the window (the oldest ones leave)."""
        k = len(kept)
        if k >= self.size:
            self.ring[:] = kept[-self.size :]
            self.seen = set(self.ring.tolist())
            self.filled, self.at = self.size, 0
            return
        slots = (self.at + np.arange(k)) % self.size
        evicted = self.ring[slots[slots < self.filled]]
        self.seen.difference_update(evicted.tolist())
        self.ring[slots] = kept
        self.seen.update(kept.tolist())
        self.at = (self.at + k) % self.size
        self.filled = min(self.size, self.filled + k)


def _history(batch: SampleBatch, h: int) -> np.ndarray:
    """The batch's history cut or padded to ``h`` slots: the newest h items, left-aligned."""
    n, slots = batch.history.shape
    if slots == h:
        return batch.history
    if slots < h:
        out = np.zeros((n, h), np.int64)
        out[:, :slots] = batch.history
        return out
    count = batch.history_count.astype(np.int64)[:, None]
    at = np.maximum(count - h, 0) + np.arange(h)[None, :]
    out = np.take_along_axis(batch.history, np.minimum(at, slots - 1), axis=1)
    out[at >= count] = 0
    return out


def record_samples(raw: bytes | None) -> int:
    """The sample count a ``samples`` record announces in its frame header (1 when it has
    none: the record is rejected as a whole anyway). For batch sizing; decoding validates."""
    try:
        if raw[:4] == FRAME_MAGIC:
            (size,) = struct.unpack_from("<I", raw, 4)
            count = json.loads(raw[8 : 8 + size])["header"]["count"]
            if isinstance(count, int) and count > 0:
                return count
    except (TypeError, ValueError, KeyError, IndexError, struct.error, RecursionError):
        pass
    return 1


class SampleDecoder:
    """Records (bytes, or None for a tombstone) -> :class:`DecodedBatch`; holds the window
    of recent sample keys (``recent``)."""

    def __init__(
        self,
        history_len: int,
        dedup_window: int,
        new_item_interactions: int,
        new_item_age_s: float,
        recent_keys: Iterable[int] = (),
    ) -> None:
        self.history_len = history_len
        self.tau = new_item_interactions
        self.max_age = new_item_age_s
        self.recent = RecentKeys(dedup_window, recent_keys)

    @classmethod
    def from_settings(cls, trainer, recent_keys: Iterable[int] = ()) -> SampleDecoder:
        """From ``settings.trainer`` (``TrainerSettings``)."""
        return cls(
            trainer.history_len,
            trainer.dedup_window,
            trainer.new_item_interactions,
            trainer.new_item_age_s,
            recent_keys,
        )

    def decode(self, values: Sequence[bytes | None]) -> DecodedBatch:
        rejected: list[tuple[int, str]] = []
        framed: list[tuple[int, SampleBatch]] = []
        for k, raw in enumerate(values):
            if raw is None:
                rejected.append((k, "empty message (tombstone)"))
                continue
            try:
                framed.append((k, SampleBatch.decode(raw, check_values=False)))
            except EventError as exc:
                rejected.append((k, str(exc)))
        batches, whole = _checked(framed, rejected)
        rejected.sort()
        h = self.history_len
        if not batches:
            return DecodedBatch(
                _I64, _I64, _I64, np.zeros((0, h), np.int64), np.zeros(0, np.float32),
                np.zeros(0, bool), np.zeros(0, np.float64), rejected,
            )  # fmt: skip
        if whole is None:
            whole = _join(batches)
        keep = self.recent.fresh(whole.sample_key)
        everything = bool(keep.all())

        def kept(a: np.ndarray) -> np.ndarray:
            return a if everything else a[keep]

        if all(b.history_len == whole.history_len for b in batches):
            history = _history(whole, h)
        else:  # frames of several history lengths
            history = np.concatenate([_history(b, h) for b in batches])
        young = kept(whole.item_age_s) < self.max_age  # NaN (unknown) is not young
        return DecodedBatch(
            keys=kept(whole.sample_key),
            users=kept(whole.user),
            items=kept(whole.item),
            history=kept(history),
            labels=kept(whole.label).astype(np.float32),
            is_new=(kept(whole.item_interactions) < self.tau) | young,
            ts=kept(whole.ts),
            rejected=rejected,
        )


def _join(batches: list[SampleBatch]) -> SampleBatch:
    """The batches' columns joined (history only when all have the same length; else
    empty, and the caller joins the cut histories)."""
    same = all(b.history_len == batches[0].history_len for b in batches)
    columns = {
        name: np.concatenate([getattr(b, name) for b in batches])
        for name in COLUMNS
        if same or name != "history"
    }
    if not same:
        columns["history"] = np.zeros((len(columns["sample_key"]), 0), np.int64)
    return SampleBatch(**columns)


def _checked(
    framed: list[tuple[int, SampleBatch]], rejected: list[tuple[int, str]]
) -> tuple[list[SampleBatch], SampleBatch | None]:
    """(the batches whose values pass :meth:`SampleBatch.check`, in order; their join when
    it was made and holds all of them); the others go to ``rejected`` with their reasons.
    One check over the joined batches of each history length; each batch on its own only
    when its group's join fails."""
    groups: dict[int, list[tuple[int, SampleBatch]]] = {}
    for k, batch in framed:
        groups.setdefault(batch.history_len, []).append((k, batch))
    passed: list[tuple[int, SampleBatch]] = []
    whole = None
    for group in groups.values():
        joined = group[0][1] if len(group) == 1 else _join([b for _, b in group])
        try:
            joined.check()
            passed += group
            whole = joined
            continue
        except EventError:
            whole = None
        for k, batch in group:
            try:
                batch.check()
                passed.append((k, batch))
            except EventError as exc:
                rejected.append((k, str(exc)))
    if len(groups) > 1:
        passed.sort(key=lambda kb: kb[0])
        whole = None
    return [b for _, b in passed], whole
