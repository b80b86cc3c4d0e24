"""Table-1 data protocol on MovieLens-100K: features, no-leak histories, cold-item split.

Protocol (docs/BENCHMARKS.md): events are time-ordered; the first ``1 - test_fraction`` of
them form the training period and the rest the test period. A seeded ``new_item_fraction``
of items is "new": none of their events is trained on and they never enter a history
before evaluation, so their ID rows stay at their initial values. Warm-up: the first
``warmup_k`` events of each new item (in time) are trained on, then its later test events
are evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trainer.movielens import MovieLens


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
    test: np.ndarray  # all test-period events
    test_new: np.ndarray  # test-period events of new items
    warmup: np.ndarray  # first k events of each new item
    test_new_after_warmup: np.ndarray  # test-period events of new items after their k-th
    n_users: int
    n_items: int


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


def make_split(
    ml: MovieLens,
    *,
    seed: int,
    history_len: int,
    new_item_fraction: float,
    test_fraction: float,
    warmup_k: int,
    max_events: int | None = None,
) -> Split:
    """The Table-1 split for one seed (the new-item set is drawn from ``seed``)."""
    n = len(ml.users) if max_events is None else min(max_events, len(ml.users))
    users, items = ml.users[:n], ml.items[:n]
    labels, stamps = ml.labels[:n], ml.timestamps[:n]
    rng = np.random.default_rng(seed)
    all_items = np.unique(items)
    new_items = np.sort(
        rng.choice(all_items, size=int(round(new_item_fraction * len(all_items))), replace=False)
    )
    is_new = np.isin(items, new_items)
    history = build_histories(users, items, labels, stamps, set(new_items.tolist()), history_len)
    cut = int(n * (1 - test_fraction))
    in_test = np.arange(n) >= cut
    rank_in_item = np.zeros(n, dtype=np.int64)
    seen: dict[int, int] = {}
    for k, i in enumerate(items):
        rank_in_item[k] = seen.get(int(i), 0)
        seen[int(i)] = rank_in_item[k] + 1
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
        warmup=np.flatnonzero(is_new & (rank_in_item < warmup_k)),
        test_new_after_warmup=np.flatnonzero(in_test & is_new & (rank_in_item >= warmup_k)),
        n_users=max(ml.user_age),
        n_items=max(ml.item_title),
    )
