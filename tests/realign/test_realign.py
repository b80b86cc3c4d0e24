"""Re-alignment on a drifting ID table, and the guardrail."""

import torch
import torch.nn.functional as F

from proxy_model.heads import CoarseHead
from proxy_model.stage1 import Stage1Config, fit_coarse_head
from trainer.realign import realign_coarse_head

N, D, DIM = 300, 16, 8


def _world(seed: int):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(N, D, generator=g)
    return z, torch.randn(D, DIM, generator=g)


def test_drifted_table_is_refit_and_shuffled_candidate_is_rejected():
    z, old_map = _world(0)
    config = Stage1Config(lr=3e-3, batch_size=64, epochs=40, tau_c=0.1)
    head = CoarseHead(D, DIM, 32)
    counts = torch.full((N,), 10)
    fit_coarse_head(head, z, F.normalize(z @ old_map, dim=-1), config, progress=False)

    # the ranker's table drifts: targets now come from a different map of the same content
    _, new_map = _world(1)
    drifted = z @ (0.3 * old_map + new_map)
    good = realign_coarse_head(z, drifted, counts, head, config, min_updates=5)
    assert good.accepted, good.reason
    assert good.candidate_report.recall_at_k > good.current.recall_at_k

    bad = realign_coarse_head(
        z, drifted, counts, good.candidate, config, min_updates=5, shuffle_targets=True
    )
    assert not bad.accepted
    assert "regressed" in bad.reason


def test_tau_filter_applies_to_realignment_targets():
    z, m = _world(2)
    counts = torch.zeros(N, dtype=torch.long)
    counts[:40] = 5
    out = realign_coarse_head(
        z, z @ m, counts, CoarseHead(D, DIM, 16), Stage1Config(epochs=1), min_updates=5
    )
    assert out.n_targets == 40
