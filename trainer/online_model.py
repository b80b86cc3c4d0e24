"""The online CTR ranker: growing ID tables, one item slot, DIN attention, DCN-v2, MLP.

Logit for (user u, target item i, history h_1..h_L):

    slot(j)  = e_id(j)                                               (variant ``id-only``)
    slot(j)  = ProxyFusion(e_id(j), n_j, [p_coarse(j), p_fine(j)], m_j)  (``idproxy``)
    x0       = [e_user(u), slot(i), DIN(slot(i), slot(h_1..h_L))]
    logit    = MLP(CrossNetV2(x0))

``slot`` is the same function for the target and for every history item ("structure
reuse", paper §3.2.3). The fusion (``trainer.fusion``) starts as the identity on e_id, so
an untrained idproxy ranker is the id-only ranker with the same seed. n_j is the number of
training updates item j's ID row has had (``item_table.counts`` before this batch), the
warmth the fusion weighs the proxy by. p_fine = FineHead(p_coarse, z_groups) (adaptor φ̃
+ gate W_g, W_c) is computed inside the forward pass, so the CTR BCE loss trains it end to
end; the MLLM never runs here (z_groups are cached features).

**Miss mask.** m_j = 1 when item j has both cached features (z_groups) and a coarse proxy,
else 0. A miss (an item whose features have not arrived yet, or a click that came before
the upload: ``item_known=False``) has the slot e_id alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from proxy_model.heads import FineHead
from trainer.fusion import ProxyFusion
from trainer.growing_embedding import GrowingEmbedding
from trainer.layers import CrossNetV2, TargetAttention, tower

Variant = Literal["idproxy", "id-only"]


@dataclass(frozen=True)
class OnlineShape:
    """d = ID/proxy dim; D, G = MLLM hidden size and layer groups (idproxy only)."""

    dim: int
    hidden_size: int = 0
    n_groups: int = 0
    adaptor_hidden: int = 128
    fine_input: str = "signed_log"
    cross_layers: int = 2
    attention_hidden: int = 32
    mlp_hidden: tuple[int, ...] = (64, 32)
    initial_rows: int = 1024
    id_init_std: float = 0.0


@dataclass
class Batch:
    """One mini-batch as tensors.

    users [B], items [B] (table rows), history [B, L] (rows, 0 = pad), labels [B] float.
    Content of the U distinct items of the batch (idproxy only): content_index [B, 1+L]
    maps target/history positions to 0..U-1 (pads point anywhere, they are masked);
    p_coarse [U, d], z_groups [U, G, D], has_proxy [U] bool.
    """

    users: torch.Tensor
    items: torch.Tensor
    history: torch.Tensor
    labels: torch.Tensor
    content_index: torch.Tensor | None = None
    p_coarse: torch.Tensor | None = None
    z_groups: torch.Tensor | None = None
    has_proxy: torch.Tensor | None = None


class OnlineRanker(nn.Module):
    """Batch -> logits [B]. Parameters are per instance (no sharing across variants)."""

    def __init__(self, shape: OnlineShape, variant: Variant, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self._build(shape, variant, seed)

    def _build(self, shape: OnlineShape, variant: Variant, seed: int) -> None:
        d = shape.dim
        self.shape = shape
        self.variant = variant
        self.user_table = GrowingEmbedding(d, shape.initial_rows, 2 * seed, shape.id_init_std)
        self.item_table = GrowingEmbedding(d, shape.initial_rows, 2 * seed + 1, shape.id_init_std)
        self.attention = TargetAttention(d, shape.attention_hidden)
        self.cross = CrossNetV2(3 * d, shape.cross_layers)
        self.mlp = tower(3 * d, shape.mlp_hidden)
        if variant == "idproxy":  # built last: both variants draw the same shared weights
            self.fine_head = FineHead(
                shape.hidden_size, d, shape.adaptor_hidden, shape.n_groups, shape.fine_input
            )
            self.fusion = ProxyFusion(d, n_proxies=2)

    def slots(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(target slots [B, d], history slots [B, L, d])."""
        rows = torch.cat([batch.items[:, None], batch.history], dim=1)  # [B, 1+L]
        e = self.item_table(rows)
        if self.variant == "id-only":
            return e[:, 0], e[:, 1:]
        assert batch.p_coarse is not None and batch.content_index is not None
        p_fine = self.fine_head(batch.p_coarse, batch.z_groups)
        proxies = torch.stack([batch.p_coarse, p_fine], dim=1)[batch.content_index]
        updates = self.item_table.counts[rows]  # [B, 1+L], before this batch's step
        if self.training:
            self.fusion.observe_id_norms(e.detach().flatten(0, 1), updates.flatten() > 0)
        s = self.fusion(e, updates, proxies, batch.has_proxy[batch.content_index])
        return s[:, 0], s[:, 1:]

    def forward(self, batch: Batch) -> torch.Tensor:
        target, hist = self.slots(batch)
        interest = self.attention(target, hist, batch.history > 0)
        x0 = torch.cat([self.user_table(batch.users), target, interest], dim=-1)
        return self.mlp(self.cross(x0)).squeeze(-1)
