"""The demo report's live-only slicing and the paired AUC around coarse-version switches."""

from __future__ import annotations

import numpy as np

from idproxy.demo_report import around_switches, live_predictions


def test_live_predictions_drop_the_history_period(tmp_path):
    path = tmp_path / "predictions.npz"
    ts = np.array([1.0, 2.0, 10.0, 11.0])
    np.savez(
        path,
        score=np.array([0.1, 0.2, 0.3, 0.4], np.float32),
        label=np.array([0, 1, 1, 0], np.int8),
        is_new=np.array([1, 0, 1, 0], bool),
        ts=ts,
    )
    live = live_predictions(path, live_from=10.0)
    assert live["ts"].tolist() == [10.0, 11.0]
    assert live["score"].tolist() == [np.float32(0.3), np.float32(0.4)]


def test_around_switches_compares_the_variants_on_the_same_windows():
    ts = np.arange(0.0, 200.0, 1.0)
    label = (np.arange(200) % 2).astype(np.int8)
    perfect, backwards = label.astype(float), 1.0 - label
    # idproxy ranks perfectly before t = 100 and backwards after; id-only the opposite
    idproxy = {"ts": ts, "label": label, "score": np.where(ts < 100, perfect, backwards)}
    id_only = {"ts": ts, "label": label, "score": np.where(ts < 100, backwards, perfect)}
    rows = around_switches({"idproxy": idproxy, "id-only": id_only}, [100.0], window_s=50)
    assert rows == [{"t": 100.0, "delta_before": 1.0, "delta_after": -1.0}]
