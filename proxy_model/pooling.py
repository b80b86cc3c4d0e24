"""Attention pooling g(·) over token-level hidden states (paper §3.1.2).

g is a single learned query: ``a = softmax_t(q·H_t / sqrt(D))`` over the valid (unpadded)
tokens, ``z = Σ_t a_t H_t``. The [EMB] token is one of the tokens, so it is always pooled
over; its position is not singled out, the attention learns how much weight it gets.
The query starts at zero, so an untrained g is the masked mean of the tokens.

>>> import torch
>>> g = AttentionPooling(4)
>>> h = torch.tensor([[[1.0, 0, 0, 0], [3.0, 0, 0, 0], [9.0, 9, 9, 9]]])
>>> g(h, torch.tensor([[1, 1, 0]]))  # the padded third token is ignored
tensor([[2., 0., 0., 0.]], grad_fn=<SumBackward1>)
"""

from __future__ import annotations

import math

import torch
from torch import nn


class AttentionPooling(nn.Module):
    """[B, T, D] hidden states + [B, T] mask (1 = token) -> [B, D]."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(hidden_size))
        self.scale = 1.0 / math.sqrt(hidden_size)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = (hidden @ self.query) * self.scale  # [B, T]
        scores = scores.masked_fill(mask == 0, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1)
        return (weights.unsqueeze(-1) * hidden).sum(dim=1)
