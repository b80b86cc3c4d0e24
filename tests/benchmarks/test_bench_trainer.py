"""`idproxy bench trainer`: both loops train the same model, and the summary is well formed."""

import argparse
import json

import pytest
import torch

from benchmarks import bench_trainer
from idproxy.settings import Settings


def _tiny_args(**overrides) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_trainer.add_arguments(parser)
    args = parser.parse_args(["--tiny"])
    args.samples, args.users, args.items, args.hidden = 600, 40, 60, 16
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


@pytest.mark.parametrize("variant", ["idproxy", "id-only"])
def test_trainer_loop_and_bare_loop_train_the_same_model(variant):
    """The ratio compares like with like: same batches, same steps, same weights after,
    alternating in blocks of 2 batches (the last block is short)."""
    settings = Settings(trainer={"online_batch_size": 100})
    args = _tiny_args(record_samples=30)
    cache, records = bench_trainer.world(args, settings)
    assert len(records) == 20  # 600 samples, 30 per frame
    chunks = bench_trainer.batches_of(records, settings.trainer.online_batch_size)
    assert [len(c) for c in chunks] == [4] * 5  # whole records: 120 samples per batch
    run = bench_trainer.paired_run(
        settings, variant, args.hidden, cache, chunks, block=2, bare_threads=1
    )
    assert run.samples == args.samples  # the bench's samples are all distinct and valid
    assert len(run.trainer_s) == len(run.bare_s) == (len(chunks) + 1) // 2
    trained_state, bare_state = run.trainer_model.state_dict(), run.bare_model.state_dict()
    assert trained_state.keys() == bare_state.keys()
    for name, value in trained_state.items():
        if name.endswith("counts"):  # update counts are trainer bookkeeping
            continue
        torch.testing.assert_close(value, bare_state[name], msg=name)


def test_summary_reports_paired_ratios(capsys):
    settings = Settings()
    assert bench_trainer.run(_tiny_args(repeats=2), settings) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("idproxy", "id_only"):
        low, high = summary[f"{key}_ratio_range"]
        assert 0 < low <= summary[f"{key}_ratio"] <= high
        assert summary[f"{key}_trainer_sps"] > 0 and summary[f"{key}_bare_sps"] > 0
    low = min(summary["idproxy_ratio"], summary["id_only_ratio"])
    assert summary["goal_ratio"] == bench_trainer.GOAL_RATIO
    assert summary["goal_met"] == (low >= bench_trainer.GOAL_RATIO)
