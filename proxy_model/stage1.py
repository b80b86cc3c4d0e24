"""Stage 1 (paper §3.1): fit g and φ so that φ(g(H_i)) points at item i's ID embedding.

Training modes for the encoder M (``encoder_train_mode``):

* ``frozen`` (default): M does not change, so its token states are computed once
  (:class:`~proxy_model.features.TokenStates`) and each step only runs g and φ. The vision
  projector stays at its seeded initialisation in this mode.
* ``lora``: LoRA adapters (rank ``lora_rank``) on the LM's attention q/v projections, plus
  the projector, are trained with g and φ; M runs in every step.
* ``full``: all of M's parameters train as well.

Optimiser: AdamW with the paper's defaults (lr 1e-4, batch 512), all from settings. Batches
are drawn from a permutation of the training items, so an item appears once per batch; the
loss still masks duplicates for callers that pass repeated ids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm

from proxy_model.alignment import pal_loss
from proxy_model.encoder import ItemContent
from proxy_model.features import ContentFeaturizer, TokenStates
from proxy_model.heads import CoarseHead


@dataclass(frozen=True)
class Stage1Config:
    """Hyper-parameters of the Stage-1 loop (mirrors ``Stage1Settings``)."""

    lr: float = 1e-4
    weight_decay: float = 0.01
    batch_size: int = 512
    epochs: int = 200
    tau_c: float = 0.07
    encoder_train_mode: str = "frozen"
    lora_rank: int = 8
    seed: int = 0
    holdout_fraction: float = 0.2


@dataclass
class Stage1History:
    """Mean PAL loss per epoch (training items), the held-out PAL loss per epoch and the
    epoch whose weights were kept (the one with the lowest held-out loss)."""

    losses: list[float] = field(default_factory=list)
    holdout_losses: list[float] = field(default_factory=list)
    best_epoch: int | None = None


def _enable_encoder_training(featurizer: ContentFeaturizer, mode: str, rank: int) -> None:
    encoder = featurizer.encoder
    encoder.lm.requires_grad_(mode == "full")
    if mode == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        inject_adapter_in_model(
            LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"]), encoder.lm
        )
        for name, p in encoder.lm.named_parameters():
            p.requires_grad_("lora_" in name)
    if encoder.projector is not None:
        encoder.projector.requires_grad_(True)


def _pal_loop(
    head: CoarseHead,
    targets: torch.Tensor,
    config: Stage1Config,
    z_of: Callable[[torch.Tensor], torch.Tensor],
    params: list[torch.nn.Parameter],
    progress: bool,
) -> Stage1History:
    """The shared loop: ``z_of(batch_rows) -> z [b, D]``; AdamW on ``params`` + φ.

    **Early stopping** (the paper is silent; ``holdout_fraction`` > 0 and ≥ 20 targets): a
    seeded share of the targets is held out, the PAL loss of those items against each other
    is computed after every epoch, and the weights of the epoch with the lowest held-out
    loss are kept. On standardised features φ can memorise a thousand training rows
    (in-sample recall@10 of 0.75 on MovieLens) while its proxies of unseen items get worse;
    new items are exactly the unseen ones, so the held-out loss is what to select on.
    """
    optimiser = torch.optim.AdamW(
        params + list(head.parameters()), lr=config.lr, weight_decay=config.weight_decay
    )
    generator = torch.Generator().manual_seed(config.seed)
    device = next(head.parameters()).device
    targets = targets.to(device)
    rows = torch.randperm(len(targets), generator=generator)
    n_hold = int(len(targets) * config.holdout_fraction) if len(targets) >= 20 else 0
    hold, train = rows[:n_hold], rows[n_hold:]
    history = Stage1History()
    best: tuple[float, list[torch.Tensor]] | None = None
    head.train()
    bar = tqdm(range(config.epochs), desc="stage 1", unit="epoch", disable=not progress)
    for epoch in bar:
        order = train[torch.randperm(len(train), generator=generator)]
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            if len(batch) < 2:
                continue  # a contrastive loss needs at least one negative
            loss = pal_loss(head(z_of(batch)), targets[batch], batch.to(device), config.tau_c)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
        history.losses.append(total / max(len(train), 1))
        if n_hold >= 2:
            head.eval()
            with torch.no_grad():
                held = pal_loss(head(z_of(hold)), targets[hold], hold.to(device), config.tau_c)
            head.train()
            history.holdout_losses.append(float(held))
            if best is None or float(held) < best[0]:
                best = (float(held), _snapshot(head, params))
                history.best_epoch = epoch
        bar.set_postfix(loss=f"{history.losses[-1]:.4f}")
    if best is not None:
        _restore(head, params, best[1])
    head.eval()
    return history


def _snapshot(head: CoarseHead, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in [*head.parameters(), *params]]


def _restore(head: CoarseHead, params: list[torch.nn.Parameter], saved: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, value in zip([*head.parameters(), *params], saved, strict=True):
            p.copy_(value)


def fit_stage1(
    featurizer: ContentFeaturizer,
    head: CoarseHead,
    targets: torch.Tensor,
    config: Stage1Config,
    *,
    token_states: TokenStates | None = None,
    rows: torch.Tensor | None = None,
    items: Sequence[ItemContent] | None = None,
    progress: bool = True,
) -> Stage1History:
    """Trains g + φ (and M unless frozen) with the PAL loss on (item, target) pairs.

    targets [K, d] are ℓ2-normalised ID embeddings. In ``frozen`` mode the K training items
    are ``token_states`` rows ``rows`` [K]; otherwise they are ``items`` (K contents).
    """
    frozen = config.encoder_train_mode == "frozen"
    if frozen and (token_states is None or rows is None):
        raise ValueError("frozen mode needs token_states and rows")
    if not frozen and items is None:
        raise ValueError(f"{config.encoder_train_mode} mode needs the item contents")
    device = next(head.parameters()).device
    if frozen:

        def z_of(batch: torch.Tensor) -> torch.Tensor:
            last, _, mask = token_states.rows(rows[batch])
            return featurizer.pooling(last.to(device), mask.to(device))

    else:
        _enable_encoder_training(featurizer, config.encoder_train_mode, config.lora_rank)

        def z_of(batch: torch.Tensor) -> torch.Tensor:
            out = featurizer.encoder([items[i] for i in batch.tolist()])
            return featurizer.pooling(out.hidden[-1], out.mask)

    featurizer.train()
    params = [p for p in featurizer.parameters() if p.requires_grad]
    history = _pal_loop(head, targets, config, z_of, params, progress)
    featurizer.eval()
    return history


def fit_coarse_head(
    head: CoarseHead,
    z: torch.Tensor,
    targets: torch.Tensor,
    config: Stage1Config,
    progress: bool = True,
) -> Stage1History:
    """Refits φ alone on cached features z [K, D] (g and M fixed: re-alignment).

    A head whose feature normaliser was never fitted gets it fitted on these z first
    (label-free; frozen from then on, so later refits keep the same input scale).
    """
    z = z.to(next(head.parameters()).device)
    if not bool(head.normaliser.fitted):
        head.normaliser.fit(z)
    return _pal_loop(head, targets, config, lambda batch: z[batch], [], progress)


@dataclass(frozen=True)
class AlignmentReport:
    """Held-out alignment: recall@k of each item's own ID embedding, and mean cosine."""

    recall_at_k: float
    mean_cosine: float
    k: int


def alignment_report(
    proxies: torch.Tensor, candidates: torch.Tensor, own_rows: torch.Tensor, k: int = 10
) -> AlignmentReport:
    """proxies [M, d] vs candidates [C, d] (the ID table); own_rows [M] index the true row.

    recall@k: the share of proxies whose own ID embedding is among the k most
    cosine-similar candidates. mean_cosine: mean cos(proxy, own ID embedding).
    """
    p = F.normalize(proxies.float(), dim=-1)
    c = F.normalize(candidates.float(), dim=-1)
    sims = p @ c.T  # [M, C]
    topk = sims.topk(min(k, c.shape[0]), dim=1).indices
    hit = (topk == own_rows[:, None]).any(dim=1).float().mean().item()
    cos = sims.gather(1, own_rows[:, None]).mean().item()
    return AlignmentReport(recall_at_k=hit, mean_cosine=cos, k=k)
