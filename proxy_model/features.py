"""encode → features: the MLLM's token states pooled by g into cacheable item features.

The *featurizer* is M + g + the layer groups; together they are one **encoder version**.
Its per-item output is:

* ``z``        [D]     g over the final layer's tokens (Stage 1's content embedding z_i);
* ``z_groups`` [G, D]  g over each layer group (Stage 2's z^(l_n1..l_n3));
* ``frozen``   [D]     the masked token mean of the final layer with no training at all
  (the "frozen content embedding" baselines use it).

What pooling a *group* means (the paper is silent): the token states of the layers in the
group are averaged per token, then pooled with the same g used in Stage 1:
``z^(group) = g(mean_{l∈group} H^(l))``. g is frozen in Stage 2, so features are computed
once per item and the proxies can be recomputed from them without the MLLM.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from proxy_model.encoder import ItemContent, MultimodalEncoder
from proxy_model.layer_groups import contiguous_kmeans, layer_vectors_from_states
from proxy_model.pooling import AttentionPooling


@dataclass(frozen=True)
class ItemFeatures:
    """z [B, D], z_groups [B, G, D], frozen [B, D] (float32)."""

    z: torch.Tensor
    z_groups: torch.Tensor
    frozen: torch.Tensor


@dataclass
class TokenStates:
    """Cached token-level states of many items, right-padded to one width T.

    last [N, T, D] and groups [N, G, T, D] are stored as float16; mask [N, T] is uint8.
    """

    item_ids: list[str]
    last: torch.Tensor
    groups: torch.Tensor
    mask: torch.Tensor
    layer_groups: list[list[int]]

    def __len__(self) -> int:
        return len(self.item_ids)

    def rows(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """float32 (last, groups, mask) for the given row indices."""
        return self.last[index].float(), self.groups[index].float(), self.mask[index]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"last": self.last, "groups": self.groups, "mask": self.mask}
        meta = {
            "item_ids": json.dumps(self.item_ids),
            "layer_groups": json.dumps(self.layer_groups),
        }
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: Path) -> TokenStates:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata()
        t = load_file(str(path))
        return cls(
            item_ids=json.loads(meta["item_ids"]),
            last=t["last"],
            groups=t["groups"],
            mask=t["mask"],
            layer_groups=json.loads(meta["layer_groups"]),
        )

    @classmethod
    def random(
        cls, n_items: int, width: int, hidden: int, n_groups: int = 3, seed: int = 0
    ) -> TokenStates:
        """Random states for tests: lengths vary between width/2 and width."""
        g = torch.Generator().manual_seed(seed)
        lengths = torch.randint(width // 2, width + 1, (n_items,), generator=g)
        mask = (torch.arange(width)[None, :] < lengths[:, None]).to(torch.uint8)
        return cls(
            item_ids=[str(i) for i in range(n_items)],
            last=torch.randn(n_items, width, hidden, generator=g).half(),
            groups=torch.randn(n_items, n_groups, width, hidden, generator=g).half(),
            mask=mask,
            layer_groups=[[1], [2], [3]][:n_groups],
        )


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T, D] + [B, T] -> [B, D] mean over valid tokens."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


POOLING_REVISION = "no-first-token"  # part of the feature version: pooling changes features


class ContentFeaturizer(nn.Module):
    """M + g + layer groups: items -> token states -> ItemFeatures.

    ``encoder=None`` gives a featurizer that only pools already cached token states
    (``hidden_size`` must then be given); calling it on items raises.
    """

    def __init__(
        self,
        encoder: MultimodalEncoder | None,
        layer_groups: list[list[int]],
        hidden_size: int | None = None,
    ) -> None:
        super().__init__()
        if encoder is None and hidden_size is None:
            raise ValueError("a featurizer without an encoder needs hidden_size")
        self.encoder = encoder
        self.hidden_size: int = encoder.hidden_size if encoder else hidden_size
        self.pooling = AttentionPooling(self.hidden_size)
        self.layer_groups = layer_groups

    @torch.no_grad()
    def token_states(
        self, items: Sequence[ItemContent]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """last [B, T, D], groups [B, G, T, D], mask [B, T] from one MLLM forward."""
        if self.encoder is None:
            raise RuntimeError("this featurizer only pools cached token states")
        out = self.encoder(items)  # hidden [L, B, T, D] for layers 1..L
        groups = torch.stack(
            [out.hidden[[layer - 1 for layer in grp]].mean(0) for grp in self.layer_groups]
        )
        return out.hidden[-1], groups.transpose(0, 1), out.mask

    def pool(self, last: torch.Tensor, groups: torch.Tensor, mask: torch.Tensor) -> ItemFeatures:
        """Token states -> ItemFeatures; g runs once per group (shared weights).

        The first token ([BOS], at position 0 in every right-padded prompt) is left out of
        every pooling: a causal LM gives it the same states for every item, with its huge
        attention-sink activations, so in a mean it adds a large constant divided by the
        item's length (a length feature that swamps the content). The paper is silent.
        """
        mask = mask.clone()
        mask[:, 0] = 0
        b, n_groups, t, d = groups.shape
        group_mask = mask.repeat_interleave(n_groups, dim=0)
        z_groups = self.pooling(groups.reshape(b * n_groups, t, d), group_mask)
        return ItemFeatures(
            z=self.pooling(last, mask),
            z_groups=z_groups.reshape(b, n_groups, d),
            frozen=masked_mean(last, mask),
        )

    @torch.no_grad()
    def forward(self, items: Sequence[ItemContent]) -> ItemFeatures:
        return self.pool(*self.token_states(items))

    def version(self) -> str:
        """Content hash of everything that shapes the features: M's name, groups, g, projector."""
        name = self.encoder.name if self.encoder else "cached-token-states"
        projector = self.encoder.projector if self.encoder else None
        h = hashlib.sha256(name.encode())
        h.update(POOLING_REVISION.encode())
        h.update(json.dumps(self.layer_groups).encode())
        for module in (self.pooling, projector):
            if module is not None:
                for p in module.state_dict().values():
                    h.update(p.detach().cpu().float().numpy().tobytes())
        return "enc-" + h.hexdigest()[:12]


