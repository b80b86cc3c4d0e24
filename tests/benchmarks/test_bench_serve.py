"""`idproxy bench serve --quick` end to end: both servers, real locust load, a publish and a
rollback during each scenario. Checks behaviours only (never speed): the summary keys,
no errors, no torn reads, the results file and plot, and that no server outlives the bench.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from tests.processes import processes_with_env

KEYS = {
    "batch1000_binary_p50_ms",
    "batch1000_binary_speedup_vs_json",
    "get_c64_rps_vs_baseline",
    "get_c64_p99_ms",
    "errors",
    "torn_reads",
}


def test_bench_serve_quick(tmp_path: Path) -> None:
    mark = f"bench-serve-{uuid.uuid4().hex[:8]}"  # inherited by the servers and generators
    proc = subprocess.run(
        [sys.executable, "-m", "idproxy.cli", "bench", "serve", "--quick"],
        env={**os.environ, "IDPROXY_RUN_DIR": str(tmp_path), "IDPROXY_TEST_MARK": mark},
        capture_output=True,
        text=True,
        timeout=300,
    )
    print(proc.stdout[-5000:], proc.stderr[-3000:])
    assert proc.returncode == 0
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(summary) >= KEYS
    assert summary["errors"] == 0 and summary["torn_reads"] == 0
    for key in KEYS - {"errors", "torn_reads"}:
        assert summary[key] is not None and summary[key] > 0
    out = Path(summary["out_dir"])
    assert out.parent == tmp_path.resolve() and out.name.startswith("bench-serve-")
    results = json.loads((out / "results.json").read_text())
    assert set(results["scenarios"]) == {"fastapi", "legacy"}
    runs = [r for by_name in results["scenarios"].values() for r in by_name.values()]
    assert all(r["requests"] > 0 and r["errors"] == 0 and r["torn_reads"] == 0 for r in runs)
    # the writer's publishes reached the servers: answers came from more than one version
    assert len({v for r in runs for v in r["versions_seen"]}) > 1
    assert (out / "serve.png").stat().st_size > 0
    assert processes_with_env(f"IDPROXY_TEST_MARK={mark}") == []  # every server was stopped
