"""`idproxy demo --quick --tiny`: the whole live system end to end on a real broker.

Checks what a newcomer's run must show: every uploaded item servable, both online trainers
saw every click, every malformed event of a small bad-input flood (and nothing else) in the
DLQ with no component restarting, the plots and the JSON summary written, and no
component left running or listening after the demo exits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from idproxy.broker_ladder import kafka_jars
from idproxy.settings import load_settings
from tests.processes import processes_with_env

pytestmark = pytest.mark.kafka


def run_demo(tmp_path: Path, *flags: str) -> dict:
    """Runs ``idproxy demo --quick --tiny FLAGS`` in ``tmp_path``; returns its summary."""
    run_dir = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDPROXY_KAFKA")}
    argv = ["demo", "--quick", "--tiny", "--run-dir", str(run_dir), *flags]
    proc = subprocess.run(
        [sys.executable, "-m", "idproxy.cli", *argv],
        env={**env, "IDPROXY_RUN_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = "\n".join(ln for ln in proc.stdout.splitlines() if not ln.startswith("replay:"))
    print(out[-5000:], proc.stderr[-2000:])
    assert proc.returncode == 0
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary == json.loads((run_dir / "summary.json").read_text())
    # clean shutdown: nothing the demo started (broker included) is still alive
    assert processes_with_env(f"IDPROXY_RUN_DIR={tmp_path}") == []
    return summary


def assert_exact_end_state(summary: dict) -> None:
    """Every item servable from the active version, every click trained on once per
    trainer, every malformed event (and nothing else) in the DLQ."""
    assert summary["items_servable"] == summary["items_uploaded"] > 0
    assert summary["samples_idproxy"] == summary["samples_id_only"] == summary["ratings"]
    assert summary["dead_letters"] == summary["malformed_sent"]


def assert_demo_outputs(summary: dict, run_dir: Path) -> None:
    """What every quick demo reports beside the exact end state: freshness, AUCs, the
    launch catalogue, the plots and the go-live bootstrap."""
    assert summary["malformed_sent"] > 0  # the bad-input flood was there
    assert summary["freshness_p50_s"] is not None
    assert summary["freshness_p50_s"] <= summary["freshness_p99_s"]
    assert summary["active_version"] in summary["versions_published"]
    for variant in ("idproxy", "id_only"):
        for key in ("auc_all", "auc_new", "auc_new_by_decile"):
            assert 0.0 <= summary[f"{key}_{variant}"] <= 1.0
    # the launch catalogue went first; the rest of the items were uploaded live
    assert 0 < summary["catalogue_items"] < summary["items_uploaded"]
    assert summary["live_items"] == summary["items_uploaded"] - summary["catalogue_items"]
    assert summary["catalogue_servable_s"] is not None
    assert (run_dir / "auc_over_time.png").stat().st_size > 0
    assert (run_dir / "freshness.png").stat().st_size > 0
    # go-live after the bootstrap: both trainers trained on the history period and scored
    # only the live samples; Stage 1 ran on the id-only ranker's table
    assert 0 < summary["history_ratings"] < summary["ratings"]
    for variant in ("idproxy", "id_only"):
        assert summary[f"live_samples_{variant}"] == summary["ratings"] - summary["history_ratings"]
    bootstrap = json.loads((run_dir / "bootstrap.json").read_text())
    assert bootstrap["id_only"]["samples"] == bootstrap["idproxy"]["samples"]
    assert bootstrap["id_only"]["samples"] == summary["history_ratings"]
    assert "accepted" in bootstrap["stage1"]


def test_quick_demo_runs_the_live_system_and_cleans_up(tmp_path):
    if kafka_jars(load_settings()) is not None:
        pytest.skip(
            "the fault drill (tests/faults/test_kill_each_component.py) runs this demo on "
            "Apache Kafka with the same assertions, faults added; this fault-free run is "
            "for machines without the jars"
        )
    summary = run_demo(tmp_path, "--bad-share", "0.03")
    assert_exact_end_state(summary)
    assert summary["faults_injected"] == {}  # no component restarted
    assert_demo_outputs(summary, tmp_path / "demo")
