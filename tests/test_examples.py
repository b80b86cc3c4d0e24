"""examples/: the plain ranker, its IDProxy version and the MovieLens runner, end to end.

The runner is run with ``--tiny``: a real ProxyStore, the real read API on a loopback port
and the client. About 30 s once the tiny encoder's token states are cached under
~/.cache/idproxy/features (the first run on a machine adds about a minute). Whether
IDProxy wins is a measurement (docs/ADOPTION.md), not asserted.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

from examples import adopt_idproxy, plain_ranker

ROOT = Path(__file__).resolve().parents[1]


def _batch(b: int = 6, length: int = 4, dim: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    hist = torch.randint(0, 20, (b, length), generator=g)
    return {
        "user": torch.randint(1, 10, (b,), generator=g),
        "item": torch.randint(1, 20, (b,), generator=g),
        "hist": hist,
        "label": torch.randint(0, 2, (b,), generator=g).float(),
        "n_item": torch.randint(0, 30, (b,), generator=g),
        "n_hist": torch.randint(0, 30, (b, length), generator=g),
        "proxy_item": torch.randn(b, 2, dim, generator=g),
        "has_item": torch.ones(b, dtype=torch.bool),
        "proxy_hist": torch.randn(b, length, 2, dim, generator=g),
        "has_hist": hist > 0,
    }


def test_idproxy_ranker_starts_as_the_plain_ranker_and_then_learns_from_proxies():
    batch = _batch()
    torch.manual_seed(3)
    plain, _ = plain_ranker.build(10, 20, 8, lr=1e-2)
    torch.manual_seed(3)
    adopted, optimizer = adopt_idproxy.build(10, 20, 8, lr=1e-2)
    assert torch.equal(plain_ranker.score(plain, batch), adopt_idproxy.score(adopted, batch))
    adopt_idproxy.train_step(adopted, optimizer, batch)
    assert adopted.fusion.maps.abs().sum() > 0  # the content path gets gradient
    assert float(adopted.fusion.id_norm) > 0  # ρ observed from the trained rows


def test_the_adoption_diff_is_small_and_marked():
    plain = (ROOT / "examples/plain_ranker.py").read_text().splitlines()
    adopted = (ROOT / "examples/adopt_idproxy.py").read_text().splitlines()
    diff = list(difflib.unified_diff(plain, adopted, lineterm="", n=0))
    removed = [ln for ln in diff if ln.startswith("-") and not ln.startswith("---")]
    assert len(removed) <= 1  # the module docstring's first line
    added = [ln[1:] for ln in diff if ln.startswith("+") and not ln.startswith("+++")]
    helpers = added.index(
        "# IDProxy: everything below is new: proxies for a batch, read through the client."
    )
    in_model = [ln for ln in added[:helpers] if ln.strip()]
    assert len(in_model) <= 16  # docstring, imports, fusion, two slots, ρ
    hunks = "\n".join(diff).split("\n@@")[1:]
    assert all("IDProxy" in hunk for hunk in hunks)  # every change is marked


def test_runner_tiny_end_to_end():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "examples.run_movielens", "--tiny"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["profile"] == "tiny" and result["seeds"] == [0, 1]
    assert result["proxy_version"] == "tiny-untrained-seed0"
    assert result["target_proxy_hit_rate"] == 1.0  # every target was served by the API
    assert result["init_max_abs_diff"] == 0.0  # zero-init: same seed, same first scores
    assert result["samples"]["all"] == result["ratings"] - result["scored_from"] > 0
    for variant in ("plain", "idproxy"):
        for s in ("all", "new", "cold"):
            assert len(result["per_seed"][variant][s]) == 2
            assert all(math.isfinite(a) and 0 < a < 1 for a in result["per_seed"][variant][s])
            mean, std = result["auc"][variant][s]
            assert math.isfinite(mean) and std >= 0
    for s in ("all", "new", "cold"):
        assert set(result["delta"][s]) == {"mean_std", "wins"}
        assert 0 <= result["delta"][s]["wins"] <= 2
    assert "prequential AUC" in done.stdout