@torch.no_grad()
def choose_layer_groups(
    encoder: MultimodalEncoder, sample: Sequence[ItemContent], k: int, batch_size: int = 16
) -> list[list[int]]:
    """k contiguous, ordered layer groups from per-layer pooled states over ``sample``."""
    vectors = []
    for start in range(0, len(sample), batch_size):
        out = encoder(sample[start : start + batch_size])
        vectors.append(layer_vectors_from_states(out.hidden, out.mask))  # [L, b*D]
    return contiguous_kmeans(torch.cat(vectors, dim=1), k)


@torch.no_grad()
def encode_token_states(
    featurizer: ContentFeaturizer,
    items: Sequence[ItemContent],
    item_ids: Sequence[str],
    batch_size: int = 32,
    progress: bool = True,
) -> TokenStates:
    """Runs the MLLM once per item; returns right-padded, float16 token states."""
    chunks = []
    for start in tqdm(
        range(0, len(items), batch_size), desc="encoding items", unit="batch", disable=not progress
    ):
        last, groups, mask = featurizer.token_states(items[start : start + batch_size])
        chunks.append((last.half().cpu(), groups.half().cpu(), mask.to(torch.uint8).cpu()))
    width = max(c[0].shape[1] for c in chunks)

    def pad(x: torch.Tensor, dim: int) -> torch.Tensor:
        shape = list(x.shape)
        shape[dim] = width - x.shape[dim]
        return torch.cat([x, x.new_zeros(shape)], dim=dim)

    return TokenStates(
        item_ids=list(item_ids),
        last=torch.cat([pad(c[0], 1) for c in chunks]),
        groups=torch.cat([pad(c[1], 2) for c in chunks]),
        mask=torch.cat([pad(c[2], 1) for c in chunks]),
        layer_groups=featurizer.layer_groups,
    )
