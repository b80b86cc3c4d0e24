"""Table 1: train/evaluate Base, v1-v5, the cold-start peers and the distillation control
on one seed's split (one cold-start protocol, ``trainer.data``).

Per model: train on the training period (``trainer.epochs`` epochs, every variant the same
budget and optimiser), then

* **static** metrics on the test period with that model: AUC, GAUC, LogLoss over all test
  events; AUC on new items' events (``auc_new``) and on warm items' events (``auc_warm``:
  items trained on in the training period);
* the **prequential warm-up** (``prequential``): the test period is walked in
  ``trainer.prequential_chunks`` time-ordered chunks; each chunk is scored, then trained
  on, so no event is scored by a model that has trained on a later event.
  ``auc_new_warm`` is the AUC of the new items' events after their ``warmup_k``-th test
  event, scored that way.
"""

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
from trainer.optim import RowSparseAdam
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
    auc_warm: float
    auc_new_warm: float
    protocol: str = "random"
    n_test_new: int = 0
    n_test_warm: int = 0


def shape_of(settings: Settings, split: Split) -> RankerShape:
    t = settings.trainer
    return RankerShape(
        n_users=split.n_users,
        n_items=split.n_items,
        dim=settings.model.id_dim,
        side_dim=t.side_dim,
        cross_layers=t.cross_layers,
        attention_hidden=t.attention_hidden,
        mlp_hidden=t.mlp_hidden,
        adaptor_hidden=settings.model.adaptor_hidden,
        id_init_std=t.id_init_std,
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

    has = torch.zeros(n_items + 1, dtype=torch.bool)
    has[idx] = True
    return ItemTables(
        place(content.p_coarse),
        place(standardise(content.z_groups)),
        place(standardise(content.frozen)),
        has,
    )


def train_epochs(
    model: Ranker,
    events: Events,
    settings: Settings,
    epochs: int,
    seed: int,
    progress=None,
    opt: RowSparseAdam | None = None,
) -> RowSparseAdam:
    """BCE-with-logits (eq. 2) over shuffled batches with ``model.optimizer`` (row-sparse
    Adam on the ID tables; a fresh one unless ``opt`` is given); counts each touched item
    row's updates (``Ranker.updates``) and marks trained target items warm."""
    t = settings.trainer
    opt = opt if opt is not None else model.optimizer(t.lr)
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
            model.count_updates(events.item[b], events.history[b])
            if progress is not None:
                progress()
    return opt


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


def prequential(
    model: Ranker,
    split: Split,
    settings: Settings,
    seed: int,
    opt: RowSparseAdam | None = None,
    progress=None,
) -> np.ndarray:
    """Scores [len(split.test)] of the test period walked in time-ordered chunks.

    Each chunk is scored by the current model and then trained on (``warmup_epochs``), so
    an event is only ever scored by a model trained on the training period and on earlier
    chunks. Trains ``model`` in place.
    """
    t = settings.trainer
    ev = split.events
    scores = np.zeros(len(split.test))
    bounds = np.linspace(0, len(split.test), t.prequential_chunks + 1).astype(int)
    for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        if hi <= lo:
            continue
        chunk = ev.subset(split.test[lo:hi])
        scores[lo:hi] = predict(model, chunk)
        opt = train_epochs(model, chunk, settings, t.warmup_epochs, seed + k, None, opt)
    if progress is not None:
        progress()
    return scores


def evaluate(
    model: Ranker,
    split: Split,
    settings: Settings,
    seed: int,
    opt: RowSparseAdam | None = None,
    progress=None,
) -> dict[str, float]:
    """Static metrics of ``model`` on the test period, then the prequential warm-up."""
    ev = split.events
    test = ev.subset(split.test)
    p = predict(model, test)
    y = test.label.numpy()
    new_idx = np.isin(split.test, split.test_new)
    warm_idx = np.isin(split.test, split.test_warm)
    metrics = {
        "auc_all": auc(y, p),
        "gauc": gauc(test.user.numpy(), y, p),
        "logloss": logloss(y, p),
        "auc_new": auc(y[new_idx], p[new_idx]),
        "auc_warm": auc(y[warm_idx], p[warm_idx]),
    }
    scores = prequential(model, split, settings, seed, opt, progress)
    after = np.isin(split.test, split.test_new_after_warmup)
    metrics["auc_new_warm"] = auc(y[after], scores[after])
    return metrics


def control_tables(base: Ranker, tables: ItemTables) -> None:
    """The distillation control's proxy: Base's trained ID rows, ℓ2-normalised, frozen.

    Rows Base never updated (new items, items first seen in the test period) are their
    random initial values, not information: they get no proxy (``base_trained`` False),
    so the control's slot for them is e_id alone, as in Base.
    """
    trained = base.updates > 0
    rows = F.normalize(base.item_emb.weight.detach(), dim=-1)
    tables.base_id = torch.where(trained.unsqueeze(-1), rows, torch.zeros_like(rows))
    tables.base_trained = trained.clone()


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
        synthetic_content(split.n_items, 1, settings.model.id_dim, seed=seed), split.n_items
    )
    results: list[VariantResult] = []

    def fit_and_eval(variant: VariantConfig, tables: ItemTables) -> Ranker:
        torch.manual_seed(seed)
        model = Ranker(shape, variant, split.side, tables)
        opt = train_epochs(model, train, settings, t.epochs, seed, progress)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        metrics = evaluate(model, split, settings, seed, opt)
        model.load_state_dict(state)  # the pre-warm-up model is the one Stage 1 reads
        results.append(
            VariantResult(
                variant=variant.name,
                seed=seed,
                protocol=split.protocol,
                n_test_new=len(split.test_new),
                n_test_warm=len(split.test_warm),
                **metrics,
            )
        )
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
    control_tables(base, tables)
    for variant in variants[1:]:
        fit_and_eval(variant, tables)
    return results


def content_function(settings: Settings, *, quick: bool, seed: int) -> ContentFn:
    """Real MLLM features + Stage 1 (cached encoding), or synthetic ones for --quick.

    Stage 1 runs ``trainer.table1_stage1_epochs`` epochs here (the other Stage-1 settings
    are ``settings.stage1``'s).
    """
    settings = settings.model_copy(
        update={
            "stage1": settings.stage1.model_copy(
                update={"epochs": settings.trainer.table1_stage1_epochs}
            )
        }
    )
    if quick:
        return lambda id_table, counts, rows: synthetic_content(
            id_table.shape[0], 16, id_table.shape[1], seed=seed
        )
    return lambda id_table, counts, rows: movielens_content(
        settings, id_table, counts, rows, seed=seed
    )
