"""`idproxy align`: Stage-1 alignment on MovieLens-100K with real weights.

Setup:

1. ID targets: a logistic-MF ID-only model trained on all click/non-click interactions;
   items with at least τ (``stage1.min_updates``) interactions are "warm" and get kept,
   ℓ2-normalised ID embeddings (paper §3.1.1).
2. k-fold cross-validation over the warm items (``stage1.folds``, seeded): each fold is held
   out of Stage-1 training once, so every warm item is scored once as a held-out item
   (one 20 % split of ~270 items gave recall@10 differences of a few hits: too noisy).
3. Stage 1 fits g + φ with the PAL loss on the other warm items (frozen SmolLM2-135M, text =
   title, year, genres; the MLLM runs once per item and is cached).
4. On the held-out items it compares, against all warm items' ID embeddings:
   recall@10 of the item's own ID embedding and the mean cosine, for the Stage-1 proxy, a
   CB2CF-style static MLP regression from frozen features (masked mean of the final layer,
   cosine regression), and random unit vectors.
5. It fits once more on all warm items, saves g + φ (+ an untrained fine head) to the
   artefact store and, when ``IDPROXY_KAFKA_BOOTSTRAP`` is set, announces it on ``models``
   as the current proxy bundle, which the streaming workers load.
"""

from __future__ import annotations

import argparse
import json
import time

from idproxy.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="tiny random encoder, few epochs")
    parser.add_argument("--epochs", type=int, help="override stage1.epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-save", action="store_true", help="do not write the bundle")


def _cb2cf(frozen, train_rows, targets, epochs: int, seed: int):
    """Static MLP regression frozen features -> ID space (cosine loss). Returns predictions."""
    import torch
    import torch.nn.functional as F

    from proxy_model.heads import mlp

    torch.manual_seed(seed)
    x = F.layer_norm(frozen, frozen.shape[-1:])
    model = mlp(x.shape[1], 256, targets.shape[1])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    for _ in range(epochs):
        loss = 1 - F.cosine_similarity(model(x[train_rows]), targets).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return model(x)


def _fold_reports(states, kept, targets, hold, train, settings, seed: int) -> dict:
    """Fits Stage 1 and CB2CF on ``train`` rows of the warm items; scores ``hold`` rows."""
    import torch

    from proxy_model.stage1 import alignment_report
    from trainer.content import fit_coarse_proxies, pooled_features

    featurizer, head = fit_coarse_proxies(
        states, kept[train], targets[train], settings, seed=seed, progress=False
    )
    z, _, frozen = pooled_features(featurizer, states)
    with torch.no_grad():
        proxies = head(z[kept])  # rows of `kept`
    cb2cf = _cb2cf(frozen[kept], train, targets[train], settings.stage1.epochs * 4, seed)
    rand = torch.randn(len(kept), targets.shape[1], generator=torch.Generator().manual_seed(seed))
    methods = {"stage1_proxy": proxies, "cb2cf_mlp": cb2cf, "random": rand}
    return {name: alignment_report(p[hold], targets, hold) for name, p in methods.items()}


def _save_and_announce(settings: Settings, states, manifest: dict, console) -> str:
    """Announces the bundle on ``models`` when a broker is configured, else only saves it."""
    from proxy_model.artifacts import ArtifactStore

    if not settings.kafka.bootstrap:
        ref = ArtifactStore.from_settings(settings).save(states, {**manifest, "kind": "bundle"})
        console.print(
            f"saved proxy bundle {ref.id} at {ref.uri}; not announced: set "
            "IDPROXY_KAFKA_BOOTSTRAP to announce it to the workers"
        )
        return ref.id
    from streams.broker import external_broker
    from streams.model_feed import BUNDLE_KEY, announce

    announcement = announce(
        settings, external_broker(settings), states, manifest, key=BUNDLE_KEY, producer_name="align"
    )
    console.print(f"announced proxy bundle {announcement.id} ({announcement.uri})")
    return announcement.id


