"""The plain ranker and its IDProxy version on the MovieLens-100K replay, paired per seed.

1. Proxies: ``--tiny`` uses the repo's tiny random encoder (as ``bench online --tiny``)
   with seeded, untrained heads; the real profile builds them as ``idproxy bench online`` does: cached SmolLM2 features, φ
   fitted by Stage 1 on an ID-only ranker's table learned on the ratings before the split,
   and p_fine from the untrained fine head over its fitted feature normaliser.
2. They are written into a temporary ``ProxyStore`` as one published version, and the read
   API (``store.api_server``, bearer token) serves it on a free loopback port.
3. For each seed, both rankers start from the same initial weights and replay the same
   batches in time order, prequentially (each batch is scored, then trained on); the
   IDProxy ranker reads each batch's proxies through ``ProxyClient.get_many``.
4. Scored: the ratings after the split. AUC over all of them, over new-item samples (the
   item had < 5 earlier ratings) and over cold items (no rating before the split).

Prints a table and ends with one JSON line. Run from the repo root:
``PYTHONPATH=$PWD python -m examples.run_movielens [--tiny]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import secrets
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from examples import adopt_idproxy, plain_ranker
from idproxy.client import ProxyClient
from idproxy.movielens import load_movielens
from trainer.metrics import auc

VARIANTS = {"plain": plain_ranker, "idproxy": adopt_idproxy}
NEW_ITEM_INTERACTIONS = 5  # a sample's item is "new" with fewer earlier ratings than this
SLICES = ("all", "new", "cold")


@dataclass
class Replay:
    """MovieLens in time order: per-sample arrays [N] and the batches built from them."""

    users: np.ndarray
    items: np.ndarray
    labels: np.ndarray
    n_item: np.ndarray  # the item's ratings before the sample
    batches: list[dict[str, torch.Tensor]]
    n_users: int
    n_items: int


def build_replay(ratings: int, history_len: int, batch_size: int) -> Replay:
    """The first ``ratings`` ratings (0 = all) as batches; history = the user's last
    ``history_len`` clicks (rating ≥ 4) before the sample, left-padded with item 0.
    ``n_item``: the target's ratings before the sample; ``n_hist``: each history item's
    ratings before the batch (what a feature pipeline's counter holds at request time)."""
    ml = load_movielens()
    n = len(ml.users) if ratings <= 0 else min(ratings, len(ml.users))
    users, items, labels = ml.users[:n], ml.items[:n], ml.labels[:n]
    seen: dict[int, int] = {}
    clicks: dict[int, list[int]] = {}
    n_item = np.zeros(n, np.int64)
    hist = np.zeros((n, history_len), np.int64)
    for k in range(n):
        u, i = int(users[k]), int(items[k])
        n_item[k] = seen.get(i, 0)
        h = clicks.get(u, [])[-history_len:]
        if h:
            hist[k, history_len - len(h) :] = h
        seen[i] = n_item[k] + 1
        if labels[k] > 0:
            clicks.setdefault(u, []).append(i)
    counts = np.zeros(max(ml.item_title) + 1, np.int64)  # ratings so far, at batch start
    batches = []
    for s in range(0, n, batch_size):
        e = min(s + batch_size, n)
        batches.append(
            {
                "user": torch.from_numpy(users[s:e].copy()),
                "item": torch.from_numpy(items[s:e].copy()),
                "hist": torch.from_numpy(hist[s:e]),
                "label": torch.from_numpy(labels[s:e].copy()),
                "n_item": torch.from_numpy(n_item[s:e]),
                "n_hist": torch.from_numpy(counts[hist[s:e]]),
            }
        )
        np.add.at(counts, items[s:e], 1)
    return Replay(users, items, labels, n_item, batches, max(ml.user_gender), max(ml.item_title))


def tiny_proxies(item_ids: list[int], dim: int) -> tuple[np.ndarray, np.ndarray, str, dict]:
    """(p_coarse, p_fine) [N, dim] of ``item_ids`` from the repo's tiny random encoder with
    seeded, untrained heads (the token states are cached after the first run, about 1 min)."""
    from idproxy.settings import Settings
    from proxy_model.features import ContentFeaturizer
    from proxy_model.heads import CoarseHead, FineHead
    from trainer.content import movielens_token_states, pooled_features

    states = movielens_token_states(Settings(), quick=True)
    hidden, groups = states.last.shape[-1], states.layer_groups
    torch.manual_seed(0)
    featurizer = ContentFeaturizer(None, groups, hidden_size=hidden)
    coarse, fine = CoarseHead(hidden, dim, 16), FineHead(hidden, dim, 16, len(groups))
    row = {int(i): k for k, i in enumerate(states.item_ids)}
    pick = [row[i] for i in item_ids]
    with torch.no_grad():
        z, z_groups, _ = pooled_features(featurizer, states)
        p_coarse = coarse(z[pick])
        p_fine = fine(p_coarse, z_groups[pick])
    return p_coarse.numpy(), p_fine.numpy(), "tiny-untrained-seed0", {"tiny": True}


def stage1_proxies(
    item_ids: list[int], dim: int, ratings: int, cut: int
) -> tuple[np.ndarray, np.ndarray, str, dict]:
    """Stage-1 proxies as ``idproxy bench online`` builds them (φ fitted on the ID table an
    ID-only ranker learns from the first ``cut`` ratings); p_fine from the untrained fine
    head over its feature normaliser, fitted on the items rated before ``cut``."""
    from benchmarks.bench_online import content_features, replay_records, stage1_on_learned_ids
    from idproxy.settings import Settings
    from proxy_model.heads import FineHead

    settings = Settings()
    if settings.model.id_dim != dim:
        raise SystemExit(f"--dim must be model.id_dim ({settings.model.id_dim}) for Stage 1")
    ids, z, z_groups, coarse = content_features(settings, tiny=False)
    records, _ = replay_records(ratings, settings.trainer.history_len)
    coarse, report = stage1_on_learned_ids(
        settings, ids, z, coarse, records[:cut], z.shape[-1], seed=0
    )
    torch.manual_seed(0)
    fine = FineHead(z.shape[-1], dim, settings.model.adaptor_hidden, z_groups.shape[1])
    known = {str(i) for i in load_movielens().items[:cut].tolist()}
    fine.normaliser.fit(z_groups[[k for k, i in enumerate(ids) if i in known]])
    row = {int(i): k for k, i in enumerate(ids)}
    pick = [row[i] for i in item_ids]
    with torch.no_grad():
        p_coarse = coarse(z[pick])
        p_fine = fine(p_coarse, z_groups[pick])
    return p_coarse.numpy(), p_fine.numpy(), f"stage1-ml100k-cut{cut}", {"stage1": report}


@contextlib.contextmanager
def serve_proxies(
    item_ids: list[int], p_coarse: np.ndarray, p_fine: np.ndarray, version: str, manifest: dict
) -> Iterator[ProxyClient]:
    """Writes the proxies into a temporary ProxyStore, publishes them as ``version``, serves
    the read API on a free loopback port with a bearer token, and yields its client."""
    from store import ProxyStore
    from store.api_server import make_server
    from store.http_api import ProxyApi

    dim = p_coarse.shape[1]
    with tempfile.TemporaryDirectory(prefix="idproxy-example-") as tmp:
        path = Path(tmp) / "store"
        writer = ProxyStore(path, dim=dim)
        writer.stage(version, manifest=manifest, expected_items=len(item_ids))
        for s in range(0, len(item_ids), 1000):
            ids = [str(i) for i in item_ids[s : s + 1000]]
            writer.write_batch(version, ids, p_coarse[s : s + 1000], p_fine[s : s + 1000])
        writer.publish(version)
        reader = ProxyStore(path, dim=dim, read_only=True)
        token = secrets.token_urlsafe(16)
        api = ProxyApi(reader, max_request_bytes=1 << 20, max_batch_items=1000, token=token)
        server = make_server(api, "127.0.0.1", 0).start()
        client = ProxyClient(server.url, token=token, timeout_s=10.0)
        try:
            yield client
        finally:
            client.close()
            server.shutdown()
            server.server_close()
            reader.close()
            writer.close()


def run_variant(
    variant: str, seed: int, replay: Replay, dim: int, lr: float, client: ProxyClient
) -> tuple[np.ndarray, float]:
    """One prequential pass -> (scores [N], share of target items that had a proxy)."""
    module = VARIANTS[variant]
    torch.manual_seed(seed)
    model, optimizer = module.build(replay.n_users, replay.n_items, dim, lr)
    scores, hits = [], []
    for batch in replay.batches:
        if variant == "idproxy":
            batch = adopt_idproxy.attach_proxies(client, batch)
            hits.append(batch["has_item"])
        scores.append(module.score(model, batch))
        module.train_step(model, optimizer, batch)
    hit = float(torch.cat(hits).float().mean()) if hits else math.nan
    return torch.cat(scores).numpy(), hit


def slices(replay: Replay, cut: int) -> dict[str, np.ndarray]:
    """Boolean masks [N] of the scored samples: all after ``cut``, new, cold."""
    idx = np.arange(len(replay.items))
    before = set(replay.items[:cut].tolist())
    after = idx >= cut
    return {
        "all": after,
        "new": after & (replay.n_item < NEW_ITEM_INTERACTIONS),
        "cold": after & ~np.isin(replay.items, list(before)),
    }


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std of the finite values (NaN, NaN if none).

    >>> mean_std([0.5, 0.7, float("nan")])
    (0.6, 0.1414)
    """
    v = [x for x in values if math.isfinite(x)]
    if not v:
        return math.nan, math.nan
    return round(statistics.fmean(v), 4), round(statistics.stdev(v) if len(v) > 1 else 0.0, 4)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="3,000 ratings, tiny proxies, 2 seeds")
    p.add_argument("--seeds", default=None, help="comma-separated (default 0..4, tiny 0,1)")
    p.add_argument("--ratings", type=int, default=None, help="first N ratings (0 = all)")
    p.add_argument("--split", type=float, default=0.5, help="score the ratings after this")
    p.add_argument("--dim", type=int, default=None, help="ID dim (default 32, tiny 16)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--history-len", type=int, default=20)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in (args.seeds or ("0,1" if args.tiny else "0,1,2,3,4")).split(",")]
    args.ratings = args.ratings if args.ratings is not None else (3000 if args.tiny else 0)
    args.dim = args.dim or (16 if args.tiny else 32)
    return args


def main(argv: list[str] | None = None) -> dict:
    """Runs everything; prints the table and the JSON line, and returns the JSON's dict."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    replay = build_replay(args.ratings, args.history_len, args.batch_size)
    cut = int(len(replay.items) * args.split)
    items = sorted(set(replay.items.tolist()))
    if args.tiny:
        p_coarse, p_fine, version, info = tiny_proxies(items, args.dim)
    else:
        p_coarse, p_fine, version, info = stage1_proxies(items, args.dim, args.ratings, cut)
    print(f"proxies: {len(items)} items, d = {args.dim}, version {version} {info}", flush=True)
    masks = slices(replay, cut)
    per_seed: dict[str, dict[str, list[float]]] = {v: {s: [] for s in SLICES} for v in VARIANTS}
    init_diff, hit_rate = 0.0, math.nan
    with serve_proxies(items, p_coarse, p_fine, version, info) as client:
        active = client.versions()["active"]
        for seed in args.seeds:
            scores = {}
            for variant in VARIANTS:
                t0 = time.time()
                scores[variant], hit = run_variant(variant, seed, replay, args.dim, args.lr, client)
                hit_rate = hit if variant == "idproxy" else hit_rate
                for s, m in masks.items():
                    per_seed[variant][s].append(auc(replay.labels[m], scores[variant][m]))
                aucs = {s: round(per_seed[variant][s][-1], 4) for s in SLICES}
                print(f"seed {seed} {variant:8s} {aucs} ({time.time() - t0:.1f} s)", flush=True)
            first = slice(0, args.batch_size)  # scored before any training step
            diff = np.abs(scores["plain"][first] - scores["idproxy"][first]).max()
            init_diff = max(init_diff, float(diff))

    deltas = {
        s: [a - b for a, b in zip(per_seed["idproxy"][s], per_seed["plain"][s], strict=True)]
        for s in SLICES
    }
    result = {
        "example": "adopt_idproxy",
        "profile": "tiny" if args.tiny else "real",
        "ratings": len(replay.items),
        "scored_from": cut,
        "samples": {s: int(m.sum()) for s, m in masks.items()},
        "seeds": args.seeds,
        "proxy_version": active,
        "proxy_info": info,
        "target_proxy_hit_rate": round(hit_rate, 4),
        "init_max_abs_diff": init_diff,
        "auc": {v: {s: mean_std(per_seed[v][s]) for s in SLICES} for v in VARIANTS},
        "delta": {
            s: {
                "mean_std": mean_std(deltas[s]),
                "wins": sum(d > 0 for d in deltas[s] if math.isfinite(d)),
            }
            for s in SLICES
        },
        "per_seed": per_seed,
        "seconds": round(time.time() - started, 1),
    }
    print_table(result)
    print(json.dumps(result), flush=True)
    return result


def print_table(r: dict) -> None:
    """The summary table: AUC per variant (mean ± std) and the paired Δ."""
    n = len(r["seeds"])
    print(f"\nprequential AUC on ratings {r['scored_from'] + 1:,}-{r['ratings']:,}, {n} seeds")
    print(f"{'slice':28s} {'samples':>8s} {'plain':>15s} {'IDProxy':>15s} {'Δ paired':>15s} Δ>0")
    names = {
        "all": "all items",
        "new": f"new items (< {NEW_ITEM_INTERACTIONS} earlier)",
        "cold": "cold (unseen before split)",
    }
    for s in SLICES:
        (pm, ps), (im, is_) = r["auc"]["plain"][s], r["auc"]["idproxy"][s]
        dm, ds = r["delta"][s]["mean_std"]
        print(
            f"{names[s]:28s} {r['samples'][s]:8d} {pm:8.4f}±{ps:.4f} {im:8.4f}±{is_:.4f}"
            f" {dm:+8.4f}±{ds:.4f} {r['delta'][s]['wins']}/{n}"
        )


if __name__ == "__main__":
    main()
