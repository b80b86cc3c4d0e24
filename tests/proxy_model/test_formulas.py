"""Each formula of the method checked against a hand computation on small tensors."""

import math

import pytest
import torch

from proxy_model.alignment import pal_loss, preprocess_id_embeddings
from proxy_model.heads import CoarseHead, FineHead, ResidualGate
from proxy_model.layer_groups import contiguous_kmeans, layer_vectors_from_states
from proxy_model.pooling import AttentionPooling


def test_pal_loss_matches_hand_computation():
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    e = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    tau = 0.5
    # row 0: logits [0.6, 1.0]/0.5 = [1.2, 2.0]; row 1: [0.8, 0.0]/0.5 = [1.6, 0.0]
    want = -0.5 * (
        (1.2 - math.log(math.exp(1.2) + math.exp(2.0)))
        + (0.0 - math.log(math.exp(1.6) + math.exp(0.0)))
    )
    got = pal_loss(h, e, torch.tensor([10, 11]), tau)
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_pal_loss_masks_duplicate_items_as_negatives():
    h = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    e = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    tau = 1.0
    dup = pal_loss(h, e, torch.tensor([7, 7, 8]), tau)
    # rows 0 and 1 are the same item: each sees only itself and row 2 in the denominator
    row01 = -(1.0 - math.log(math.exp(1.0) + math.exp(0.0)))
    row2 = -(1.0 - math.log(math.exp(0.0) + math.exp(0.0) + math.exp(1.0)))
    assert dup.item() == pytest.approx((2 * row01 + row2) / 3, rel=1e-6)
    distinct = pal_loss(h, e, torch.tensor([7, 9, 8]), tau)
    assert distinct.item() > dup.item()  # without masking the duplicate counts as negative


def test_tau_filter_keeps_frequent_rows_and_normalises():
    table = torch.tensor([[3.0, 4.0], [10.0, 0.0], [0.0, 0.0], [0.0, -2.0]])
    idx, e = preprocess_id_embeddings(table, torch.tensor([5, 4, 9, 6]), min_updates=5)
    assert idx.tolist() == [0, 3]  # row 1 too rare, row 2 has zero norm
    assert torch.allclose(e, torch.tensor([[0.6, 0.8], [0.0, -1.0]]))


def test_coarse_head_outputs_unit_vectors():
    head = CoarseHead(hidden_size=6, id_dim=4, mlp_hidden=8)
    out = head(torch.randn(5, 6) * 100)
    assert out.shape == (5, 4)
    assert torch.allclose(out.norm(dim=-1), torch.ones(5), atol=1e-6)


def test_gate_formula():
    gate = ResidualGate(id_dim=2)
    with torch.no_grad():
        gate.w_c.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 3.0]]))
        gate.w_g.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]))
        gate.w_g.bias.zero_()
    pc, prf = torch.tensor([[1.0, -1.0]]), torch.tensor([[0.5, 2.0]])
    r = torch.sigmoid(torch.tensor([1.0, 2.0]))  # W_g [pc, prf] = [pc_0, prf_1]
    want = torch.tensor([2.0, -3.0]) + r * prf[0]
    assert torch.allclose(gate(pc, prf)[0], want)


def test_fine_head_concatenates_groups_before_the_adaptor():
    head = FineHead(hidden_size=3, id_dim=2, mlp_hidden=4, n_groups=3)
    assert head.adaptor[0].in_features == 9
    assert head(torch.randn(5, 2), torch.randn(5, 3, 3)).shape == (5, 2)


def test_layer_groups_are_contiguous_ordered_and_optimal():
    # layers 1-3 alike, 4-5 alike, 6-8 alike (but 1 and 8 also alike: plain k-means
    # could merge them; the contiguous version must not)
    x = torch.tensor([[0.0], [0.1], [0.2], [5.0], [5.1], [9.0], [9.1], [0.05]])
    groups = contiguous_kmeans(x, 3)
    flat = [layer for g in groups for layer in g]
    assert flat == list(range(1, 9))  # contiguous, ordered, every layer once
    assert all(g for g in groups)

    # exact optimum by brute force over all split points
    def sse(seg):
        v = x[[i - 1 for i in seg]]
        return ((v - v.mean(0)) ** 2).sum().item()

    best = min(
        sse(list(range(1, a + 1))) + sse(list(range(a + 1, b + 1))) + sse(list(range(b + 1, 9)))
        for a in range(1, 7)
        for b in range(a + 1, 8)
    )
    assert sum(sse(g) for g in groups) == pytest.approx(best)


def test_layer_vectors_weight_every_item_equally():
    states = torch.randn(4, 2, 5, 3)  # [L, B, T, D]
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    v = layer_vectors_from_states(states, mask)
    assert v.shape == (4, 6)
    assert torch.allclose(v.view(4, 2, 3).norm(dim=-1), torch.ones(4, 2), atol=1e-6)


def test_attention_pooling_ignores_padding_and_starts_as_mean():
    g = AttentionPooling(2)
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert torch.allclose(g(h, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]]))
    with torch.no_grad():
        g.query.copy_(torch.tensor([50.0, 0.0]))
    # a sharp query puts (almost) all weight on the token with the largest first coordinate
    assert torch.allclose(g(h, torch.tensor([[1, 1, 0]])), torch.tensor([[3.0, 4.0]]), atol=1e-3)
