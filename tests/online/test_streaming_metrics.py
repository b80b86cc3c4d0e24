"""Streaming AUC matches an exact computation on fixed vectors."""

import itertools
import math

import numpy as np
import pytest

from trainer.metrics import auc
from trainer.streaming_metrics import WindowedAUC


def brute_force_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    pairs = list(itertools.product(pos, neg))
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)


def test_auc_by_hand():
    # positives 0.8, 0.4; negatives 0.4, 0.1 -> pairs: (0.8>0.4)=1, (0.8>0.1)=1, (0.4=0.4)=.5, (0.4>0.1)=1
    assert auc(np.array([1, 1, 0, 0]), np.array([0.8, 0.4, 0.4, 0.1])) == pytest.approx(3.5 / 4)


def test_auc_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.integers(0, 5, 30) / 4.0  # many ties
        labels = rng.integers(0, 2, 30)
        if labels.min() == labels.max():
            continue
        assert auc(labels, scores) == pytest.approx(brute_force_auc(scores, labels))


def test_one_class_gives_nan():
    assert math.isnan(auc(np.array([1, 1]), np.array([0.1, 0.2])))


def test_window_keeps_only_the_last_pairs():
    rng = np.random.default_rng(1)
    scores, labels = rng.random(500), rng.integers(0, 2, 500)
    m = WindowedAUC(window=100)
    for start in range(0, 500, 37):
        m.update(scores[start : start + 37], labels[start : start + 37])
    assert len(m) == 100 and m.seen == 500
    assert m.auc() == pytest.approx(brute_force_auc(scores[-100:], labels[-100:]))
    p = np.clip(scores[-100:], 1e-7, 1 - 1e-7)
    want = -(labels[-100:] * np.log(p) + (1 - labels[-100:]) * np.log(1 - p)).mean()
    assert m.logloss() == pytest.approx(want)


def test_a_batch_longer_than_the_window_keeps_its_last_pairs():
    rng = np.random.default_rng(2)
    scores, labels = rng.random(250), rng.integers(0, 2, 250)
    m = WindowedAUC(window=100)
    m.update(scores[:30], labels[:30])
    m.update(scores[30:], labels[30:])  # 220 pairs at once into a window of 100
    assert len(m) == 100 and m.seen == 250
    assert m.auc() == pytest.approx(brute_force_auc(scores[-100:], labels[-100:]))


def test_non_finite_predictions_are_rejected():
    with pytest.raises(ValueError, match="non-finite"):
        WindowedAUC().update([float("nan")], [1])
