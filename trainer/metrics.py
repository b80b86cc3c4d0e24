"""CTR metrics, the one home of each: exact AUC (ties count 0.5), GAUC and LogLoss
(offline benches, the online trainer's windows, the demo report)."""

from __future__ import annotations

import numpy as np


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC AUC from average ranks (tied scores count as half a correct pair).

    labels [N] in {0, 1}, scores [N]. NaN when only one class is present.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    # average rank (1-based) within each run of tied scores
    _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Per-user AUC weighted by the user's impressions; one-class users are skipped."""
    total, weight = 0.0, 0
    order = np.argsort(users, kind="mergesort")
    u_sorted = users[order]
    bounds = np.r_[0, np.flatnonzero(np.diff(u_sorted)) + 1, len(users)]
    for s, e in zip(bounds[:-1], bounds[1:], strict=True):
        idx = order[s:e]
        a = auc(labels[idx], scores[idx])
        if not np.isnan(a):
            total += a * len(idx)
            weight += len(idx)
    return total / weight if weight else float("nan")


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities ``probs`` [N] against ``labels`` [N]."""
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
