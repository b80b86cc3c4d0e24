"""`idproxy bench online`: the online trainer's continual-learning result, without Kafka, per seed.

The live demo runs this comparison once, through the real pipeline, on a shared machine.
This benchmark replays the same MovieLens-100K stream straight into
``trainer.online_core.TrainerCore`` (the trainer's own decode → score → train code) for both
variants and several seeds, so the difference can be told from seed noise:

* samples in time order; history = the user's earlier clicks (rating ≥ 4), last L;
  ``item_interactions`` = the item's earlier ratings (what the stream processor counts);
* content as the demo's worker computes it at start-up: real SmolLM2 token states (cached),
  untrained attention pooling g (masked mean) and a seeded, untrained coarse head φ. The
  fine head trains online. Every item has its proxy at its first rating: this is the
  pipeline with zero freshness lag;
* prequential scores (each batch is scored before it is trained on), as in the trainer.

Reported per variant (mean ± std over seeds) and paired (IDProxy − ID-only, per seed):
AUC over all samples and over new-item samples (< τ earlier interactions), the latter
also time-stratified (per stream decile, weighted by count, as in the demo summary). The AUC is also
given per bucket of the item's earlier interactions (0, 1–2, 3–4, 5–9, 10–19, 20–49, 50+),
which shows how the advantage changes as items warm up. Writes ``results.json`` and
``auc_by_interactions.png`` under ``<run_dir>/bench-online-<time>/`` and ends with one JSON line.

``--split F --stage1`` runs the paper's setting instead of an untrained φ: an id-only ranker
learns on the first F of the stream, φ is fitted offline (Stage 1, PAL) on its item rows
with ≥ τ updates, and both variants are then replayed from the start with that φ and
scored on the rest of the stream only. ``--split F`` alone scores the same part with the
untrained φ, the baseline to compare with.

Caveat: a pooled prequential AUC mixes scores of a model that changes over time. Items that
debut late in ML-100K are rated lower on average and get scored by a later, better-calibrated
model, so the k = 0 bucket sits below 0.5 for both variants. The paired difference on the
same samples is the figure to read.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections import namedtuple
from pathlib import Path

from idproxy.settings import Settings

Record = namedtuple("Record", "value partition offset")
BUCKETS: list[tuple[int, int | None]] = [
    (0, 0),
    (1, 2),
    (3, 4),
    (5, 9),
    (10, 19),
    (20, 49),
    (50, None),
]
VARIANTS = ("idproxy", "id-only")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated ranker seeds")
    parser.add_argument("--ratings", type=int, default=0, help="first N ratings (0 = all)")
    parser.add_argument("--tiny", action="store_true", help="tiny random encoder (tests)")
    parser.add_argument(
        "--split",
        type=float,
        default=0.5,
        metavar="FRACTION",
        help="the history period: the first FRACTION of the stream bootstraps the deployment "
        "and only the ratings after it are scored (0 = score the whole stream)",
    )
    parser.add_argument(
        "--stage1",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="bootstrap φ offline (Stage 1) on the ID table an id-only ranker learns from the "
        "history period, as the paper deploys it (--no-stage1: the untrained φ a worker "
        "starts with)",
    )
    parser.add_argument(
        "--live-adaptor-lr-scale",
        type=float,
        default=None,
        metavar="S",
        help="the fine head's learning rate after the history period, relative to the "
        "ranker's (0 = frozen; default: trainer.online_adaptor_lr_scale throughout)",
    )


def bucket_label(lo: int, hi: int | None) -> str:
    """The printed name of an interactions bucket.

    >>> bucket_label(0, 0), bucket_label(1, 2), bucket_label(50, None)
    ('0', '1-2', '50+')
    """
    return f"{lo}+" if hi is None else (str(lo) if lo == hi else f"{lo}-{hi}")


def replay_samples(ratings: int, history_len: int):
    """MovieLens in time order -> (all samples as one SampleBatch, earlier interactions
    per sample)."""
    from idproxy.movielens import load_movielens
    from streams.sample_batch import SampleBatch

    ml = load_movielens()
    n = len(ml.users) if ratings <= 0 else min(ratings, len(ml.users))
    labels = ml.labels
    clicks: dict[int, list[str]] = {}
    seen: dict[int, int] = {}
    rows, interactions = [], []
    for k in range(n):
        user, item, label = int(ml.users[k]), int(ml.items[k]), int(labels[k])
        before = seen.get(item, 0)
        rows.append(
            dict(
                sample_key=k,
                user=f"u{user}",
                item=str(item),
                label=label,
                ts=float(ml.timestamps[k]),
                history=clicks.get(user, [])[-history_len:],
                item_interactions=before,
                item_age_s=None,
                item_known=True,
            )
        )
        interactions.append(before)
        seen[item] = before + 1
        if label:
            clicks.setdefault(user, []).append(str(item))
    return SampleBatch.from_rows(rows, history_len), interactions


def part(samples, start: int, stop: int):
    """Samples [start, stop) of a SampleBatch, as a SampleBatch."""
    from streams.sample_batch import COLUMNS, SampleBatch

    return SampleBatch(**{c: getattr(samples, c)[start:stop] for c in COLUMNS})


def content_features(settings: Settings, tiny: bool, head_seed: int = 0):
    """-> (item ids, z [N, D], z_groups [N, G, D], φ) as a worker computes them at start-up:
    real token states (cached), untrained g (masked mean), a seeded untrained coarse head φ.

    ``head_seed`` 0 is the seed of a worker's ProxyService when no bundle exists.
    """
    import torch

    from proxy_model.features import ContentFeaturizer
    from proxy_model.heads import CoarseHead
    from trainer.content import movielens_token_states, pooled_features

    states = movielens_token_states(settings, quick=tiny)
    hidden = states.last.shape[-1]
    m = settings.model
    torch.manual_seed(head_seed)
    featurizer = ContentFeaturizer(None, states.layer_groups, hidden_size=hidden)
    coarse = CoarseHead(hidden, m.id_dim, m.coarse_hidden)
    with torch.no_grad():
        z, z_groups, _ = pooled_features(featurizer, states)
    return [str(i) for i in states.item_ids], z, z_groups, coarse


def content_cache(ids: list[str], z, z_groups, coarse):
    """ItemCache with z, z_groups and p_coarse = φ(z) per item (rows = ``ids``)."""
    import torch

    from benchmarks.bench_trainer import filled_cache

    with torch.no_grad():
        p_coarse = coarse(z)
    return filled_cache(ids, z.numpy(), z_groups.numpy(), p_coarse.numpy())


def stage1_on_learned_ids(settings: Settings, ids, z, coarse, samples, hidden: int, seed: int):
    """The paper's offline Stage 1 on a mature ID table -> (fitted copy of φ, fit report).

    An id-only online ranker learns on ``samples`` (the stream's first part); its item rows
    with ≥ τ updates, ℓ2-normalised, are the targets; φ is fitted on all of them with PAL
    (``settings.stage1``), starting from ``coarse``. The report gives the number of targets
    and the in-sample recall@10 of each item's own row before and after the fit.
    """
    import copy

    import torch

    from proxy_model.alignment import preprocess_id_embeddings
    from proxy_model.stage1 import alignment_report, fit_coarse_head
    from streams.sample_batch import id_hashes
    from trainer.content import stage1_config

    model, _ = replay_model(settings, "id-only", seed, hidden, None, samples)
    table_ids, weight, counts = model.item_table.snapshot()
    row = {key: r for r, key in enumerate(table_ids)}
    keys = id_hashes(ids).tolist()
    have = [k for k, key in enumerate(keys) if key in row]
    picked = [row[keys[k]] for k in have]
    kept, targets = preprocess_id_embeddings(
        weight[picked], counts[picked], settings.stage1.min_updates
    )
    z_kept, own = z[have][kept], torch.arange(len(kept))
    fitted = copy.deepcopy(coarse)
    fit_coarse_head(fitted, z_kept, targets, stage1_config(settings, seed), progress=False)
    with torch.no_grad():
        before = alignment_report(coarse(z_kept), targets, own).recall_at_k
        after = alignment_report(fitted(z_kept), targets, own).recall_at_k
    report = {"targets": len(kept), "recall_at_10_before": before, "recall_at_10_after": after}
    return fitted, {k: round(v, 4) if isinstance(v, float) else v for k, v in report.items()}


def replay_model(
    settings: Settings,
    variant: str,
    seed: int,
    hidden: int,
    cache,
    samples,
    live_from: int = 0,
    live_adaptor_lr_scale: float | None = None,
):
    """One prequential pass of ``samples`` (a SampleBatch) through ``TrainerCore``, one
    ``samples`` record (frame) per mini-batch -> (trained OnlineRanker, predictions:
    score [N], label [N], is_new [N], ts [N] in stream order).

    ``live_adaptor_lr_scale``: from the batch that reaches sample ``live_from`` on, the fine
    head trains at this rate relative to the ranker's (0 = frozen).
    """
    from benchmarks.bench_trainer import model_and_optimizer
    from trainer.item_cache import ItemCache
    from trainer.online_core import TrainerCore, fit_fine_normaliser

    t = settings.trainer
    seeded = settings.model_copy(update={"trainer": t.model_copy(update={"online_seed": seed})})
    model, optimizer = model_and_optimizer(seeded, variant, hidden)
    if cache is not None:  # label-free: the content of the items known at go-live
        keys = set(samples.item[: live_from or samples.count].tolist())
        known = {cache.item_of(key) for key in keys} - {None}
        fit_fine_normaliser(model, cache, sorted(known))
    core = TrainerCore(seeded, model, optimizer, cache if cache is not None else ItemCache())
    size = t.online_batch_size
    for k, start in enumerate(range(0, samples.count, size)):  # one frame per batch
        if live_adaptor_lr_scale is not None and variant == "idproxy" and start >= live_from:
            optimizer.dense.param_groups[1]["lr"] = t.online_lr * live_adaptor_lr_scale
        core.process([Record(part(samples, start, start + size).encode(), 0, k)])
    return model, core.predictions.arrays()


WARM_MIN = 20  # an item seen at least this often before the sample is "warm"


def auc_table(scores, labels, interactions, new_below: int) -> dict[str, float]:
    """AUC overall, on warm-item samples (≥ ``WARM_MIN`` earlier interactions), on new-item
    samples (< new_below earlier interactions), the latter also time-stratified over 10 stream
    slices (``new_by_time``), per bucket, and for the first rating of an item also
    time-stratified (``0_by_time``)."""
    import numpy as np

    from trainer.metrics import auc
    from trainer.streaming_metrics import time_stratified_auc

    k = np.asarray(interactions)
    new = k < new_below

    def by_time(select):
        pred = {"score": scores, "label": labels, "is_new": select}
        return time_stratified_auc(pred, buckets=10) or math.nan

    out = {
        "all": auc(labels, scores),
        "warm": auc(labels[k >= WARM_MIN], scores[k >= WARM_MIN]),
        "new": auc(labels[new], scores[new]),
        "new_by_time": by_time(new),
        "0_by_time": by_time(k == 0),
    }
    for lo, hi in BUCKETS:
        sel = (k >= lo) & (k <= (hi if hi is not None else k.max()))
        out[bucket_label(lo, hi)] = auc(labels[sel], scores[sel])
    return out


def _json_number(x: float) -> float | None:
    """Rounded for the JSON line; NaN (a slice with one class) becomes null.

    >>> _json_number(0.123456), _json_number(float("nan"))
    (0.1235, None)
    """
    return None if not math.isfinite(x) else round(x, 4)


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std of the finite values (an AUC is NaN when a bucket has one class).

    >>> [round(x, 4) for x in _mean_std([0.5, 0.7, float("nan")])]
    [0.6, 0.1414]
    """
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), (statistics.stdev(finite) if len(finite) > 1 else 0.0)