def run(args: argparse.Namespace, settings: Settings) -> int:
    import statistics

    import torch
    from rich.console import Console
    from rich.table import Table
    from tqdm import tqdm

    from idproxy.movielens import load_movielens
    from proxy_model.alignment import preprocess_id_embeddings
    from proxy_model.artifacts import module_states
    from proxy_model.encoder import default_encoder_name
    from proxy_model.heads import FineHead
    from trainer.content import fit_coarse_proxies, movielens_token_states
    from trainer.id_model import train_id_table

    console = Console()
    started = time.time()
    if args.epochs:
        settings.stage1.epochs = args.epochs
    folds = 2 if args.quick else settings.stage1.folds
    torch.manual_seed(args.seed)
    data = load_movielens()
    item_ids = torch.tensor(data.item_ids).numpy()
    ids = train_id_table(
        data.users,
        data.items,
        data.labels,
        item_ids,
        dim=settings.model.id_dim,
        epochs=3 if args.quick else 20,
        seed=args.seed,
    )
    kept, targets = preprocess_id_embeddings(
        ids.table, ids.update_counts, settings.stage1.min_updates
    )
    console.print(
        f"ID table: {len(item_ids)} items, {len(kept)} with >= {settings.stage1.min_updates} "
        f"updates (Stage-1 targets); {folds}-fold held-out evaluation"
    )
    states = movielens_token_states(settings, quick=args.quick)

    perm = torch.randperm(len(kept), generator=torch.Generator().manual_seed(args.seed))
    per_fold = []
    for hold in tqdm(perm.chunk(folds), desc="folds", unit="fold"):
        train = perm[~torch.isin(perm, hold)]
        per_fold.append(_fold_reports(states, kept, targets, hold, train, settings, args.seed))

    def stat(name: str, field: str) -> tuple[float, float]:
        values = [getattr(f[name], field) for f in per_fold]
        return statistics.mean(values), statistics.pstdev(values)

    methods = list(per_fold[0])
    table = Table(
        title=f"Held-out alignment on MovieLens-100K: {folds}-fold CV over {len(kept)} warm "
        f"items, each ranked against all {len(kept)} ID embeddings (mean ± std over folds)"
    )
    for col in ("method", "recall@10", "mean cosine"):
        table.add_column(col)
    for name in methods:
        r, c = stat(name, "recall_at_k"), stat(name, "mean_cosine")
        table.add_row(name, f"{r[0]:.4f} ± {r[1]:.4f}", f"{c[0]:.4f} ± {c[1]:.4f}")
    console.print(table)
    console.print(f"chance recall@10 = {10 / len(kept):.4f}")

    version = None
    if not args.no_save:  # the served bundle is fitted on all warm items
        featurizer, head = fit_coarse_proxies(states, kept, targets, settings, seed=args.seed)
        d = settings.model
        fine = FineHead(states.last.shape[-1], d.id_dim, d.adaptor_hidden, len(states.layer_groups))
        heads = module_states({"pooling": featurizer.pooling, "coarse": head, "fine": fine})
        manifest = {
            "encoder_name": "tiny-quick" if args.quick else default_encoder_name(d.lm_path),
            "layer_groups": states.layer_groups,
            "stage1": settings.stage1.model_dump(),
            "fine_trained": False,
        }
        version = _save_and_announce(settings, heads, manifest, console)
    summary = {
        "job": "align",
        "quick": args.quick,
        "n_items": len(item_ids),
        "n_warm": len(kept),
        "folds": folds,
        **{f"{m}_recall@10": round(stat(m, "recall_at_k")[0], 4) for m in methods},
        **{f"{m}_recall@10_std": round(stat(m, "recall_at_k")[1], 4) for m in methods},
        **{f"{m}_cosine": round(stat(m, "mean_cosine")[0], 4) for m in methods},
        "chance_recall@10": round(10 / len(kept), 4),
        "layer_groups": states.layer_groups,
        "bundle": version,
        "seconds": round(time.time() - started, 1),
    }
    print(json.dumps(summary))
    return 0
