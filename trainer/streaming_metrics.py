"""Prequential (test-then-train) metrics for the online trainer: windowed AUC and LogLoss.

Each batch is scored *before* it is trained on and its (probability, label) pairs are fed
here. ``WindowedAUC`` keeps the last ``window`` pairs and computes the exact AUC of that
window on demand (ties count one half, the Mann–Whitney definition); ``update`` is
O(batch) and ``auc`` is O(W log W), which is cheap for the windows used (≤ 10^5).

>>> m = WindowedAUC(window=4)
>>> m.update([0.9, 0.2, 0.6], [1, 0, 0])
>>> m.auc()
1.0
>>> m.update([0.1, 0.8], [1, 0])  # the window now holds the last 4 pairs
>>> m.auc()  # the one positive (0.1) is below all three negatives
0.0
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from trainer.metrics import auc, logloss


class WindowedAUC:
    """Exact AUC and mean LogLoss over the last ``window`` (probability, label) pairs.

    The pairs live in two numpy ring buffers (scores float64 [window], labels int8
    [window]): ``update`` copies a batch in with no per-pair Python work.
    """

    def __init__(self, window: int = 10_000) -> None:
        self.window = window
        self._scores = np.zeros(window, np.float64)
        self._labels = np.zeros(window, np.int8)
        self._end = 0  # where the next pair goes
        self._size = 0  # pairs held (<= window); until full they fill [0, _size)
        self.seen = 0

    def update(self, probabilities: ArrayLike, labels: ArrayLike) -> None:
        """probabilities [n] (finite), labels [n] (0/1), any array-like."""
        scores = np.asarray(probabilities, np.float64).ravel()
        ys = np.asarray(labels).ravel().astype(np.int8)
        if len(scores) != len(ys):
            raise ValueError(f"{len(scores)} predictions for {len(ys)} labels")
        finite = np.isfinite(scores)
        if not finite.all():
            raise ValueError(f"non-finite prediction {scores[~finite][0]}")
        self.seen += len(scores)
        scores, ys = scores[-self.window :], ys[-self.window :]
        slots = (self._end + np.arange(len(scores))) % self.window
        self._scores[slots], self._labels[slots] = scores, ys
        self._end = (self._end + len(scores)) % self.window
        self._size = min(self.window, self._size + len(scores))

    def auc(self) -> float:
        return auc(self._labels[: self._size], self._scores[: self._size])

    def logloss(self) -> float:
        if not self._size:
            return math.nan
        return logloss(self._labels[: self._size], self._scores[: self._size])

    def __len__(self) -> int:
        return self._size


def auc_per_slice(
    pred: dict[str, np.ndarray], buckets: int, select: np.ndarray
) -> list[tuple[float, int]]:
    """(AUC, count) of the ``select``-ed samples in each of ``buckets`` consecutive slices.

    ``pred``: score [N], label [N] in stream order; ``select`` [N] bool. The AUC is NaN in a
    slice with one class.

    >>> p = {"score": np.array([.9, .8, .3, .2]), "label": np.array([1, 0, 1, 0])}
    >>> auc_per_slice(p, 2, np.array([True, True, True, False]))
    [(1.0, 2), (nan, 1)]
    """
    out = []
    for part in np.array_split(np.arange(len(pred["label"])), buckets):
        mask = select[part]
        value = auc(pred["label"][part][mask], pred["score"][part][mask])
        out.append((value, int(mask.sum())))
    return out


def time_stratified_auc(pred: dict[str, np.ndarray], buckets: int) -> float | None:
    """AUC of the ``is_new`` samples per stream slice, weighted by their count per slice.

    ``pred``: score [N], label [N], is_new [N] bool, in stream order.

    A pooled prequential AUC also ranks early scores against late ones, made by a different
    model. This averages AUCs that each compare samples scored at about the same time
    (slices with one class are skipped).

    >>> p = {"score": np.array([.9, .8, .3, .2]), "label": np.array([1, 0, 1, 0]),
    ...      "is_new": np.array([True, True, True, True])}
    >>> time_stratified_auc(p, 2)  # each half is ranked right; pooled it would be 0.75
    1.0
    """
    slices = [(a, n) for a, n in auc_per_slice(pred, buckets, pred["is_new"]) if not math.isnan(a)]
    weight = sum(n for _, n in slices)
    return round(sum(a * n for a, n in slices) / weight, 6) if weight else None
