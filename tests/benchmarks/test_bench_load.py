"""`idproxy bench load --tiny`: two worker counts, a two-step ramp, on a real broker.

Checks the JSON summary (both worker counts, p50 <= p99 on every step, the sustainable
rate = the highest rate whose p99 stayed under the limit, the ramp stopping at the first
step over it), the results file and the plot, and that no worker outlives the bench.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.processes import processes_with_env

pytestmark = pytest.mark.kafka


def test_bench_load_tiny(tmp_path: Path) -> None:
    mark = f"bench-load-{uuid.uuid4().hex[:8]}"  # inherited by every child
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDPROXY_KAFKA")}
    argv = ["bench", "load", "--tiny", "--workers", "1,2", "--rates", "2,4", "--step-s", "6"]
    proc = subprocess.run(
        [sys.executable, "-m", "idproxy.cli", *argv, "--p99-limit", "30"],
        env={**env, "IDPROXY_RUN_DIR": str(tmp_path), "IDPROXY_TEST_MARK": mark},
        capture_output=True,
        text=True,
        timeout=300,
    )
    print(proc.stdout[-5000:], proc.stderr[-3000:])
    assert proc.returncode == 0
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["bench"] == "load" and summary["complete"]
    assert summary == json.loads((Path(summary["out_dir"]) / "results.json").read_text())
    assert set(summary["workers"]) == {"1", "2"}
    limit = summary["p99_limit_s"]
    for n, result in summary["workers"].items():
        steps = result["steps"]
        assert steps and all(st["workers"] == int(n) for st in steps)
        for st in steps:
            assert 0 <= st["p50_s"] <= st["p99_s"]
            assert st["under_limit"] == (st["p99_s"] < limit)
            assert 0 < st["servable"] <= st["items"]
        # the ramp stops at the first step over the limit
        assert all(st["under_limit"] for st in steps[:-1])
        assert len(steps) == len(summary["rates"]) or not steps[-1]["under_limit"]
        under = [st["rate"] for st in steps if st["p99_s"] < limit]
        assert result["sustainable_rate"] == (max(under) if under else None)
        assert result["saturated"] == any(st["p99_s"] >= limit for st in steps)
        assert sum(result["items_per_worker"].values()) >= sum(st["items"] for st in steps)
    one, two = summary["workers"]["1"], summary["workers"]["2"]
    if one["sustainable_rate"] and two["sustainable_rate"]:
        ratio = two["sustainable_rate"] / one["sustainable_rate"]
        assert summary["scaling"]["2"] == pytest.approx(ratio, abs=1e-3)
    assert summary["scaling_kind"]["2"] == (
        ("exact" if two["saturated"] else "lower bound") if one["saturated"] else "undetermined"
    )
    # two workers shared the work (each owns partitions, both proxied items)
    assert all(v > 0 for v in summary["workers"]["2"]["items_per_worker"].values())
    assert Path(summary["plot"]).stat().st_size > 0
    assert processes_with_env(f"IDPROXY_TEST_MARK={mark}") == []  # every worker was stopped
