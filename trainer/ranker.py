"""The CTR ranker f_θ: IDs + side features, DCN-v2 cross, DIN attention, MLP, logit.

One ``item_slot`` builds the representation of the target item and of every history
item. With structure reuse (v3, v5, the distillation control) the slot is the paper's
fusion ``trainer.fusion.ProxyFusion``: slot = e_id + has·w(n)·Σ_k A_k ρ p̂_k, with n the
number of training updates the item's ID row has had (the ``updates`` buffer, counted by
``trainer.table1.train_epochs``; 0 for a new item) and A_k zero-initialised, so every
fusion variant starts as Base. Attention and the cross block both see the proxies.
p_fine comes from ``proxy_model.heads.FineHead`` (adaptor φ̃ + gate W_g, W_c), trained end
to end under the CTR BCE loss (eq. 2) on precomputed, frozen MLLM features.

The user and item ID tables are sparse (``sparse=True``) and are trained by
``trainer.optim.RowSparseAdam`` (``Ranker.optimizer``), the same for every variant: a row
moves only in the steps whose batch holds it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from proxy_model.heads import FineHead
from trainer.data import SideFeatures
from trainer.fusion import ProxyFusion
from trainer.layers import CrossNetV2, TargetAttention, tower
from trainer.optim import RowSparseAdam
from trainer.variants import VariantConfig


@dataclass
class ItemTables:
    """Per-item content tensors indexed by raw item id (row 0 = padding, zeros).

    p_coarse [I+1, d]; z_groups [I+1, G, D]; frozen [I+1, D]; has_content bool [I+1];
    cb2cf [I+1, d] or None (v2); base_id [I+1, d] or None (the control: Base's trained ID
    rows, ℓ2-normalised, zero where Base never trained the item) with base_trained bool
    [I+1].
    """

    p_coarse: torch.Tensor
    z_groups: torch.Tensor
    frozen: torch.Tensor
    has_content: torch.Tensor
    cb2cf: torch.Tensor | None = None
    base_id: torch.Tensor | None = None
    base_trained: torch.Tensor | None = None


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
    id_init_std: float = 0.0


class Ranker(nn.Module):
    """Batch: users [B], items [B], history [B, L] (0 = pad) -> logits [B]."""

    def __init__(
        self, shape: RankerShape, variant: VariantConfig, side: SideFeatures, tables: ItemTables
    ) -> None:
        super().__init__()
        d, s = shape.dim, shape.side_dim
        self.variant = variant
        self.user_emb = nn.Embedding(shape.n_users + 1, d, sparse=True)
        self.item_emb = nn.Embedding(shape.n_items + 1, d, sparse=True)
        for table in (self.user_emb, self.item_emb):  # std 0: a new id is the mean item
            nn.init.normal_(table.weight, std=shape.id_init_std)
        self.register_buffer("user_cat", side.user_cat)
        self.register_buffer("item_genres", side.item_genres)
        self.register_buffer("item_year", side.item_year)
        self.register_buffer("p_coarse", tables.p_coarse)
        self.register_buffer("z_groups", tables.z_groups)
        self.register_buffer("frozen", tables.frozen)
        self.register_buffer("warm", torch.zeros(shape.n_items + 1, dtype=torch.bool))
        self.register_buffer("updates", torch.zeros(shape.n_items + 1, dtype=torch.long))
        self.cat_embs = nn.ModuleList(nn.Embedding(c, s) for c in side.cardinalities[:3])
        self.year_emb = nn.Embedding(side.cardinalities[3], s)
        self.genre_proj = nn.Linear(side.item_genres.shape[1], s)
        hidden = tables.frozen.shape[1]
        n_groups = tables.z_groups.shape[1]
        # the shared layers first: with the same seed, a fusion variant (A_k = 0) starts as
        # exactly the Base model, so paired differences come from the proxies alone
        x0_dim = 3 * d + 5 * s + d * (variant.feat_frozen + variant.feat_cb2cf)
        self.attention = TargetAttention(d, shape.attention_hidden)
        self.cross = CrossNetV2(x0_dim, shape.cross_layers)
        self.mlp = tower(x0_dim + 2 * d * variant.mlp_proxies, shape.mlp_hidden)

        self.fusion = ProxyFusion(d, variant.n_slot_proxies) if variant.n_slot_proxies else None
        if self.fusion is not None:
            has = tables.has_content.clone()
            if variant.slot_base_id:
                assert tables.base_id is not None and tables.base_trained is not None
                self.register_buffer("base_id", tables.base_id)
                has &= tables.base_trained
            self.register_buffer("has_proxy", has)
        self.slot_proj = nn.Linear(2 * d, d) if variant.slot_content else None
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

    def fine_table(self, items: torch.Tensor) -> torch.Tensor | None:
        """p_fine for the unique items of ``items`` scattered into a [I+1, d] table."""
        if self.fine_head is None:
            return None
        uniq = torch.unique(items)
        fine = self.fine_head(self.p_coarse[uniq], self.z_groups[uniq])
        table = torch.zeros(self.p_coarse.shape, dtype=fine.dtype, device=fine.device)
        return table.index_put((uniq,), fine)

    def presented_new(self, items: torch.Tensor) -> torch.Tensor | None:
        """bool [*]: items whose ID row is replaced (untrained items, and in training each
        item with probability ``id_dropout``); None when the variant never replaces."""
        if self.variant.id_replacement == "none":
            return None
        drop = ~self.warm[items]
        if self.training:
            drop = drop | (torch.rand(items.shape, device=items.device) < self.variant.id_dropout)
        return drop

    def id_embedding(self, items: torch.Tensor, drop: torch.Tensor | None) -> torch.Tensor:
        """e_id [*, d]; DropoutNet / generator replacement where ``drop``."""
        e = self.item_emb(items)
        v = self.variant
        if drop is None:
            return e
        if v.id_replacement == "zeros":
            fill = torch.zeros_like(e)
        else:
            assert self.generator is not None
            fill = self.generator(self.frozen[items])
        return torch.where(drop.unsqueeze(-1), fill, e)

    def optimizer(self, lr: float) -> RowSparseAdam:
        """SparseAdam on the user and item ID tables, Adam on every other parameter."""
        tables = [self.user_emb.weight, self.item_emb.weight]
        dense = [p for p in self.parameters() if all(p is not t for t in tables)]
        return RowSparseAdam([{"params": dense}], tables, lr=lr)

    @torch.no_grad()
    def count_updates(self, items: torch.Tensor, history: torch.Tensor) -> None:
        """One more update for every item row a training step touched (target or history)."""
        rows = torch.unique(torch.cat([items, history.flatten()]))
        self.updates[rows[rows > 0]] += 1
        self.warm[items] = True

    def slot_proxies(self, items: torch.Tensor, fine: torch.Tensor | None) -> torch.Tensor:
        """The fusion's proxies [*, K, d] in the order coarse, fine, base_id."""
        v = self.variant
        parts = []
        if v.slot_coarse:
            parts.append(self.p_coarse[items])
        if v.slot_fine:
            assert fine is not None
            parts.append(fine[items])
        if v.slot_base_id:
            parts.append(self.base_id[items])
        return torch.stack(parts, dim=-2)

    def item_slot(self, items: torch.Tensor, fine: torch.Tensor | None) -> torch.Tensor:
        """THE ID slot, for target [B] and history [B, L] items alike -> [*, d]."""
        drop = self.presented_new(items)
        e = self.id_embedding(items, drop)
        if self.fusion is not None:
            n = self.updates[items]
            if drop is not None:  # cold-start simulation: presented as a new item, n = 0
                n = torch.where(drop, torch.zeros_like(n), n)
            return self.fusion(e, n, self.slot_proxies(items, fine), self.has_proxy[items])
        if self.slot_proj is not None:
            assert self.content_proj is not None
            return self.slot_proj(torch.cat([e, self.content_proj(self.frozen[items])], dim=-1))
        return e

    def forward(
        self, users: torch.Tensor, items: torch.Tensor, history: torch.Tensor
    ) -> torch.Tensor:
        v = self.variant
        every = torch.cat([items, history.flatten()])
        if self.fusion is not None and self.training:
            # ρ from this batch's trained rows, once, before either slot uses it
            self.fusion.observe_id_norms(
                self.item_emb.weight.detach()[every], self.updates[every] > 0
            )
        fine = self.fine_table(every)
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
