"""`idproxy store ...` on a real store directory."""

import json
import subprocess
import sys

import numpy as np

from store import ProxyStore


def cli(*args: str, env_path: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "idproxy.cli", "store", "--path", env_path, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"IDPROXY_MODEL_ID_DIM": "4", "PATH": "/usr/bin:/bin"},
    )


def test_versions_publish_rollback_get_gc(tmp_path):
    path = str(tmp_path / "db")
    with ProxyStore(path, dim=4) as s:
        for k in (1, 2):
            block = np.full((2, 4), float(k), np.float32)
            s.stage(f"v{k}")
            s.write_batch(f"v{k}", ["a", "b"], block, block)
        s.publish("v1")
    assert cli("publish", "v2", env_path=path).returncode == 0
    out = json.loads(cli("versions", env_path=path).stdout)
    assert out["active"] == "v2" and out["previous"] == "v1"
    assert cli("rollback", "v1", env_path=path).returncode == 0
    got = json.loads(cli("get", "a", env_path=path).stdout)
    assert got["version"] == "v1" and got["p_coarse"] == [1.0] * 4
    assert cli("get", "zzz", env_path=path).returncode == 1
    assert json.loads(cli("gc", env_path=path).stdout) == {"removed": []}
    bad = cli("publish", "v9", env_path=path)
    assert bad.returncode == 2 and "unknown version" in bad.stdout
