"""The plain DIN-style ranker of ``plain_ranker.py``, switched to IDProxy.

Item and user ID tables are ordinary ``nn.Embedding`` rows; a small DIN attention pools
the user's clicked history against the target item; an MLP gives the logit. A batch is a
dict of tensors::

    user [B] long, item [B] long, hist [B, L] long (0 = padding), label [B] float
    n_item [B], n_hist [B, L] long: the item's interactions so far       # IDProxy
    + proxy_item [B, 2, d], has_item [B], proxy_hist [B, L, 2, d], has_hist [B, L]
      added by ``attach_proxies`` from the proxy store's read API         # IDProxy

``examples/adopt_idproxy.py`` is this file with the IDProxy lines added (``# IDProxy:``);
``diff -u examples/plain_ranker.py examples/adopt_idproxy.py`` shows all of it.
"""

from __future__ import annotations

import numpy as np  # IDProxy: the client answers numpy arrays
import torch
import torch.nn.functional as F
from torch import nn

from idproxy.client import ProxyClient  # IDProxy: the read API's client
from trainer.fusion import ProxyFusion  # IDProxy: the ID-slot fusion


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
        self.fusion = ProxyFusion(dim, n_proxies=2)  # IDProxy: zero-init, so starts as plain

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """batch -> logits [B]."""
        target = self.item_emb(batch["item"])  # [B, d]
        hist = self.item_emb(batch["hist"])  # [B, L, d]
        # IDProxy: the item slot = ProxyFusion(e_id, n, proxies, has_proxy), target and history
        target = self.fusion(target, batch["n_item"], batch["proxy_item"], batch["has_item"])
        hist = self.fusion(hist, batch["n_hist"], batch["proxy_hist"], batch["has_hist"])
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
    rows = model.item_emb.weight[batch["item"]].detach()  # IDProxy: ρ follows trained rows
    model.fusion.observe_id_norms(rows, batch["n_item"] > 0)  # IDProxy
    loss = F.binary_cross_entropy_with_logits(model(batch), batch["label"])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.detach())


# IDProxy: everything below is new: proxies for a batch, read through the client.
def read_proxies(
    client: ProxyClient, items: torch.Tensor, version: str | None = None
) -> tuple[torch.Tensor, torch.Tensor, str | None]:
    """Item ids [*] -> (proxies [*, 2, d] = (p_coarse, p_fine), has_proxy [*] bool, version).

    Each distinct id is asked once. The client splits a long list into requests under the
    API's batch limit and reads them all from one version (the first answer's, or
    ``version``), so a batch never mixes two. A miss (no proxy yet, or a corrupt value) is
    ``has_proxy = False`` with a zero row: the fusion then leaves that slot to the ID row
    alone.
    """
    uniq, inverse = torch.unique(items.reshape(-1), return_inverse=True)
    got = client.get_many([str(i) for i in uniq.tolist()], version=version)
    p = torch.from_numpy(np.stack([got.p_coarse, got.p_fine], axis=1))
    has = torch.from_numpy(got.found)
    return p[inverse].reshape(*items.shape, 2, -1), has[inverse].reshape(items.shape), got.version


def attach_proxies(
    client: ProxyClient, batch: dict[str, torch.Tensor], version: str | None = None
) -> dict[str, torch.Tensor]:
    """The batch plus proxy_item, has_item, proxy_hist, has_hist (one read per batch)."""
    items = torch.cat([batch["item"].unsqueeze(1), batch["hist"]], dim=1)  # [B, 1 + L]
    p, has, _ = read_proxies(client, items, version)
    return batch | {
        "proxy_item": p[:, 0],
        "has_item": has[:, 0],
        "proxy_hist": p[:, 1:],
        "has_hist": has[:, 1:],
    }
