"""The label-free feature normaliser: per-dimension standardisation of pooled MLLM features.

Raw hidden states of a real LM carry a few dimensions with activations in the hundreds or
thousands and a large common offset, so an MLP on them (φ, φ̃) mostly sees those
dimensions. The normaliser is fitted once on item features alone (no labels: the mean and
standard deviation over items of each dimension), then frozen. It is a submodule of the
coarse head φ and of the fine head φ̃, so its statistics travel in every bundle and
checkpoint with the head that uses them, and the worker, the trainer, the re-alignment
job and the offline benchmark apply the same function. Until it is fitted it is the
identity.

x [..., *shape] -> clamp((x − mean) / std, −clip, clip)

>>> import torch
>>> norm = FeatureNormaliser((2,))
>>> x = torch.tensor([[1.0, 100.0], [3.0, 300.0], [5.0, 500.0]])
>>> bool(torch.equal(norm(x), x))  # not fitted: the identity
True
>>> norm.fit(x)
>>> [[round(v, 3) for v in row] for row in norm(x).tolist()]
[[-1.0, -1.0], [0.0, 0.0], [1.0, 1.0]]
"""

from __future__ import annotations

import torch
from torch import nn


class FeatureNormaliser(nn.Module):
    """Per-dimension (x − mean) / std over items; buffers mean, std [*shape], fitted []."""

    def __init__(self, shape: tuple[int, ...], clip: float = 8.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("std", torch.ones(shape))
        self.register_buffer("fitted", torch.tensor(False))
        self.clip = clip
        self.eps = eps

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        """Fits mean and std over the leading dimension of x [N, *shape] (N ≥ 2), then
        freezes them."""
        if x.shape[1:] != self.mean.shape or x.shape[0] < 2:
            raise ValueError(
                f"fit needs [N >= 2, {tuple(self.mean.shape)}] features, got {tuple(x.shape)}"
            )
        x = x.float()
        self.mean.copy_(x.mean(dim=0))
        self.std.copy_(x.std(dim=0) + self.eps)
        self.fitted.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.fitted):
            return x
        return ((x - self.mean) / self.std).clamp(-self.clip, self.clip)
