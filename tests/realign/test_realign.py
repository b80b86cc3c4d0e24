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


def test_continuity_rotates_a_new_version_onto_the_old_basis():
    """A candidate that is the current head rotated by Q is rotated back (R = Qᵀ): every
    p_coarse returns to its old value, and the candidate's mutual cosines are unchanged."""
    from proxy_model.heads import CoarseHead
    from trainer.realign import keep_continuity

    torch.manual_seed(0)
    current = CoarseHead(12, 6, 16)
    q, _ = torch.linalg.qr(torch.randn(6, 6))
    candidate = CoarseHead(12, 6, 16)
    candidate.load_state_dict(current.state_dict())
    with torch.no_grad():
        candidate.mlp[-1].weight.copy_(q.T @ current.mlp[-1].weight)
        candidate.mlp[-1].bias.copy_(current.mlp[-1].bias @ q)
    z = torch.randn(50, 12)
    with torch.no_grad():
        before = candidate(z)
        assert not torch.allclose(before, current(z), atol=1e-3)
        rotation = keep_continuity(candidate, current, z)
        after = candidate(z)
    assert torch.allclose(rotation, q.T, atol=1e-4)
    assert torch.allclose(after, current(z), atol=1e-4)
    assert torch.allclose(after @ after.T, before @ before.T, atol=1e-4)
