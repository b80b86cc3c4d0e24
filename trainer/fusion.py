"""The ID-slot fusion: how a proxy enters an item's ID slot (paper §2.1, §3.2.3).

One module, used by the offline ranker (Table 1), the online trainer and users' own
rankers. Contract, for any leading shape ``*`` (a target batch [B] or a history [B, L]):

    e_id         [*, d]     the item's ID-embedding row (untrained for a new item)
    interactions [*]        long, the item's interactions before this sample (n)
    proxies      [*, K, d]  K proxy vectors (p_coarse, p_fine, ...), any scale
    has_proxy    [*]        bool, False where the item has no proxy yet (a miss)
    -> slot      [*, d]

    slot = e_id + m · w(n) · Σ_k A_k (ρ · p_k / ‖p_k‖)

* **Starts as the ID-only model.** A_k (d × d) are zero-initialised, so at initialisation
  ``slot == e_id`` exactly and a ranker built on this module computes what the ID-only
  ranker computes. The content path earns its weight through the CTR loss only.
* **Proxies at the ID rows' scale.** Each proxy is ℓ2-normalised and multiplied by ρ, the
  running mean norm of the ID rows the ranker has trained (a buffer, no gradient, updated
  by ``observe_id_norms``), so a unit-norm proxy does not swamp a 0.06-norm ID row.
* **Weight by warmth.** w(n) = σ(a − softplus(b) · log(1 + n)), learned (a, b scalars).
  It is monotone non-increasing in n by construction: a new item leans on its proxy, a warm
  item on its ID row. Learned rather than scheduled, because how fast an ID row becomes
  useful depends on the learning rate, the traffic and the optimiser; a fixed schedule
  would have to be re-tuned for each. Two scalars keep it from overfitting. It starts at
  a = 2, b = softplus⁻¹(0.5): w(0) ≈ 0.88, w(20) ≈ 0.68, w(100) ≈ 0.37.
* **Structure reuse.** The caller applies the same module to the target item and to every
  history item, so a new item's proxy flows through the same attention and interaction
  layers as a warm item's ID row.
* **Miss mask.** m = 0 for an item without a proxy: its slot is its ID row alone.

>>> import torch
>>> fusion = ProxyFusion(dim=4, n_proxies=2)
>>> e = torch.randn(3, 4)
>>> n = torch.tensor([0, 5, 100])
>>> p = torch.randn(3, 2, 4)
>>> bool(torch.equal(fusion(e, n, p, torch.ones(3, dtype=torch.bool)), e))  # ID-only at init
True
>>> w = fusion.warmth_weight(torch.tensor([0, 20, 100]))
>>> bool(w[0] > w[1] > w[2])
True
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ProxyFusion(nn.Module):
    """(e_id [*, d], interactions [*], proxies [*, K, d], has_proxy [*]) -> slot [*, d]."""

    def __init__(self, dim: int, n_proxies: int, norm_momentum: float = 0.01) -> None:
        super().__init__()
        self.dim = dim
        self.n_proxies = n_proxies
        self.maps = nn.Parameter(torch.zeros(n_proxies, dim, dim))  # A_k, zero: ID-only start
        self.warmth_bias = nn.Parameter(torch.tensor(2.0))  # a
        self.warmth_slope = nn.Parameter(torch.tensor(math.log(math.expm1(0.5))))  # b
        self.register_buffer("id_norm", torch.tensor(0.0))  # ρ; 0 = not observed yet
        self.norm_momentum = norm_momentum

    def warmth_weight(self, interactions: torch.Tensor) -> torch.Tensor:
        """w(n) [*] in (0, 1), non-increasing in n."""
        n = interactions.clamp(min=0).to(self.maps.dtype)
        return torch.sigmoid(self.warmth_bias - F.softplus(self.warmth_slope) * torch.log1p(n))

    @torch.no_grad()
    def observe_id_norms(self, rows: torch.Tensor, trained: torch.Tensor) -> None:
        """Updates ρ from ID rows [N, d] of items with ``trained`` [N] bool (n > 0)."""
        if not bool(trained.any()):
            return
        mean = rows[trained].norm(dim=-1).mean()
        if float(self.id_norm) == 0.0:
            self.id_norm.copy_(mean)
        else:
            self.id_norm.lerp_(mean, self.norm_momentum)

    def content(self, proxies: torch.Tensor) -> torch.Tensor:
        """Σ_k A_k ρ p̂_k: [*, K, d] -> [*, d] (before the warmth weight and the miss mask)."""
        scale = self.id_norm if float(self.id_norm) > 0 else self.id_norm.new_tensor(1.0)
        unit = F.normalize(proxies, dim=-1) * scale
        return torch.einsum("...kd,ked->...e", unit, self.maps)

    def forward(
        self,
        e_id: torch.Tensor,
        interactions: torch.Tensor,
        proxies: torch.Tensor,
        has_proxy: torch.Tensor,
    ) -> torch.Tensor:
        if proxies.shape[-2:] != (self.n_proxies, self.dim):
            raise ValueError(
                f"proxies must be [*, {self.n_proxies}, {self.dim}], got {tuple(proxies.shape)}"
            )
        w = self.warmth_weight(interactions) * has_proxy.to(e_id.dtype)
        return e_id + w.unsqueeze(-1) * self.content(proxies)
