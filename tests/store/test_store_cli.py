"""`idproxy store ...` on a real store directory."""

import json
import signal
import subprocess
import sys

import httpx
import numpy as np

from idproxy.cli import build_parser
from idproxy.settings import load_settings
from store import ProxyStore
from store import cli as store_cli


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


def test_serve_refuses_a_public_host_without_a_token(tmp_path, capsys):
    path = str(tmp_path / "db")
    ProxyStore(path, dim=4).close()
    args = build_parser().parse_args(["store", "--path", path, "serve", "--host", "0.0.0.0"])
    settings = load_settings(model={"id_dim": 4}, store={"api_token": None})
    assert store_cli.run(args, settings) == 2
    out = capsys.readouterr().out
    assert "refusing to serve on 0.0.0.0 without an API token" in out
    assert "IDPROXY_STORE_API_TOKEN" in out


def test_serve_with_a_token_on_all_interfaces_never_logs_it(tmp_path):
    path, token = str(tmp_path / "db"), "tok-9f8e7d"
    with ProxyStore(path, dim=4) as s:
        s.stage("v1")
        s.write_batch("v1", ["a"], np.ones((1, 4), np.float32), np.ones((1, 4), np.float32))
        s.publish("v1")
    env = {"IDPROXY_MODEL_ID_DIM": "4", "IDPROXY_STORE_API_TOKEN": token, "PATH": "/usr/bin:/bin"}
    args = ["store", "--path", path, "serve", "--host", "0.0.0.0", "--port", "0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "idproxy.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        banner = proc.stdout.readline()
        assert "bearer token required" in banner, banner
        port = int(banner.split("http://0.0.0.0:")[1].split()[0])
        url = f"http://127.0.0.1:{port}/v1/proxies/a"
        assert httpx.get(url, timeout=10).status_code == 401
        resp = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert resp.status_code == 200 and resp.json()["version"] == "v1"
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, rest
    assert token not in banner + rest
