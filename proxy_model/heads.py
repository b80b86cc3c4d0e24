"""Proxy heads: the Stage-1 coarse head φ and the Stage-2 fine head (φ̃ + residual gate).

Shapes: D is the MLLM hidden size, d the ranker's ID-embedding size, G the number of
layer groups (3 in the paper).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from proxy_model.normaliser import FeatureNormaliser


def mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    """Two-layer MLP with GELU; the shape every head here uses."""
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out))


class CoarseHead(nn.Module):
    """φ: z [B, D] -> h̃ = φ(n(z))/||φ(n(z))||₂ [B, d] (paper §3.1.2); h̃ is p_coarse.

    n is the label-free feature normaliser (``proxy_model.normaliser``), fitted on the
    items' z before Stage 1 (the identity until then).
    """

    def __init__(self, hidden_size: int, id_dim: int, mlp_hidden: int) -> None:
        super().__init__()
        self.normaliser = FeatureNormaliser((hidden_size,))
        self.mlp = mlp(hidden_size, mlp_hidden, id_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(self.normaliser(z)), dim=-1)


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


FineInput = Literal["none", "signed_log"]


def signed_log(x: torch.Tensor) -> torch.Tensor:
    """sign(x)·log(1+|x|): tames the LM's massive activations (hundreds to thousands in a
    few dimensions of raw hidden states), near-identity for small values.

    >>> [round(v, 3) for v in signed_log(torch.tensor([-1000.0, 0.0, 0.01])).tolist()]
    [-6.909, 0.0, 0.01]
    """
    return torch.sign(x) * torch.log1p(x.abs())


class FineHead(nn.Module):
    """Stage 2: φ̃(Concat(n(z_groups))) then the residual gate. [B,d] + [B,G,D] -> [B,d].

    n is the label-free feature normaliser (per group and dimension), fitted on the items'
    z_groups before Stage-2 training (the identity until then); ``input_transform`` is
    applied after it.

    ``input_transform``: the paper is silent on feature scale. Raw hidden states of a real
    LM carry a few huge dimensions that blow up the adaptor's output and, in the ID slot,
    attention and cross. ``signed_log`` (sign·log1p|x|) compresses what the normaliser
    leaves beyond a few standard deviations, and tames raw states when the normaliser was
    never fitted. It is saved in bundle manifests (``fine_input``) so workers apply the
    same function.
    """

    def __init__(
        self,
        hidden_size: int,
        id_dim: int,
        mlp_hidden: int,
        n_groups: int = 3,
        input_transform: FineInput = "none",
    ):
        super().__init__()
        self.normaliser = FeatureNormaliser((n_groups, hidden_size))
        self.adaptor = mlp(n_groups * hidden_size, mlp_hidden, id_dim)
        self.gate = ResidualGate(id_dim)
        self.input_transform: FineInput = input_transform

    def forward(self, p_coarse: torch.Tensor, z_groups: torch.Tensor) -> torch.Tensor:
        z_groups = self.normaliser(z_groups)
        if self.input_transform == "signed_log":
            z_groups = signed_log(z_groups)
        p_raw_fine = self.adaptor(z_groups.flatten(start_dim=1))
        return self.gate(p_coarse, p_raw_fine)
