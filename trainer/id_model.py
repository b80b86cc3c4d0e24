"""A plain ID-only click model (logistic matrix factorisation) that provides ID tables.

It is the "ID-only model trained on the warm items' interactions" whose table the Stage-1
alignment job (`idproxy align`) aligns to; the full CTR ranker lives in :mod:`trainer.ranker`.
score(u, i) = <e_u, e_i> + b_u + b_i + b, trained with BCE on clicks (rating >= 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm


@dataclass(frozen=True)
class IdTable:
    """item_ids [N] (raw ids, row order), table [N, d], update_counts [N] (rows trained on)."""

    item_ids: np.ndarray
    table: torch.Tensor
    update_counts: torch.Tensor


class LogisticMF(nn.Module):
    def __init__(self, n_users: int, n_items: int, dim: int) -> None:
        super().__init__()
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_items, dim)
        self.user_bias = nn.Embedding(n_users, 1)
        self.item_bias = nn.Embedding(n_items, 1)
        self.bias = nn.Parameter(torch.zeros(1))
        for emb in (self.user, self.item):
            nn.init.normal_(emb.weight, std=0.1)
        for emb in (self.user_bias, self.item_bias):
            nn.init.zeros_(emb.weight)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        dot = (self.user(users) * self.item(items)).sum(-1)
        return dot + self.user_bias(users)[:, 0] + self.item_bias(items)[:, 0] + self.bias


def train_id_table(
    users: np.ndarray,
    items: np.ndarray,
    labels: np.ndarray,
    item_ids: np.ndarray,
    *,
    dim: int,
    epochs: int = 20,
    lr: float = 0.01,
    weight_decay: float = 1e-5,
    batch_size: int = 1024,
    seed: int = 0,
) -> IdTable:
    """Fits logistic MF on (user, item, label) rows; returns the item table for ``item_ids``."""
    torch.manual_seed(seed)
    user_index = {u: k for k, u in enumerate(np.unique(users))}
    item_index = {int(i): k for k, i in enumerate(item_ids)}
    u = torch.tensor([user_index[x] for x in users])
    i = torch.tensor([item_index[int(x)] for x in items])
    y = torch.tensor(labels, dtype=torch.float32)
    model = LogisticMF(len(user_index), len(item_ids), dim)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(epochs), desc="ID model (MF)", unit="epoch"):
        order = torch.randperm(len(y), generator=g)
        for start in range(0, len(y), batch_size):
            b = order[start : start + batch_size]
            loss = F.binary_cross_entropy_with_logits(model(u[b], i[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    counts = torch.bincount(i, minlength=len(item_ids))
    return IdTable(
        item_ids=item_ids, table=model.item.weight.detach().clone(), update_counts=counts
    )