def _plot(path: Path, summary: dict, deltas: dict, seeds: int, scope: str) -> None:
    """Left: AUC per interactions bucket and variant; right: the paired Δ per bucket."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [bucket_label(lo, hi) for lo, hi in BUCKETS]
    fig, (ax, ax_d) = plt.subplots(1, 2, figsize=(12, 4))
    for variant, offset in zip(VARIANTS, (-0.08, 0.08), strict=True):
        means = [summary[variant][b][0] for b in labels]
        stds = [summary[variant][b][1] for b in labels]
        xs = [i + offset for i in range(len(labels))]
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=variant)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    d = [_mean_std(deltas[b]) for b in labels]
    ax_d.errorbar(
        range(len(labels)),
        [m for m, _ in d],
        yerr=[s for _, s in d],
        marker="o",
        capsize=3,
        color="C2",
    )
    ax_d.axhline(0.0, color="grey", lw=0.8, ls=":")
    for a in (ax, ax_d):
        a.set_xticks(range(len(labels)), labels)
        a.set_xlabel("item's earlier interactions when the sample was scored")
    ax.set_ylabel("prequential AUC")
    ax_d.set_ylabel("Δ AUC, IDProxy − ID-only (paired per seed)")
    ax.set_title(f"Online ranker on MovieLens-100K, mean ± std over {seeds} seeds\n{scope}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace, settings: Settings) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table
    from tqdm import tqdm

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not seeds:
        raise SystemExit("--seeds: give at least one seed")
    t = settings.trainer
    torch.set_num_threads(t.threads)
    started = time.time()
    if not 0.0 <= args.split < 1.0:
        raise SystemExit("--split: give a fraction in [0, 1)")
    samples, interactions = replay_samples(args.ratings, t.history_len)
    ids, z, z_groups, coarse = content_features(settings, args.tiny)
    hidden = z.shape[-1]
    cut, stage1 = int(samples.count * args.split), None
    if args.stage1:
        if not cut:
            raise SystemExit("--stage1 needs --split > 0: the ID table is learned before it")
        print(f"stage 1: fitting φ on an id-only ranker's ID table after {cut:,} ratings")
        coarse, stage1 = stage1_on_learned_ids(
            settings, ids, z, coarse, part(samples, 0, cut), hidden, seeds[0]
        )
        print(f"stage 1: {stage1}")
    cache = content_cache(ids, z, z_groups, coarse)
    per_seed: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    jobs = [(seed, v) for seed in seeds for v in VARIANTS]
    for seed, variant in tqdm(jobs, desc="bench online", unit="replay"):
        _, pred = replay_model(
            settings, variant, seed, hidden, cache, samples, cut, args.live_adaptor_lr_scale
        )
        per_seed[variant].append(
            auc_table(
                pred["score"][cut:],
                pred["label"][cut:],
                interactions[cut:],
                t.new_item_interactions,
            )
        )

    keys = ["all", "warm", "new", "new_by_time", "0_by_time"]
    keys += [bucket_label(lo, hi) for lo, hi in BUCKETS]
    summary = {v: {k: _mean_std([r[k] for r in per_seed[v]]) for k in keys} for v in VARIANTS}
    deltas = {
        k: [a[k] - b[k] for a, b in zip(per_seed["idproxy"], per_seed["id-only"], strict=True)]
        for k in keys
    }
    delta_summary = {k: _mean_std(deltas[k]) for k in keys}
    wins = {k: sum(d > 0 for d in deltas[k] if math.isfinite(d)) for k in keys}
    phi = f"φ fitted on the first {cut:,}" if stage1 else "untrained φ"
    scope = f"ratings {cut + 1:,}–{samples.count:,}" if cut else f"{samples.count:,} ratings"
    table = Table(title=f"prequential AUC, {scope}, {phi}, {len(seeds)} seeds (mean ± std)")
    for col in ("samples", "IDProxy", "ID only", "Δ paired", "seeds Δ > 0"):
        table.add_column(col)
    for k in keys:
        name = {
            "all": "all items",
            "warm": f"warm items (≥ {WARM_MIN})",
            "new": f"new items (< {t.new_item_interactions})",
            "new_by_time": "new, per stream decile",
            "0_by_time": "item seen 0×, per stream decile",
        }.get(k, f"item seen {k}×")
        m_i, s_i = summary["idproxy"][k]
        m_o, s_o = summary["id-only"][k]
        d_m, d_s = delta_summary[k]
        table.add_row(
            name,
            f"{m_i:.3f}±{s_i:.3f}",
            f"{m_o:.3f}±{s_o:.3f}",
            f"{d_m:+.3f}±{d_s:.3f}",
            f"{wins[k]}/{len(seeds)}",
        )
    Console().print(table)

    out = Path(settings.run_dir) / f"bench-online-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "bench": "online",
        "ratings": samples.count,
        "seeds": seeds,
        "tiny": args.tiny,
        "adaptor_lr_scale": t.online_adaptor_lr_scale,
        "live_adaptor_lr_scale": args.live_adaptor_lr_scale,
        "evaluated_from": cut,
        "stage1": stage1,
        "per_seed": per_seed,
    }
    for k, name in (
        ("all", "all"),
        ("warm", "warm"),
        ("new", "new"),
        ("new_by_time", "new_by_time"),
    ):
        result[f"delta_{name}_mean"] = _json_number(delta_summary[k][0])
        result[f"delta_{name}_std"] = _json_number(delta_summary[k][1])
        result[f"{name}_wins"] = wins[k]
    result |= {"seconds": round(time.time() - started, 1), "run_dir": str(out)}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    _plot(out / "auc_by_interactions.png", summary, deltas, len(seeds), f"{scope}, {phi}")
    print(json.dumps({k: v for k, v in result.items() if k != "per_seed"}), flush=True)
    return 0
