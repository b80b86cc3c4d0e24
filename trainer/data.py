"""Table-1 data protocol on MovieLens-100K: features, no-leak histories, cold-item split.

Protocol (docs/BENCHMARKS.md): events are time-ordered; the first ``1 - test_fraction`` of
them form the training period and the rest the test period. A ``new_item_fraction`` of the
items is "new": none of their events is trained on before the test period and they never
enter a history, so their ID rows stay at their initial values. Two cold-start protocols
choose them (``make_split(protocol=...)``):

* ``random``: a seeded random draw of items (a different draw per seed). Cold items are
  then spread over the catalogue's whole life, popular classics included, which gives
  many new-item test events (≈ 3,700 per seed) and a stable AUC.
* ``time``: the items that first appear latest in the stream, as new releases do (ties in
  first time broken by item id; the same set for every seed, seeds vary the models).
  Chosen because it is the real cold start: a late item has no history anywhere, its
  audience is whoever is active late, and a content model cannot lean on the item being
  an old, well-known film. The fraction is the random protocol's, so the two protocols
  hold out the same number of items; most of these items first appear in the training
  period's last weeks or in the test period, and their training-period events are held
  out like those of the random protocol (MovieLens-100K has too few items first rated in
  the test period alone for a stable AUC).

Evaluation slices of the test period: all events, ``test_warm`` (items trained on in the
training period), ``test_new`` (new items) and ``test_new_after_warmup`` (new items'
test events after their ``warmup_k``-th test event, for the prequential warm-up in
``trainer.table1.prequential``; ranks count test-period events only, because those are
the only events of a new item a model is ever trained on).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from idproxy.movielens import MovieLens


@dataclass
class Events:
    """Aligned per-event tensors. Item/user indices are the raw ids (0 = padding)."""

    user: torch.Tensor  # long [N]
    item: torch.Tensor  # long [N]
    label: torch.Tensor  # float [N]
    history: torch.Tensor  # long [N, L], most recent first, 0 = empty

    def subset(self, idx: np.ndarray) -> Events:
        t = torch.as_tensor(idx, dtype=torch.long)
        return Events(self.user[t], self.item[t], self.label[t], self.history[t])

    def __len__(self) -> int:
        return len(self.user)


@dataclass
class SideFeatures:
    """Categorical side features indexed by raw id (row 0 unused).

    user_cat long [U+1, 3] (age bucket, gender, occupation), item_genres float [I+1, G],
    item_year long [I+1] (decade bucket, 0 unknown).
    """

    user_cat: torch.Tensor
    item_genres: torch.Tensor
    item_year: torch.Tensor
    cardinalities: tuple[int, int, int, int]  # age, gender, occupation, year buckets


@dataclass
class Split:
    events: Events
    side: SideFeatures
    new_items: np.ndarray  # raw ids
    train: np.ndarray  # event indices trained on first
    test: np.ndarray  # all test-period events, time-ordered
    test_new: np.ndarray  # test-period events of new items
    test_warm: np.ndarray  # test-period events of items with training-period events
    test_new_after_warmup: np.ndarray  # new items' test events after their k-th test event
    n_users: int
    n_items: int
    protocol: str = "random"


def side_features(ml: MovieLens) -> SideFeatures:
    n_users, n_items = max(ml.user_age), max(ml.item_title)
    occupations = {o: k for k, o in enumerate(sorted(set(ml.user_occupation.values())))}
    age_edges = np.array([18, 25, 35, 45, 50, 56])
    user_cat = torch.zeros(n_users + 1, 3, dtype=torch.long)
    for u in ml.user_age:
        user_cat[u, 0] = int(np.searchsorted(age_edges, ml.user_age[u], side="right"))
        user_cat[u, 1] = int(ml.user_gender[u] == "F")
        user_cat[u, 2] = occupations[ml.user_occupation[u]]
    genres = {g: k for k, g in enumerate(ml.genre_names)}
    item_genres = torch.zeros(n_items + 1, len(genres))
    item_year = torch.zeros(n_items + 1, dtype=torch.long)
    for i in ml.item_title:
        for g in ml.item_genres[i]:
            item_genres[i, genres[g]] = 1.0
        y = ml.item_year[i]
        item_year[i] = 0 if y == 0 else min(max((y - 1920) // 10, 0), 8) + 1
    return SideFeatures(user_cat, item_genres, item_year, (7, 2, len(occupations), 10))


def build_histories(
    users: np.ndarray,
    items: np.ndarray,
    labels: np.ndarray,
    timestamps: np.ndarray,
    excluded: set[int],
    length: int,
) -> np.ndarray:
    """[N, L] the user's clicked items with a timestamp strictly before each event.

    Events must be time-ordered. Items in ``excluded`` never enter a history. Most recent
    first, zero padded.
    """
    out = np.zeros((len(users), length), dtype=np.int64)
    clicks: dict[int, list[int]] = {}
    pending: list[tuple[int, int]] = []  # clicks of the current timestamp, added after it
    current_t = None
    for n in range(len(users)):
        if timestamps[n] != current_t:
            for u, i in pending:
                clicks.setdefault(u, []).append(i)
            pending, current_t = [], timestamps[n]
        past = clicks.get(int(users[n]), [])[-length:][::-1]
        out[n, : len(past)] = past
        if labels[n] > 0 and int(items[n]) not in excluded:
            pending.append((int(users[n]), int(items[n])))
    return out


def cold_items(
    items: np.ndarray, protocol: Literal["random", "time"], fraction: float, seed: int
) -> np.ndarray:
    """Raw ids of the new items (sorted) for time-ordered event ``items`` [N]."""
    all_items, first = np.unique(items, return_index=True)
    size = int(round(fraction * len(all_items)))
    if protocol == "random":
        return np.sort(np.random.default_rng(seed).choice(all_items, size=size, replace=False))
    if protocol == "time":
        order = np.lexsort((all_items, first))  # by first appearance, then id
        return np.sort(all_items[order[len(all_items) - size :]])
    raise ValueError(f"unknown cold-start protocol {protocol!r}")


def make_split(
    ml: MovieLens,
    *,
    seed: int,
    history_len: int,
    new_item_fraction: float,
    test_fraction: float,
    warmup_k: int,
    max_events: int | None = None,
    protocol: Literal["random", "time"] = "random",
) -> Split:
    """The Table-1 split for one seed and cold-start ``protocol`` (module docstring)."""
    n = len(ml.users) if max_events is None else min(max_events, len(ml.users))
    users, items = ml.users[:n], ml.items[:n]
    labels, stamps = ml.labels[:n], ml.timestamps[:n]
    new_items = cold_items(items, protocol, new_item_fraction, seed)
    is_new = np.isin(items, new_items)
    history = build_histories(users, items, labels, stamps, set(new_items.tolist()), history_len)
    cut = int(n * (1 - test_fraction))
    in_test = np.arange(n) >= cut
    test_rank = np.zeros(n, dtype=np.int64)  # the item's earlier test-period events
    seen: dict[int, int] = {}
    for k in range(cut, n):
        i = int(items[k])
        test_rank[k] = seen.get(i, 0)
        seen[i] = test_rank[k] + 1
    trained_items = np.unique(items[~in_test & ~is_new])
    events = Events(
        torch.as_tensor(users),
        torch.as_tensor(items),
        torch.as_tensor(labels),
        torch.as_tensor(history),
    )
    return Split(
        events=events,
        side=side_features(ml),
        new_items=new_items,
        train=np.flatnonzero(~in_test & ~is_new),
        test=np.flatnonzero(in_test),
        test_new=np.flatnonzero(in_test & is_new),
        test_warm=np.flatnonzero(in_test & np.isin(items, trained_items)),
        test_new_after_warmup=np.flatnonzero(in_test & is_new & (test_rank >= warmup_k)),
        n_users=max(ml.user_age),
        n_items=max(ml.item_title),
        protocol=protocol,
    )
