"""Hierarchical representation partitioning (paper §3.2.1): k-means over the layers.

What is clustered: each transformer layer l (1..L; the embedding output is excluded) is
described by the matrix of its masked-mean-pooled hidden states over a sample of items,
ℓ2-normalised per item and flattened: ``x_l ∈ R^{N·D}``. Layers whose item representations
look alike fall together.

How: the paper asks for groups "from shallow to deep". Plain Lloyd k-means over the x_l can
interleave layers (e.g. put layer 3 with layer 20), which is not a shallow→deep split. We
therefore solve k-means *under a contiguity constraint*: choose k contiguous segments of the
layer sequence minimising the k-means objective Σ_groups Σ_{l∈group} ||x_l − mean_group||²,
exactly, by dynamic programming (O(k·L²)). Each segment is then one group, ordered shallow
to deep.

>>> import torch
>>> x = torch.tensor([[0.0], [0.1], [5.0], [5.1], [9.0], [9.2]])
>>> contiguous_kmeans(x, k=3)
[[1, 2], [3, 4], [5, 6]]
"""

from __future__ import annotations

import torch


def contiguous_kmeans(layer_vectors: torch.Tensor, k: int) -> list[list[int]]:
    """layer_vectors [L, F] (row j is layer j+1) -> k contiguous groups of 1-based layers."""
    n_layers = layer_vectors.shape[0]
    if not 1 <= k <= n_layers:
        raise ValueError(f"cannot split {n_layers} layers into {k} groups")
    x = layer_vectors.double()
    prefix = torch.cat([torch.zeros(1, x.shape[1], dtype=x.dtype), x.cumsum(0)])
    prefix_sq = torch.cat([torch.zeros(1, dtype=x.dtype), (x * x).sum(1).cumsum(0)])

    def sse(a: int, b: int) -> float:  # layers a..b-1 (0-based, half-open)
        s = prefix[b] - prefix[a]
        return float(prefix_sq[b] - prefix_sq[a] - (s * s).sum() / (b - a))

    inf = float("inf")
    cost = [[inf] * (n_layers + 1) for _ in range(k + 1)]
    split = [[0] * (n_layers + 1) for _ in range(k + 1)]
    cost[0][0] = 0.0
    for g in range(1, k + 1):
        for end in range(g, n_layers + 1):
            for start in range(g - 1, end):
                c = cost[g - 1][start] + sse(start, end)
                if c < cost[g][end]:
                    cost[g][end], split[g][end] = c, start
    bounds, end = [], n_layers
    for g in range(k, 0, -1):
        start = split[g][end]
        bounds.append((start, end))
        end = start
    return [list(range(a + 1, b + 1)) for a, b in reversed(bounds)]


def layer_vectors_from_states(hidden_states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[L, B, T, D] token states + [B, T] mask -> [L, B·D] per-layer descriptors.

    Each item's masked mean over tokens is ℓ2-normalised, so every item weighs the same.
    """
    m = mask.to(hidden_states.dtype)[None, :, :, None]  # [1, B, T, 1]
    pooled = (hidden_states * m).sum(2) / m.sum(2).clamp_min(1.0)  # [L, B, D]
    pooled = torch.nn.functional.normalize(pooled, dim=-1)
    return pooled.flatten(start_dim=1)
