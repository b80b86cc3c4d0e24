"""Ranker building blocks: DCN-v2 cross layers, DIN target attention, an MLP tower."""

from __future__ import annotations

import torch
from torch import nn


class CrossNetV2(nn.Module):
    """DCN-v2: x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l. [B, F] -> [B, F]."""

    def __init__(self, dim: int, n_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(n_layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x


class TargetAttention(nn.Module):
    """DIN attention: weights from MLP([q, k, q-k, q*k]); padded slots get zero weight.

    query [B, d], keys [B, L, d], mask bool [B, L] (True = real item) -> [B, d].
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(4 * dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q = query.unsqueeze(1).expand_as(keys)
        w = self.score(torch.cat([q, keys, q - keys, q * keys], dim=-1)).squeeze(-1)
        w = w.masked_fill(~mask, 0.0) * mask  # DIN keeps unnormalised weights
        return (w.unsqueeze(-1) * keys).sum(dim=1)


def tower(d_in: int, hidden: tuple[int, ...]) -> nn.Sequential:
    """MLP with ReLU ending in one logit. [B, d_in] -> [B, 1]."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(d_in, h), nn.ReLU()]
        d_in = h
    layers.append(nn.Linear(d_in, 1))
    return nn.Sequential(*layers)
