"""`idproxy align`: Stage-1 alignment on MovieLens-100K with real weights.

Setup (issue 2):

1. ID targets: a logistic-MF ID-only model trained on all click/non-click interactions;
   items with at least τ (``stage1.min_updates``) interactions are "warm" and get kept,
   ℓ2-normalised ID embeddings (paper §3.1.1).
2. A seeded ``holdout_fraction`` of the warm items is held out of Stage-1 training.
3. Stage 1 fits g + φ with the PAL loss on the other warm items (frozen SmolLM2-135M, text =
   title, year, genres; the MLLM runs once per item and is cached).
4. On the held-out items it compares, against all warm items' ID embeddings:
   recall@10 of the item's own ID embedding and the mean cosine, for the Stage-1 proxy, a
   CB2CF-style static MLP regression from frozen features (masked mean of the final layer,
   cosine regression), and random unit vectors.
5. It saves the trained g + φ (+ an untrained fine head) as the current proxy bundle, which
   the streaming workers load.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

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


def run(args: argparse.Namespace, settings: Settings) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    from proxy_model.alignment import preprocess_id_embeddings
    from proxy_model.artifacts import save_bundle
    from proxy_model.encoder import default_encoder_name
    from proxy_model.heads import FineHead
    from proxy_model.stage1 import alignment_report
    from trainer.content import fit_coarse_proxies, movielens_token_states, pooled_features
    from trainer.id_model import train_id_table
    from trainer.movielens import load_movielens

    console = Console()
    started = time.time()
    if args.epochs:
        settings.stage1.epochs = args.epochs
    elif args.quick:
        settings.stage1.epochs = 30
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
    g = torch.Generator().manual_seed(args.seed)
    perm = torch.randperm(len(kept), generator=g)
    n_hold = int(round(settings.stage1.holdout_fraction * len(kept)))
    hold, train = perm[:n_hold], perm[n_hold:]
    console.print(
        f"ID table: {len(item_ids)} items, {len(kept)} with >= {settings.stage1.min_updates} "
        f"updates; Stage 1 trains on {len(train)}, holds out {len(hold)}"
    )

    states = movielens_token_states(settings, quick=args.quick)
    featurizer, head = fit_coarse_proxies(
        states, kept[train], targets[train], settings, seed=args.seed
    )
    z, _, frozen = pooled_features(featurizer, states)
    with torch.no_grad():
        proxies = head(z[kept])  # rows of `kept`
    cb2cf = _cb2cf(frozen[kept], train, targets[train], settings.stage1.epochs * 4, args.seed)
    rand = torch.randn(len(kept), targets.shape[1], generator=g)

    rows = {"stage1_proxy": proxies, "cb2cf_mlp": cb2cf, "random": rand}
    reports = {name: alignment_report(p[hold], targets, hold) for name, p in rows.items()}
    train_fit = alignment_report(proxies[train], targets, train)

    table = Table(
        title=f"Held-out alignment on MovieLens-100K ({len(hold)} items vs {len(kept)} ID embeddings)"
    )
    for col in ("method", "recall@10", "mean cosine"):
        table.add_column(col)
    for name, rep in reports.items():
        table.add_row(name, f"{rep.recall_at_k:.4f}", f"{rep.mean_cosine:.4f}")
    console.print(table)
    console.print(
        f"(Stage-1 fit on its own training items: recall@10 {train_fit.recall_at_k:.4f}, "
        f"cosine {train_fit.mean_cosine:.4f}; chance recall@10 = {10 / len(kept):.4f})"
    )

    version = None
    if not args.no_save:
        d = settings.model
        fine = FineHead(states.last.shape[-1], d.id_dim, d.adaptor_hidden, len(states.layer_groups))
        version = save_bundle(
            Path(settings.cache_dir) / "artifacts",
            {"pooling": featurizer.pooling, "coarse": head, "fine": fine},
            {
                "kind": "proxy",
                "encoder_name": "tiny-quick" if args.quick else default_encoder_name(d.lm_path),
                "layer_groups": states.layer_groups,
                "stage1": settings.stage1.model_dump(),
                "fine_trained": False,
                "holdout": {k: v.__dict__ for k, v in reports.items()},
            },
        )
        console.print(f"saved proxy bundle {version}")
    summary = {
        "job": "align",
        "quick": args.quick,
        "n_items": len(item_ids),
        "n_warm": len(kept),
        "n_holdout": len(hold),
        **{f"{k}_recall@10": round(v.recall_at_k, 4) for k, v in reports.items()},
        **{f"{k}_cosine": round(v.mean_cosine, 4) for k, v in reports.items()},
        "layer_groups": states.layer_groups,
        "bundle": version,
        "seconds": round(time.time() - started, 1),
    }
    print(json.dumps(summary))
    return 0
