"""MovieLens item content through the MLLM, and Stage-1 proxies fitted on a given ID table.

The MLLM runs once per item and its token states are cached on disk (safetensors, keyed by
the encoder and the encoding settings), so repeated fits (seeds, variants, re-alignment)
only run the cheap g + φ part. ``quick=True`` swaps in the tiny random encoder for tests.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from idproxy.movielens import load_movielens
from idproxy.settings import Settings
from proxy_model.alignment import preprocess_id_embeddings
from proxy_model.encoder import ItemContent, MultimodalEncoder, build_default_encoder
from proxy_model.encoder import build_tiny_encoder as tiny_encoder
from proxy_model.features import (
    ContentFeaturizer,
    TokenStates,
    choose_layer_groups,
    encode_token_states,
)
from proxy_model.heads import CoarseHead
from proxy_model.stage1 import Stage1Config, fit_stage1

log = logging.getLogger(__name__)


@dataclass
class ItemContentFeatures:
    """Per-item content features and Stage-1 proxies, rows aligned with ``item_ids``.

    z [N, D]; z_groups [N, G, D]; frozen [N, D] (untrained masked mean of the last layer);
    p_coarse [N, d] (unit norm).
    """

    item_ids: list[int]
    z: torch.Tensor
    z_groups: torch.Tensor
    frozen: torch.Tensor
    p_coarse: torch.Tensor


def stage1_config(settings: Settings, seed: int = 0) -> Stage1Config:
    s = settings.stage1
    return Stage1Config(
        lr=s.lr,
        weight_decay=s.weight_decay,
        batch_size=s.batch_size,
        epochs=s.epochs,
        tau_c=s.tau_c,
        encoder_train_mode=settings.model.encoder_train_mode,
        lora_rank=settings.model.lora_rank,
        seed=seed,
        holdout_fraction=s.holdout_fraction,
    )


def _encoder(settings: Settings, quick: bool) -> MultimodalEncoder:
    if quick:
        return tiny_encoder(with_vision=False)
    m = settings.model
    return build_default_encoder(
        settings.cache_dir,
        lm_path=m.lm_path,
        vision="none",  # MovieLens has no images
        max_text_tokens=m.max_text_tokens,
        device=m.device,
    )


def movielens_items() -> tuple[list[int], list[ItemContent]]:
    """All 1,682 items in id order, with text = title, year and genres."""
    data = load_movielens()
    ids = data.item_ids
    return ids, [ItemContent(data.item_text(i)) for i in ids]


def movielens_token_states(settings: Settings, quick: bool = False) -> TokenStates:
    """Token states of every MovieLens item; computed once, then read from the cache."""
    m = settings.model
    key = json.dumps(
        [quick, m.lm_path, m.max_text_tokens, m.n_layer_groups, m.layer_sample_items]
    ).encode()
    path = (
        Path(settings.cache_dir)
        / "features"
        / f"ml100k-{hashlib.sha1(key).hexdigest()[:12]}.safetensors"
    )
    if path.is_file():
        return TokenStates.load(path)
    ids, items = movielens_items()
    encoder = _encoder(settings, quick)
    sample = items[:: max(1, len(items) // m.layer_sample_items)][: m.layer_sample_items]
    groups = choose_layer_groups(encoder, sample, m.n_layer_groups)
    log.info("layer groups (k-means over %d items): %s", len(sample), groups)
    states = encode_token_states(
        ContentFeaturizer(encoder, groups), items, [str(i) for i in ids], m.encode_batch_size
    )
    states.save(path)
    return states


def without_first_token(states: TokenStates) -> TokenStates:
    """The same states with the first token masked out of every pooling.

    The first token is ``[BOS]``: in a causal LM its states are the same for every item
    and carry the LM's huge "attention sink" activations, so in a mean over the tokens it
    adds a constant of large norm divided by the item's length, i.e. a length feature
    that swamps the content (the paper is silent). Masking it costs nothing
    and is label-free.
    """
    mask = states.mask.clone()
    mask[:, 0] = 0
    return replace(states, mask=mask)


def fit_coarse_proxies(
    states: TokenStates,
    targets_rows: torch.Tensor,
    targets: torch.Tensor,
    settings: Settings,
    seed: int = 0,
    progress: bool = True,
) -> tuple[ContentFeaturizer, CoarseHead]:
    """Fits g + φ (frozen M) so that row ``targets_rows[k]`` maps to unit vector ``targets[k]``.

    The returned featurizer carries the trained g and no encoder (the token states are
    already cached).
    """
    torch.manual_seed(seed)
    hidden = states.last.shape[-1]
    featurizer = ContentFeaturizer(None, states.layer_groups, hidden_size=hidden)
    head = CoarseHead(hidden, targets.shape[1], settings.model.coarse_hidden)
    config = stage1_config(settings, seed)
    if config.encoder_train_mode != "frozen":
        raise ValueError("cached token states only support encoder_train_mode='frozen'")
    fit_stage1(
        featurizer, head, targets, config, token_states=states, rows=targets_rows, progress=progress
    )
    return featurizer, head


@torch.no_grad()
def pooled_features(
    featurizer: ContentFeaturizer, states: TokenStates, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z [N,D], z_groups [N,G,D], frozen [N,D]) for all rows of ``states``."""
    parts = []
    for start in range(0, len(states), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(states)))
        f = featurizer.pool(*states.rows(idx))
        parts.append((f.z, f.z_groups, f.frozen))
    return tuple(torch.cat(p) for p in zip(*parts, strict=True))  # type: ignore[return-value]


def movielens_content(
    settings: Settings,
    id_table: torch.Tensor,
    update_counts: torch.Tensor,
    train_rows: torch.Tensor,
    *,
    quick: bool = False,
    seed: int = 0,
) -> ItemContentFeatures:
    """Stage-1 proxies for all MovieLens items, aligned to ``id_table``'s warm rows.

    id_table [N, d] (rows = items in id order), update_counts [N], train_rows bool [N]:
    rows allowed as targets. Targets are the rows with at least ``stage1.min_updates``
    (τ) updates, ℓ2-normalised (paper §3.1.1). The first token is excluded from every
    pooling (``without_first_token``).
    """
    states = without_first_token(movielens_token_states(settings, quick))
    kept, targets = preprocess_id_embeddings(id_table, update_counts, settings.stage1.min_updates)
    allowed = train_rows[kept]
    featurizer, head = fit_coarse_proxies(states, kept[allowed], targets[allowed], settings, seed)
    z, z_groups, frozen = pooled_features(featurizer, states)
    with torch.no_grad():
        p_coarse = head(z)
    return ItemContentFeatures(
        item_ids=[int(i) for i in states.item_ids],
        z=z,
        z_groups=z_groups,
        frozen=frozen,
        p_coarse=p_coarse,
    )


def synthetic_content(
    n_items: int, hidden: int, id_dim: int, n_groups: int = 3, seed: int = 0
) -> ItemContentFeatures:
    """Random content features for tests (rows are items 1..n_items)."""
    g = torch.Generator().manual_seed(seed)
    return ItemContentFeatures(
        item_ids=list(range(1, n_items + 1)),
        z=torch.randn(n_items, hidden, generator=g),
        z_groups=torch.randn(n_items, n_groups, hidden, generator=g),
        frozen=torch.randn(n_items, hidden, generator=g),
        p_coarse=F.normalize(torch.randn(n_items, id_dim, generator=g), dim=-1),
    )
