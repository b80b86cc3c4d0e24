"""Proxy heads: the Stage-1 coarse head φ and the Stage-2 fine head (φ̃ + residual gate).

Shapes: D is the MLLM hidden size, d the ranker's ID-embedding size, G the number of
layer groups (3 in the paper).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    """Two-layer MLP with GELU; the shape every head here uses."""
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out))


class CoarseHead(nn.Module):
    """φ: z [B, D] -> h̃ = φ(z)/||φ(z)||₂ [B, d] (paper §3.1.2); h̃ is p_coarse."""

    def __init__(self, hidden_size: int, id_dim: int, mlp_hidden: int) -> None:
        super().__init__()
        self.mlp = mlp(hidden_size, mlp_hidden, id_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(z), dim=-1)


class ResidualGate(nn.Module):
    """p_fine = W_c p_coarse + r ⊙ p_raw_fine, r = σ(W_g [p_coarse, p_raw_fine]) (§3.2.2).

    W_c starts as the identity, so an untrained gate passes p_coarse through plus half of
    p_raw_fine; W_g carries a bias (the paper is silent; a bias lets r start anywhere).
    """

    def __init__(self, id_dim: int) -> None:
        super().__init__()
        self.w_g = nn.Linear(2 * id_dim, id_dim)
        self.w_c = nn.Linear(id_dim, id_dim, bias=False)
        with torch.no_grad():
            self.w_c.weight.copy_(torch.eye(id_dim))

    def forward(self, p_coarse: torch.Tensor, p_raw_fine: torch.Tensor) -> torch.Tensor:
        r = torch.sigmoid(self.w_g(torch.cat([p_coarse, p_raw_fine], dim=-1)))
        return self.w_c(p_coarse) + r * p_raw_fine


class FineHead(nn.Module):
    """Stage 2: φ̃(Concat(z_groups)) then the residual gate. [B,d] + [B,G,D] -> [B,d]."""

    def __init__(self, hidden_size: int, id_dim: int, mlp_hidden: int, n_groups: int = 3):
        super().__init__()
        self.adaptor = mlp(n_groups * hidden_size, mlp_hidden, id_dim)
        self.gate = ResidualGate(id_dim)

    def forward(self, p_coarse: torch.Tensor, z_groups: torch.Tensor) -> torch.Tensor:
        p_raw_fine = self.adaptor(z_groups.flatten(start_dim=1))
        return self.gate(p_coarse, p_raw_fine)
