"""The CTR ranker f_θ: IDs + side features, DCN-v2 cross, DIN attention, MLP, logit.

One ``item_slot`` builds the representation of the target item and of every history
item. With structure reuse (v3/v5) the slot is Linear(concat[e_id, p_coarse, p_fine]) -> d,
so attention and the cross block both see the proxies. p_fine comes from
``proxy_model.heads.FineHead`` (adaptor φ̃ + gate W_g, W_c), trained end to end under the
CTR BCE loss (eq. 2) on precomputed, frozen MLLM features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from proxy_model.heads import FineHead
from trainer.data import SideFeatures
from trainer.layers import CrossNetV2, TargetAttention, tower
from trainer.variants import VariantConfig


@dataclass
class ItemTables:
    """Per-item content tensors indexed by raw item id (row 0 = padding, zeros).

    p_coarse [I+1, d]; z_groups [I+1, G, D]; frozen [I+1, D]; cb2cf [I+1, d] or None.
    """

    p_coarse: torch.Tensor
    z_groups: torch.Tensor
    frozen: torch.Tensor
    cb2cf: torch.Tensor | None = None


@dataclass(frozen=True)
class RankerShape:
    n_users: int
    n_items: int
    dim: int
    side_dim: int
    cross_layers: int
    attention_hidden: int
    mlp_hidden: tuple[int, ...]
    adaptor_hidden: int


class Ranker(nn.Module):
    """Batch: users [B], items [B], history [B, L] (0 = pad) -> logits [B]."""

    def __init__(
        self, shape: RankerShape, variant: VariantConfig, side: SideFeatures, tables: ItemTables
    ) -> None:
        super().__init__()
        d, s = shape.dim, shape.side_dim
        self.variant = variant
        self.user_emb = nn.Embedding(shape.n_users + 1, d)
        self.item_emb = nn.Embedding(shape.n_items + 1, d)
        nn.init.normal_(self.user_emb.weight, std=0.01)
        nn.init.normal_(self.item_emb.weight, std=0.01)
        self.register_buffer("user_cat", side.user_cat)
        self.register_buffer("item_genres", side.item_genres)
        self.register_buffer("item_year", side.item_year)
        self.register_buffer("p_coarse", tables.p_coarse)
        self.register_buffer("z_groups", tables.z_groups)
        self.register_buffer("frozen", tables.frozen)
        self.register_buffer("warm", torch.zeros(shape.n_items + 1, dtype=torch.bool))
        self.cat_embs = nn.ModuleList(nn.Embedding(c, s) for c in side.cardinalities[:3])
        self.year_emb = nn.Embedding(side.cardinalities[3], s)
        self.genre_proj = nn.Linear(side.item_genres.shape[1], s)
        hidden = tables.frozen.shape[1]
        n_groups = tables.z_groups.shape[1]

        slot_in = d * (1 + variant.slot_coarse + variant.slot_fine + variant.slot_content)
        self.slot_proj = nn.Linear(slot_in, d) if slot_in > d else nn.Identity()
        self.fine_head = (
            FineHead(hidden, d, shape.adaptor_hidden, n_groups) if variant.uses_fine else None
        )
        needs_content_proj = variant.slot_content or variant.feat_frozen
        self.content_proj = nn.Linear(hidden, d) if needs_content_proj else None
        self.generator = (
            nn.Sequential(nn.Linear(hidden, 2 * d), nn.ReLU(), nn.Linear(2 * d, d))
            if variant.id_replacement == "generator"
            else None
        )
        if variant.feat_cb2cf:
            assert tables.cb2cf is not None, "v2 needs the CB2CF table"
            self.register_buffer("cb2cf", tables.cb2cf)

        x0_dim = 3 * d + 5 * s + d * (variant.feat_frozen + variant.feat_cb2cf)
        self.attention = TargetAttention(d, shape.attention_hidden)
        self.cross = CrossNetV2(x0_dim, shape.cross_layers)
        self.mlp = tower(x0_dim + 2 * d * variant.mlp_proxies, shape.mlp_hidden)

    def fine_table(self, items: torch.Tensor) -> torch.Tensor | None:
        """p_fine for the unique items of ``items`` scattered into a [I+1, d] table."""
        if self.fine_head is None:
            return None
        uniq = torch.unique(items)
        fine = self.fine_head(self.p_coarse[uniq], self.z_groups[uniq])
        table = torch.zeros(self.p_coarse.shape, dtype=fine.dtype, device=fine.device)
        return table.index_put((uniq,), fine)

    def id_embedding(self, items: torch.Tensor) -> torch.Tensor:
        """e_id [*, d]; DropoutNet / generator replacement in training and for cold items."""
        e = self.item_emb(items)
        v = self.variant
        if v.id_replacement == "none":
            return e
        drop = ~self.warm[items]
        if self.training:
            drop = drop | (torch.rand(items.shape, device=items.device) < v.id_dropout)
        if v.id_replacement == "zeros":
            fill = torch.zeros_like(e)
        else:
            assert self.generator is not None
            fill = self.generator(self.frozen[items])
        return torch.where(drop.unsqueeze(-1), fill, e)

    def item_slot(self, items: torch.Tensor, fine: torch.Tensor | None) -> torch.Tensor:
        """THE ID slot, for target [B] and history [B, L] items alike -> [*, d]."""
        v = self.variant
        parts = [self.id_embedding(items)]
        if v.slot_coarse:
            parts.append(self.p_coarse[items])
        if v.slot_fine:
            assert fine is not None
            parts.append(fine[items])
        if v.slot_content:
            assert self.content_proj is not None
            parts.append(self.content_proj(self.frozen[items]))
        return self.slot_proj(torch.cat(parts, dim=-1))

    def forward(
        self, users: torch.Tensor, items: torch.Tensor, history: torch.Tensor
    ) -> torch.Tensor:
        v = self.variant
        fine = self.fine_table(torch.cat([items, history.flatten()]))
        target = self.item_slot(items, fine)
        hist = self.item_slot(history, fine)
        interest = self.attention(target, hist, history > 0)
        ucat = self.user_cat[users]
        feats = [self.user_emb(users), target, interest]
        feats += [emb(ucat[:, k]) for k, emb in enumerate(self.cat_embs)]
        feats += [self.genre_proj(self.item_genres[items]), self.year_emb(self.item_year[items])]
        if v.feat_frozen:
            assert self.content_proj is not None
            feats.append(self.content_proj(self.frozen[items]))
        if v.feat_cb2cf:
            feats.append(self.cb2cf[items])
        x = self.cross(torch.cat(feats, dim=-1))
        if v.mlp_proxies:
            assert fine is not None
            x = torch.cat([x, self.p_coarse[items], fine[items]], dim=-1)
        return self.mlp(x).squeeze(-1)
