"""A plain DIN-style CTR ranker, written the way teams write their own: no IDProxy.

Item and user ID tables are ordinary ``nn.Embedding`` rows; a small DIN attention pools
the user's clicked history against the target item; an MLP gives the logit. A batch is a
dict of tensors::

    user [B] long, item [B] long, hist [B, L] long (0 = padding), label [B] float

``examples/adopt_idproxy.py`` is this file with the IDProxy lines added (``# IDProxy:``);
``diff -u examples/plain_ranker.py examples/adopt_idproxy.py`` shows all of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Ranker(nn.Module):
    """DIN-style CTR model: (user, target item, clicked history) -> logit [B]."""

    def __init__(self, n_users: int, n_items: int, dim: int = 32) -> None:
        super().__init__()
        self.user_emb = nn.Embedding(n_users + 1, dim)
        self.item_emb = nn.Embedding(n_items + 1, dim)  # row 0: history padding
        self.att = nn.Sequential(nn.Linear(4 * dim, 32), nn.ReLU(), nn.Linear(32, 1))
        self.mlp = nn.Sequential(
            nn.Linear(4 * dim, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1)
        )
        nn.init.normal_(self.user_emb.weight, std=0.01)
        nn.init.normal_(self.item_emb.weight, std=0.01)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """batch -> logits [B]."""
        target = self.item_emb(batch["item"])  # [B, d]
        hist = self.item_emb(batch["hist"])  # [B, L, d]
        mask = batch["hist"] > 0
        q = target.unsqueeze(1).expand_as(hist)
        scores = self.att(torch.cat([q, hist, q - hist, q * hist], dim=-1)).squeeze(-1)
        weights = torch.softmax(scores.masked_fill(~mask, -1e9), dim=-1) * mask
        interest = (weights.unsqueeze(-1) * hist).sum(dim=1)  # [B, d]; 0 without history
        user = self.user_emb(batch["user"])
        x = torch.cat([user, target, interest, target * interest], dim=-1)
        return self.mlp(x).squeeze(-1)


def build(n_users: int, n_items: int, dim: int, lr: float) -> tuple[Ranker, torch.optim.Optimizer]:
    """The model and its optimiser (Adam over every parameter)."""
    model = Ranker(n_users, n_items, dim)
    return model, torch.optim.Adam(model.parameters(), lr=lr)


@torch.no_grad()
def score(model: Ranker, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Click probabilities [B] (no training)."""
    model.eval()
    return torch.sigmoid(model(batch))


def train_step(
    model: Ranker, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]
) -> float:
    """One Adam step on the batch's log-loss; returns the loss."""
    model.train()
    loss = F.binary_cross_entropy_with_logits(model(batch), batch["label"])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.detach())
