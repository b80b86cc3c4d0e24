"""``idproxy bench content-probe``: how much can an item's content tell about its click rate?

A ceiling check that needs no ranker. On each Table-1 split (both cold-start protocols,
``trainer.seeds`` seeds), a weighted ridge regression maps item features to the logit of
each training item's smoothed click rate (training events only). The new items' test
events are then scored by

* ``user``: the user's smoothed click rate in the training events (no item signal);
* ``user + side``: plus the regression on the side features (genre one-hot, year bucket)
  that the Table-1 Base ranker already has;
* ``user + content``: plus the regression on the cached MLLM features (z_groups pooled
  without the first token, standardised per dimension: the proxies' input);
* ``user + side + content``: the side regression plus a content regression fitted to its
  residuals: what the content adds to what Base has;
* ``user + oracle``: plus the new items' own test-period click rate (leaks the labels: the
  most any item-level signal could add).

It answers "is there item signal in the content beyond what Base already has, on this
data?" before any proxy is trained; ``docs/TRAINER.md`` uses it to read Table 1.
The ridge strength ``λ`` = 1000 (in units of the summed weights' scale, √events per item)
is fixed, not tuned per split; ``--lam`` changes it.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from idproxy.settings import Settings

SCORES = ("user", "user + side", "user + content", "user + side + content", "user + oracle")
PRIOR = 5.0  # pseudo-events of the global rate in every smoothed rate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=int, default=None, help="default: trainer.seeds")
    parser.add_argument("--lam", type=float, default=1000.0, help="ridge strength")


def smoothed_logit(keys: np.ndarray, labels: np.ndarray, size: int, prior: float) -> np.ndarray:
    """logit of (clicks + PRIOR·prior) / (events + PRIOR) per key 0..size-1 -> [size]."""
    clicks = np.bincount(keys, weights=labels, minlength=size)
    events = np.bincount(keys, minlength=size)
    rate = (clicks + PRIOR * prior) / (events + PRIOR)
    return np.log(rate / (1 - rate))


def ridge(x: np.ndarray, target: np.ndarray, weight: np.ndarray, lam: float) -> np.ndarray:
    """Weighted ridge with an unpenalised-in-practice bias column: x [N, F] -> w [F + 1]."""
    x1 = np.hstack([x, np.ones((len(x), 1))])
    a = x1.T @ (x1 * weight[:, None]) + lam * np.eye(x1.shape[1])
    return np.linalg.solve(a, x1.T @ (weight * target))


def item_predictor(x: np.ndarray, rows: np.ndarray, target, weight, lam) -> np.ndarray:
    """Fits on ``rows`` of x [I+1, F]; returns the prediction for every row [I+1]."""
    w = ridge(x[rows], target[rows], weight[rows], lam)
    return np.hstack([x, np.ones((len(x), 1))]) @ w


def probe_split(split, content: np.ndarray, side: np.ndarray, lam: float) -> dict[str, float]:
    """AUC of each score on the split's new-item test events."""
    from trainer.metrics import auc

    ev = split.events
    users, items, labels = ev.user.numpy(), ev.item.numpy(), ev.label.numpy().astype(float)
    tr, te = split.train, split.test_new
    prior = float(labels[tr].mean())
    user_logit = smoothed_logit(users[tr], labels[tr], split.n_users + 1, prior)
    item_target = smoothed_logit(items[tr], labels[tr], split.n_items + 1, prior)
    weight = np.sqrt(np.bincount(items[tr], minlength=split.n_items + 1)).astype(float)
    rows = np.nonzero(weight > 0)[0]
    oracle = smoothed_logit(items[te], labels[te], split.n_items + 1, prior)
    side_pred = item_predictor(side, rows, item_target, weight, lam)
    item_scores = {
        "user": np.zeros(split.n_items + 1),
        "user + side": side_pred,
        "user + content": item_predictor(content, rows, item_target, weight, lam),
        "user + side + content": side_pred
        + item_predictor(content, rows, item_target - side_pred, weight, lam),
        "user + oracle": oracle,
    }
    return {k: auc(labels[te], (user_logit[users] + s[items])[te]) for k, s in item_scores.items()}


def item_matrices(settings: Settings, split) -> tuple[np.ndarray, np.ndarray]:
    """(content [I+1, G·D] standardised, side [I+1, genres + year buckets]) by raw id."""
    from trainer.content import movielens_token_states, without_first_token

    states = without_first_token(movielens_token_states(settings))
    mask = states.mask.float()[:, None, :, None]
    pooled = ((states.groups.float() * mask).sum(2) / mask.sum(2).clamp(min=1)).flatten(1)
    pooled = ((pooled - pooled.mean(0)) / (pooled.std(0) + 1e-6)).numpy()
    content = np.zeros((split.n_items + 1, pooled.shape[1]))
    content[np.asarray(states.item_ids, dtype=np.int64)] = pooled
    s = split.side
    years = np.eye(int(s.cardinalities[3]))[s.item_year.numpy()]
    return content, np.hstack([s.item_genres.numpy(), years])


def run(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console
    from rich.table import Table

    from idproxy.movielens import load_movielens
    from trainer.data import make_split

    t = settings.trainer
    seeds = args.seeds if args.seeds is not None else t.seeds
    started = time.perf_counter()
    ml = load_movielens()
    results: dict[str, dict[str, list[float]]] = {}
    matrices = None
    for protocol in t.table1_protocols:
        per = results.setdefault(protocol, {k: [] for k in SCORES})
        for seed in range(seeds):
            split = make_split(
                ml,
                seed=seed,
                history_len=t.history_len,
                new_item_fraction=t.new_item_fraction,
                test_fraction=t.test_fraction,
                warmup_k=t.warmup_k,
                protocol=protocol,
            )
            matrices = matrices or item_matrices(settings, split)
            for k, v in probe_split(split, *matrices, args.lam).items():
                per[k].append(v)
            print(f"content probe: {protocol} seed {seed} done", flush=True)
    table = Table(title=f"AUC on new items' test events, {seeds} seeds (mean ± std)")
    table.add_column("score")
    for protocol in results:
        table.add_column(protocol)
    for k in SCORES:
        cells = [f"{np.mean(results[p][k]):.4f} ± {np.std(results[p][k]):.4f}" for p in results]
        table.add_row(k, *cells)
    Console().print(table)
    line = {"bench": "content-probe", "seeds": seeds, "lam": args.lam}
    for p, per in results.items():
        line[f"auc_new_{p}"] = {k: round(float(np.mean(v)), 4) for k, v in per.items()}
        line[f"content_adds_to_side_{p}"] = round(
            float(np.mean(per["user + side + content"]) - np.mean(per["user + side"])), 4
        )
    line["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(line))
    return 0
