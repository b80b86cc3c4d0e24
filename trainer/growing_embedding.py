"""An ID-embedding table with no fixed vocabulary: id string -> row, grown by doubling.

Row 0 is padding (always zeros, never updated). New ids take the next free row; when the
table is full its capacity doubles and existing rows are copied unchanged, so a row's
embedding never moves or changes because of growth. New rows are initialised from a
generator seeded by (seed, capacity), so the same sequence of ids gives the same table in
every run (crash-resume determinism). ``counts[row]`` is the number of training samples
whose forward pass used that row (target or history item): its updates, used for τ.

>>> t = GrowingEmbedding(dim=4, capacity=2)
>>> t.rows(["a", "b", "a"]).tolist()
[1, 2, 1]
>>> t.capacity, t.n_ids
(4, 2)
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

import torch
from torch import nn

INIT_STD = 0.01


_TYPECODES = {torch.long: "q", torch.float32: "f"}


def list_tensor(values: Sequence[float], dtype: torch.dtype = torch.long) -> torch.Tensor:
    """A list of numbers -> 1-d tensor (long or float32); ~8x faster than ``torch.tensor``.

    >>> list_tensor([3, 1]).tolist(), list_tensor([1, 0], torch.float32).tolist()
    ([3, 1], [1.0, 0.0])
    >>> list_tensor([]).shape
    torch.Size([0])
    """
    if not values:
        return torch.zeros(0, dtype=dtype)
    return torch.frombuffer(array(_TYPECODES[dtype], values), dtype=dtype)


class GrowingEmbedding(nn.Module):
    """weight [capacity, d]; ``rows(ids)`` -> LongTensor of rows (growing if needed)."""

    def __init__(self, dim: int, capacity: int = 1024, seed: int = 0) -> None:
        super().__init__()
        self.dim = dim
        self.seed = seed
        self.ids: list[str] = []  # row r >= 1 holds ids[r - 1]
        self.index: dict[str, int] = {}
        self.weight = nn.Parameter(self._init_rows(0, max(2, capacity)))
        self.register_buffer("counts", torch.zeros(max(2, capacity), dtype=torch.long))
        self.on_grow: list = []  # callbacks (old_param, new_param), e.g. the optimiser

    def _init_rows(self, start: int, stop: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + stop)
        rows = torch.randn(stop - start, self.dim, generator=g) * INIT_STD
        if start == 0:
            rows[0] = 0.0
        return rows

    @property
    def capacity(self) -> int:
        return self.weight.shape[0]

    @property
    def n_ids(self) -> int:
        return len(self.ids)

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

    def rows(self, ids: Sequence[str], grow: bool = True) -> torch.Tensor:
        """ids -> rows [len(ids)]; unknown ids get new rows (or 0 when ``grow`` is False)."""
        index = self.index
        out = list(map(index.get, ids))  # None = unknown
        if None in out:
            for k, i in enumerate(ids):
                if out[k] is None:
                    row = index.get(i)
                    if row is None and grow:
                        self.ids.append(i)
                        row = index[i] = len(self.ids)
                    out[k] = row or 0
        if len(self.ids) + 1 > self.capacity:
            self.grow_to(len(self.ids) + 1)
        return list_tensor(out)

    def count(self, *rows: torch.Tensor) -> None:
        """Adds one update to each distinct non-padding row found in ``rows`` (any shapes).

        >>> t = GrowingEmbedding(dim=2, capacity=4)
        >>> t.rows(["a", "b"]).tolist()
        [1, 2]
        >>> t.count(torch.tensor([1, 1, 2]), torch.tensor([[2, 0]]))  # row 2 twice: one update
        >>> t.counts.tolist()
        [0, 1, 1, 0]
        """
        used = torch.zeros(len(self.counts), dtype=torch.bool, device=self.counts.device)
        for r in rows:
            used[r] = True
        used[0] = False
        self.counts += used

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """rows [*] -> [*, d]; row 0 gives zeros."""
        return nn.functional.embedding(rows, self.weight, padding_idx=0)

    def restore(self, ids: list[str], weight: torch.Tensor, counts: torch.Tensor) -> None:
        """Loads a saved table (ids in row order, weight [C, d], counts [C])."""
        self.ids = list(ids)
        self.index = {i: r + 1 for r, i in enumerate(self.ids)}
        self.weight = nn.Parameter(weight.clone())
        self.counts = counts.clone()

    def snapshot(self) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """(ids, rows [n, d], counts [n]) of the used rows, in row order (row 0 dropped)."""
        n = self.n_ids + 1
        return list(self.ids), self.weight.detach()[1:n].clone(), self.counts[1:n].clone()
