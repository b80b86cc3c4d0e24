"""An ID-embedding table with no fixed vocabulary: int64 id -> row, grown by doubling.

Ids are the samples' int64 ids (``streams.sample_batch.id_hash`` of the string id). Row 0 is
padding (always zeros, never updated; id 0 pads history slots and maps to it). New ids take
the next free rows; when the table is full its capacity doubles and existing rows are copied
unchanged, so a row's embedding never moves or changes because of growth. New rows are
drawn from N(0, init_std²) with a generator seeded by (seed, capacity), so the same
sequence of ids gives the same table in every run (crash-resume determinism). The rankers
use ``init_std = 0`` (``trainer.id_init_std``): a new id starts as the mean item, not as
noise the ranker has to learn to ignore. ``counts[row]`` is the number of training samples
whose forward pass used that row (target or history item): its updates, used for τ.

The table holds the trainer's only id -> row map (:class:`RowIndex`): :meth:`rows` looks
up a whole array of ids at once and gives unknown ids the next rows, in the order of their
first appearance in the array.

>>> t = GrowingEmbedding(dim=4, capacity=2)
>>> t.rows(np.array([7, -3, 7, 0, 9])).tolist(), t.ids, t.capacity
([1, 2, 1, 0, 3], [7, -3, 9], 4)
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

_NONE = np.zeros(0, np.int64)


class _Sorted:
    """(key, row) pairs in sorted arrays, for ids that miss their slot: a large pair of
    arrays and a small one that takes new keys and is merged into the large one when it
    passes 1/8 of it (amortised O(1) copies per key); a lookup is two binary searches."""

    def __init__(self) -> None:
        empty = np.zeros(0, np.int64)
        self.keys, self.rows, self.new_keys, self.new_rows = empty, empty, empty, empty

    def __len__(self) -> int:
        return len(self.keys) + len(self.new_keys)

    @staticmethod
    def _search(keys: np.ndarray, rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
        if not len(keys):
            return np.zeros(len(ids), np.int64)
        at = np.searchsorted(keys, ids)
        at[at == len(keys)] = 0
        return np.where(keys[at] == ids, rows[at], 0)

    def find(self, ids: np.ndarray) -> np.ndarray:
        if not len(self.keys):
            return self._search(self.new_keys, self.new_rows, ids)
        rows = self._search(self.keys, self.rows, ids)
        if len(self.new_keys):
            rows = np.maximum(rows, self._search(self.new_keys, self.new_rows, ids))
        return rows

    def add(self, keys: np.ndarray, rows: np.ndarray) -> None:
        keys = np.concatenate([self.new_keys, keys])
        rows = np.concatenate([self.new_rows, rows])
        if len(keys) > max(1024, len(self.keys) // 8):  # merge into the large arrays
            keys, rows = np.concatenate([self.keys, keys]), np.concatenate([self.rows, rows])
            order = np.argsort(keys)
            self.keys, self.rows = keys[order], rows[order]
            keys = rows = np.zeros(0, np.int64)
        else:
            order = np.argsort(keys)
            keys, rows = keys[order], rows[order]
        self.new_keys, self.new_rows = keys, rows


class RowIndex:
    """int64 id -> row (1, 2, ... in the order ids were added), all in numpy.

    The ids are hashes (``id_hash``), so their low bits are uniform: an id's slot in a
    table of 2^k ≥ 2 × ids slots is its low k bits. A slot holds the first id that took it;
    the others (and ids of slot 0, kept for id 0, the padding) go to a sorted overflow. A
    lookup of a whole array is a gather and a comparison per id, plus a binary search for
    the ids that miss their slot (about 1 in 6, and unknown ids); ids chosen to share
    slots only move to the overflow. The table doubles (and is refilled) when ids pass
    half of it.

    >>> index = RowIndex([5, 2])
    >>> index.find(np.array([2, 4, 5, 0])).tolist()
    [2, 0, 1, 0]
    >>> index.add(np.array([4]))
    >>> index.find(np.array([4])).tolist(), len(index)
    ([3], 3)
    """

    def __init__(self, ids: Iterable[int] = ()) -> None:
        self._ids = np.zeros(16, np.int64)  # row r holds _ids[r - 1]
        self._n = 0
        self._fill(16)
        ids = np.fromiter(ids, np.int64)
        if len(ids):
            self.add(ids)

    def __len__(self) -> int:
        return self._n

    @property
    def ids(self) -> np.ndarray:
        """The ids in row order (a view: row r holds ids[r - 1])."""
        return self._ids[: self._n]

    def _fill(self, size: int) -> None:
        """A table of ``size`` slots (a power of 2) holding every id."""
        self._mask = size - 1
        self._slot_ids = np.zeros(size, np.int64)  # 0 = free
        self._slot_rows = np.zeros(size, np.int64)
        self._overflow = _Sorted()
        if self._n:
            self._place(self.ids, np.arange(1, self._n + 1, dtype=np.int64))

    def _place(self, ids: np.ndarray, rows: np.ndarray) -> None:
        """Puts new ids in their free slots (the first of several for one slot), the rest
        in the overflow."""
        slots = ids & self._mask
        free = np.flatnonzero((self._slot_ids[slots] == 0) & (slots != 0))
        placed = np.zeros(len(ids), bool)
        if len(free):
            first = free[np.unique(slots[free], return_index=True)[1]]
            self._slot_ids[slots[first]] = ids[first]
            self._slot_rows[slots[first]] = rows[first]
            placed[first] = True
        if not placed.all():
            self._overflow.add(ids[~placed], rows[~placed])

    def _lookup(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows of ``flat`` (0: unknown or id 0), the positions off their slot, the rows
        found for those). Id 0 always finds slot 0, which no other id takes."""
        slots = flat & self._mask
        rows = self._slot_rows[slots]
        off = np.flatnonzero(self._slot_ids[slots] != flat)
        if not len(off):
            return rows, off, _NONE
        found = self._overflow.find(flat[off]) if len(self._overflow) else np.zeros_like(off)
        rows[off] = found
        return rows, off, found

    def find(self, ids: np.ndarray) -> np.ndarray:
        """Rows of ``ids`` (any shape; 0 for an unknown id and for id 0)."""
        ids = np.asarray(ids, np.int64)
        return self._lookup(ids.ravel())[0].reshape(ids.shape)

    def add(self, new_ids: np.ndarray) -> None:
        """Gives each of ``new_ids`` (distinct, none known, none 0) the next row, in order."""
        new_ids = np.asarray(new_ids, np.int64)
        if not len(new_ids):
            return
        if (new_ids == 0).any() or len(np.unique(new_ids)) != len(new_ids):
            raise ValueError("new ids must be distinct and non-zero")
        if self.find(new_ids).any():
            raise ValueError("an id that already has a row was added again")
        self._append(new_ids)

    def _append(self, new_ids: np.ndarray) -> None:
        start, stop = self._n, self._n + len(new_ids)
        if stop > len(self._ids):
            grown = np.zeros(max(stop, 2 * len(self._ids)), np.int64)
            grown[:start] = self._ids[:start]
            self._ids = grown
        self._ids[start:stop] = new_ids
        self._n = stop
        if 2 * stop > self._mask + 1:  # past half full: a larger table, refilled
            self._fill(1 << (2 * stop - 1).bit_length())
        else:
            self._place(new_ids, np.arange(start + 1, stop + 1, dtype=np.int64))

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows of ``ids`` (any shape; id 0 -> row 0); an unknown id first takes the next
        free row, in the order of first appearance in ``ids`` (row-major)."""
        ids = np.asarray(ids, np.int64)
        flat = ids.ravel()
        rows, off, found = self._lookup(flat)
        if len(off) and not found.all():
            missing = off[found == 0]  # unknown ids (id 0 is never off its slot)
            unknown = flat[missing]
            uniq, first = np.unique(unknown, return_index=True)
            order = np.argsort(first)
            start = self._n
            self._append(uniq[order])
            row_of_uniq = np.empty(len(uniq), np.int64)
            row_of_uniq[order] = np.arange(start + 1, start + 1 + len(uniq))
            rows[missing] = row_of_uniq[np.searchsorted(uniq, unknown)]
        return rows.reshape(ids.shape)


class GrowingEmbedding(nn.Module):
    """weight [capacity, d]; ``index`` int64 id -> row; ``rows(ids)`` grows it as needed."""

    def __init__(
        self, dim: int, capacity: int = 1024, seed: int = 0, init_std: float = 0.01
    ) -> None:
        super().__init__()
        self.dim = dim
        self.seed = seed
        self.init_std = init_std
        self.index = RowIndex()
        self.weight = nn.Parameter(self._init_rows(0, max(2, capacity)))
        self.register_buffer("counts", torch.zeros(max(2, capacity), dtype=torch.long))
        self.on_grow: list = []  # callbacks (old_param, new_param), e.g. the optimiser

    def _init_rows(self, start: int, stop: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + stop)
        rows = torch.randn(stop - start, self.dim, generator=g) * self.init_std
        if start == 0:
            rows[0] = 0.0
        return rows

    @property
    def capacity(self) -> int:
        return self.weight.shape[0]

    @property
    def n_ids(self) -> int:
        return len(self.index)

    @property
    def ids(self) -> list[int]:
        """The ids in row order, as Python ints (row r holds ids[r - 1])."""
        return self.index.ids.tolist()

    def grow_to(self, capacity: int) -> None:
        """Doubles until ``capacity`` rows fit; old rows are copied bit for bit."""
        if capacity <= self.capacity:
            return
        old = self.weight
        data = old.data
        while data.shape[0] < capacity:  # block [c, 2c) always comes from seed (seed, 2c)
            c = data.shape[0]
            data = torch.cat([data, self._init_rows(c, 2 * c).to(old.device)])
        new_cap = data.shape[0]
        self.weight = nn.Parameter(data)
        self.counts = torch.cat([self.counts, self.counts.new_zeros(new_cap - len(self.counts))])
        for callback in self.on_grow:
            callback(old, self.weight)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows of ``ids`` (int64, any shape; 0 -> 0), new ids added in order of first
        appearance (:meth:`RowIndex.rows`); the table grows to hold them."""
        rows = self.index.rows(ids)
        self.grow_to(self.n_ids + 1)
        return rows

    def count(self, *rows: torch.Tensor) -> None:
        """Adds one update to each distinct non-padding row found in ``rows`` (any shapes).

        >>> t = GrowingEmbedding(dim=2, capacity=4)
        >>> t.rows(np.array([11, 12])).tolist()
        [1, 2]
        >>> t.count(torch.tensor([1, 1, 2]), torch.tensor([[2, 0]]))  # row 2 twice: one update
        >>> t.counts.tolist()
        [0, 1, 1, 0]
        """
        used = np.zeros(len(self.counts), bool)  # numpy: ~5x fewer µs than torch ops here
        for r in rows:
            used[r.cpu().numpy()] = True
        used[0] = False
        self.counts.add_(torch.from_numpy(used).to(self.counts.device))  # in place: no temporary

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """rows [*] -> [*, d]; row 0 gives zeros. The gradient is row-sparse (for
        ``trainer.optim.RowSparseAdam``: rows not in the batch do not move)."""
        return nn.functional.embedding(rows, self.weight, padding_idx=0, sparse=True)

    def restore(self, ids: list[int], weight: torch.Tensor, counts: torch.Tensor) -> None:
        """Loads a saved table (int ids in row order, weight [C, d], counts [C])."""
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ValueError("table ids must be int64 ids (id_hash of the string ids)")
        self.index = RowIndex(ids)
        self.weight = nn.Parameter(weight.clone())
        self.counts = counts.clone()

    def snapshot(self) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """(ids, rows [n, d], counts [n]) of the used rows, in row order (row 0 dropped)."""
        n = self.n_ids + 1
        return self.ids, self.weight.detach()[1:n].clone(), self.counts[1:n].clone()
