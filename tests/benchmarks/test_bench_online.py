"""`idproxy bench online`: the per-bucket AUC and a tiny end-to-end run."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from benchmarks import bench_online
from idproxy.settings import Settings


def test_auc_table_scores_each_warm_up_bucket_on_its_own_samples():
    # bucket 0: ranked perfectly; bucket 1-2: ranked backwards; 5-9: a tie (0.5)
    scores = np.array([0.9, 0.1, 0.2, 0.8, 0.5, 0.5])
    labels = np.array([1, 0, 1, 0, 1, 0])
    interactions = [0, 0, 1, 2, 7, 7]
    table = bench_online.auc_table(scores, labels, interactions, new_below=3)
    assert math.isnan(table["warm"])  # no sample of an item seen >= 20 times
    assert table["0"] == 1.0
    assert table["1-2"] == 0.0
    assert table["5-9"] == 0.5
    assert math.isnan(table["3-4"])  # no samples
    # new = fewer than new_below=3 earlier interactions: the first four samples
    assert table["new"] == 0.75  # 2 positives x 2 negatives: 3 of the 4 pairs in order
    # 10 stream slices of at most one sample each: no slice has both classes
    assert math.isnan(table["new_by_time"])


def test_bench_online_tiny_run_prints_a_summary_and_writes_the_plot(tmp_path, capsys):
    settings = Settings(run_dir=str(tmp_path))
    args = argparse.Namespace(
        seeds="0,1", ratings=1500, tiny=True, split=0.0, stage1=False, live_adaptor_lr_scale=None
    )
    assert bench_online.run(args, settings) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["bench"] == "online" and summary["ratings"] == 1500
    for name in ("all", "warm", "new", "new_by_time"):  # the paired figures the goals name
        assert f"delta_{name}_mean" in summary and f"{name}_wins" in summary
    assert summary["delta_warm_mean"] is None  # 1,500 ratings: no item seen 20 times
    assert summary["seeds"] == [0, 1]
    out = Path(summary["run_dir"])
    assert out.parent == tmp_path
    results = json.loads((out / "results.json").read_text())
    for variant in ("idproxy", "id-only"):
        assert len(results["per_seed"][variant]) == 2
        assert all(0.0 < r["all"] < 1.0 for r in results["per_seed"][variant])
    # the two variants are different models on the same samples
    assert results["per_seed"]["idproxy"][0]["all"] != results["per_seed"]["id-only"][0]["all"]
    assert (out / "auc_by_interactions.png").stat().st_size > 0


def test_stage1_fits_phi_on_rows_learned_before_the_split_and_scores_only_the_rest(
    tmp_path, capsys
):
    settings = Settings(run_dir=str(tmp_path))
    args = argparse.Namespace(
        seeds="0", ratings=3000, tiny=True, split=0.5, stage1=True, live_adaptor_lr_scale=0.0
    )
    assert bench_online.run(args, settings) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["evaluated_from"] == 1500
    fit = summary["stage1"]
    assert fit["targets"] >= 10  # items with >= tau updates in the first 1,500 ratings
    assert fit["recall_at_10_after"] > fit["recall_at_10_before"]  # φ moved towards the rows
    assert summary["live_adaptor_lr_scale"] == 0.0
