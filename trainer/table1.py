"""Table 1: train/evaluate Base, v1-v5 and the cold-start peers on one seed's split."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel

from idproxy.settings import Settings
from proxy_model.heads import mlp
from trainer.content import ItemContentFeatures, movielens_content, synthetic_content
from trainer.data import Events, Split
from trainer.metrics import auc, gauc, logloss
from trainer.ranker import ItemTables, Ranker, RankerShape
from trainer.variants import VARIANTS, VariantConfig

ContentFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], ItemContentFeatures]


class VariantResult(BaseModel):
    variant: str
    seed: int
    auc_all: float
    gauc: float
    logloss: float
    auc_new: float
    auc_new_warm: float


def shape_of(settings: Settings, split: Split) -> RankerShape:
    t = settings.trainer
    return RankerShape(
        n_users=split.n_users,
        n_items=split.n_items,
        dim=t.embed_dim,
        side_dim=t.side_dim,
        cross_layers=t.cross_layers,
        attention_hidden=t.attention_hidden,
        mlp_hidden=t.mlp_hidden,
        adaptor_hidden=settings.model.adaptor_hidden,
    )


def standardise(x: torch.Tensor) -> torch.Tensor:
    """Per-dimension zero mean, unit std over items (content only, no labels): [N, ...]."""
    x = x.float()
    return (x - x.mean(dim=0)) / (x.std(dim=0) + 1e-6)


def item_tables(content: ItemContentFeatures, n_items: int) -> ItemTables:
    """Rows of ``content`` placed at their raw item ids; row 0 and unknown ids stay zero.

    The MLLM features (z_groups, frozen) are standardised per dimension: raw hidden states
    have outlier dimensions that made the ranker with p_fine in the slot diverge.
    """
    idx = torch.as_tensor(content.item_ids, dtype=torch.long)

    def place(x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros((n_items + 1, *x.shape[1:]), dtype=torch.float32)
        out[idx] = x.float()
        return out

    return ItemTables(
        place(content.p_coarse),
        place(standardise(content.z_groups)),
        place(standardise(content.frozen)),
    )


def train_epochs(
    model: Ranker, events: Events, settings: Settings, epochs: int, seed: int, progress=None
) -> None:
    """Adam on BCE-with-logits (eq. 2) over shuffled batches; marks trained items warm."""
    t = settings.trainer
    opt = torch.optim.Adam(model.parameters(), lr=t.lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(events), generator=g)
        for start in range(0, len(events), t.batch_size):
            b = order[start : start + t.batch_size]
            logits = model(events.user[b], events.item[b], events.history[b])
            loss = F.binary_cross_entropy_with_logits(logits, events.label[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            model.warm[events.item[b]] = True
            if progress is not None:
                progress()


@torch.no_grad()
def predict(model: Ranker, events: Events, batch_size: int = 2048) -> np.ndarray:
    """Click probabilities [N]."""
    model.eval()
    out = [
        torch.sigmoid(
            model(
                events.user[s : s + batch_size],
                events.item[s : s + batch_size],
                events.history[s : s + batch_size],
            )
        )
        for s in range(0, len(events), batch_size)
    ]
    return torch.cat(out).numpy() if out else np.zeros(0)


def fit_cb2cf(
    frozen: torch.Tensor,
    id_table: torch.Tensor,
    rows: torch.Tensor,
    steps: int,
    hidden: int,
    seed: int,
) -> torch.Tensor:
    """v2: a static MLP content [D] -> ID space [d] fitted (MSE) on warm rows, then frozen."""
    torch.manual_seed(seed)
    net = mlp(frozen.shape[1], hidden, id_table.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = frozen[rows], id_table[rows]
    for _ in range(steps):
        loss = F.mse_loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return net(frozen)


def evaluate(
    model: Ranker, split: Split, settings: Settings, seed: int, progress=None
) -> dict[str, float]:
    """AUC/GAUC/LogLoss on the test period, AUC on new items, then warm-up and re-evaluate."""
    ev = split.events
    test = ev.subset(split.test)
    p = predict(model, test)
    y = test.label.numpy()
    new_idx = np.isin(split.test, split.test_new)
    metrics = {
        "auc_all": auc(y, p),
        "gauc": gauc(test.user.numpy(), y, p),
        "logloss": logloss(y, p),
        "auc_new": auc(y[new_idx], p[new_idx]),
    }
    train_epochs(
        model, ev.subset(split.warmup), settings, settings.trainer.warmup_epochs, seed, progress
    )
    after = ev.subset(split.test_new_after_warmup)
    metrics["auc_new_warm"] = auc(after.label.numpy(), predict(model, after))
    return metrics


def run_seed(
    split: Split,
    settings: Settings,
    seed: int,
    content_fn: ContentFn,
    variants: tuple[VariantConfig, ...] = VARIANTS,
    progress=None,
    on_result: Callable[[VariantResult], None] | None = None,
) -> list[VariantResult]:
    """All variants on one split. Base is trained first; its ID table feeds Stage 1 and v2."""
    t = settings.trainer
    shape = shape_of(settings, split)
    train = split.events.subset(split.train)
    placeholder = item_tables(
        synthetic_content(split.n_items, 1, t.embed_dim, seed=seed), split.n_items
    )
    results: list[VariantResult] = []

    def fit_and_eval(variant: VariantConfig, tables: ItemTables) -> Ranker:
        torch.manual_seed(seed)
        model = Ranker(shape, variant, split.side, tables)
        train_epochs(model, train, settings, t.epochs, seed, progress)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        metrics = evaluate(model, split, settings, seed, progress)
        model.load_state_dict(state)  # the pre-warm-up model is the one Stage 1 reads
        results.append(VariantResult(variant=variant.name, seed=seed, **metrics))
        if on_result is not None:
            on_result(results[-1])
        return model

    base = fit_and_eval(variants[0], placeholder)
    id_table = base.item_emb.weight.detach()[1:]
    counts = torch.bincount(train.item, minlength=split.n_items + 1)[1:]
    trainable = torch.ones(split.n_items, dtype=torch.bool)
    trainable[torch.as_tensor(split.new_items - 1)] = False
    content = content_fn(id_table, counts, trainable)
    tables = item_tables(content, split.n_items)
    warm_rows = torch.nonzero(counts >= settings.stage1.min_updates).squeeze(1) + 1
    tables.cb2cf = fit_cb2cf(
        tables.frozen,
        base.item_emb.weight.detach(),
        warm_rows,
        t.cb2cf_steps,
        settings.model.adaptor_hidden,
        seed,
    )
    for variant in variants[1:]:
        fit_and_eval(variant, tables)
    return results


def content_function(settings: Settings, *, quick: bool, seed: int) -> ContentFn:
    """Real MLLM features + Stage 1 (cached encoding), or synthetic ones for --quick."""
    if quick:
        return lambda id_table, counts, rows: synthetic_content(
            id_table.shape[0], 16, id_table.shape[1], seed=seed
        )
    return lambda id_table, counts, rows: movielens_content(
        settings, id_table, counts, rows, seed=seed
    )
