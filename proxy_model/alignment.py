"""Stage-1 alignment maths: ID-embedding preprocessing (§3.1.1) and the PAL loss (eq. 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def preprocess_id_embeddings(
    table: torch.Tensor, update_counts: torch.Tensor, min_updates: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keeps rows updated at least ``min_updates`` (τ) times and ℓ2-normalises them.

    table [N, d], update_counts [N] -> (kept row indices [K] int64, targets e [K, d]).
    Rows with zero norm are dropped as well: they cannot be normalised.

    >>> t = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    >>> idx, e = preprocess_id_embeddings(t, torch.tensor([5, 1, 9]), min_updates=5)
    >>> idx.tolist(), e.tolist()
    ([0, 2], [[0.6000000238418579, 0.800000011920929], [0.0, 1.0]])
    """
    keep = (update_counts >= min_updates) & (table.norm(dim=-1) > 0)
    idx = torch.nonzero(keep, as_tuple=False).flatten()
    return idx, F.normalize(table[idx], dim=-1)


def pal_loss(
    proxies: torch.Tensor,
    targets: torch.Tensor,
    item_ids: torch.Tensor,
    tau_c: float,
) -> torch.Tensor:
    """Proxy Alignment Loss, eq. (1): InfoNCE with in-batch negatives.

    proxies h̃ [B, d] and targets e [B, d] are unit vectors; row i's positive is e_i.
    ``item_ids`` [B] marks duplicates: when the same item appears twice in a batch, its
    other rows are *not* negatives of each other (their logits are masked out of the
    denominator). Returns the mean over the batch.
    """
    logits = proxies @ targets.T / tau_c  # [B, B]
    same_item = item_ids.unsqueeze(0) == item_ids.unsqueeze(1)
    not_self = ~torch.eye(len(item_ids), dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(same_item & not_self, float("-inf"))
    labels = torch.arange(len(item_ids), device=logits.device)
    return F.cross_entropy(logits, labels)
