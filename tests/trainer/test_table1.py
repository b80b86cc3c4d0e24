"""Table-1 ranker, protocol and metrics on tiny inputs."""

from __future__ import annotations

import json

import numpy as np
import torch

from idproxy.settings import Settings
from trainer.content import synthetic_content
from trainer.data import SideFeatures, build_histories
from trainer.metrics import auc, gauc, logloss
from trainer.ranker import Ranker, RankerShape
from trainer.table1 import item_tables
from trainer.variants import VARIANTS, VariantConfig

N_USERS, N_ITEMS, D = 5, 12, 8


def tiny_ranker(variant: VariantConfig) -> Ranker:
    side = SideFeatures(
        user_cat=torch.zeros(N_USERS + 1, 3, dtype=torch.long),
        item_genres=torch.zeros(N_ITEMS + 1, 4),
        item_year=torch.zeros(N_ITEMS + 1, dtype=torch.long),
        cardinalities=(7, 2, 3, 10),
    )
    tables = item_tables(synthetic_content(N_ITEMS, 6, D, seed=1), N_ITEMS)
    tables.cb2cf = torch.zeros(N_ITEMS + 1, D)
    shape = RankerShape(N_USERS, N_ITEMS, D, 4, 1, 8, (8,), 8)
    torch.manual_seed(0)
    return Ranker(shape, variant, side, tables)


def test_id_slot_is_the_one_function_for_target_and_history(monkeypatch) -> None:
    model = tiny_ranker(VARIANTS[5])
    seen: list[tuple[int, ...]] = []
    original = Ranker.item_slot

    def spy(self, items, fine):
        seen.append(tuple(items.shape))
        return original(self, items, fine)

    monkeypatch.setattr(Ranker, "item_slot", spy)
    model(torch.tensor([1, 2]), torch.tensor([3, 4]), torch.tensor([[5, 6, 0], [7, 0, 0]]))
    assert seen == [(2,), (2, 3)]


def test_fine_proxy_reaches_the_attention_gradient() -> None:
    """Only the history slot differs between the two calls; φ̃ gets a gradient through it."""
    model = tiny_ranker(VARIANTS[5])
    users, items = torch.tensor([1, 2]), torch.tensor([3, 4])
    hist = torch.tensor([[5, 6], [7, 8]])
    # the part of the logit that depends on history goes through attention only
    diff = model(users, items, hist) - model(users, items, torch.zeros_like(hist))
    diff.sum().backward()
    assert model.fine_head is not None
    grad = model.fine_head.adaptor[0].weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert model.attention.score[0].weight.grad.abs().sum() > 0


def test_history_has_only_strictly_earlier_clicks_and_no_excluded_items() -> None:
    users = np.array([1, 1, 1, 1, 2])
    items = np.array([10, 11, 12, 13, 10])
    labels = np.array([1, 1, 1, 0, 1])
    stamps = np.array([1, 2, 2, 3, 4])
    h = build_histories(users, items, labels, stamps, excluded={11}, length=3)
    assert h[0].tolist() == [0, 0, 0]
    assert h[1].tolist() == [10, 0, 0]
    assert h[2].tolist() == [10, 0, 0]  # same timestamp as 11: not "before"
    assert h[3].tolist() == [12, 10, 0]  # 11 is excluded (a new item)
    assert h[4].tolist() == [0, 0, 0]  # other users' clicks never leak in


def test_new_items_absent_from_training_and_histories() -> None:
    from trainer.data import make_split
    from trainer.movielens import load_movielens

    split = make_split(
        load_movielens(),
        seed=3,
        history_len=5,
        new_item_fraction=0.2,
        test_fraction=0.2,
        warmup_k=2,
        max_events=3000,
    )
    new = torch.as_tensor(split.new_items)
    train = split.events.subset(split.train)
    assert not torch.isin(train.item, new).any()
    assert not torch.isin(split.events.history, new).any()
    assert len(split.test_new) > 0
    test_new_items = split.events.item[torch.as_tensor(split.test_new)]
    assert torch.isin(test_new_items, new).all()
    assert set(split.test_new_after_warmup) <= set(split.test_new)
    assert not set(split.warmup) & set(split.test_new_after_warmup)


def test_untrained_new_item_rows_stay_at_init_after_training() -> None:
    from trainer.data import Events
    from trainer.table1 import train_epochs

    model = tiny_ranker(VARIANTS[0])
    before = model.item_emb.weight.detach().clone()
    ev = Events(
        torch.tensor([1, 2, 3, 4]),
        torch.tensor([1, 2, 1, 2]),
        torch.tensor([1.0, 0.0, 0.0, 1.0]),
        torch.tensor([[2, 0], [1, 0], [0, 0], [1, 2]]),
    )
    train_epochs(model, ev, Settings(), epochs=1, seed=0)
    after = model.item_emb.weight.detach()
    assert torch.equal(before[3:], after[3:])
    assert not torch.equal(before[1:3], after[1:3])


def test_auc_by_hand_with_ties() -> None:
    # pairs (pos, neg): (0.8,0.2)=1 (0.8,0.5)=1 (0.5,0.2)=1 (0.5,0.5)=0.5 -> 3.5/4
    assert auc(np.array([1, 1, 0, 0]), np.array([0.8, 0.5, 0.5, 0.2])) == 0.875
    assert auc(np.array([0, 1]), np.array([0.9, 0.1])) == 0.0
    assert np.isnan(auc(np.array([1, 1]), np.array([0.1, 0.2])))


def test_gauc_weights_users_by_impressions_and_skips_one_class_users() -> None:
    users = np.array([1, 1, 1, 2, 2, 3])
    labels = np.array([1, 0, 0, 1, 0, 1])
    scores = np.array([0.9, 0.1, 0.95, 0.2, 0.8, 0.5])
    # user 1: pos 0.9 vs negs 0.1, 0.95 -> 0.5 (3 impressions); user 2: 0.0 (2); user 3 skipped
    assert gauc(users, labels, scores) == (0.5 * 3 + 0.0 * 2) / 5


def test_logloss_by_hand() -> None:
    assert np.isclose(logloss(np.array([1, 0]), np.array([0.5, 0.5])), np.log(2))


def test_bench_table1_quick_end_to_end(tmp_path, capsys) -> None:
    import argparse

    from benchmarks import bench_table1

    settings = Settings(run_dir=str(tmp_path))
    settings.trainer.quick_events = 1500
    settings.trainer.threads = 1
    bench_table1.run(argparse.Namespace(quick=True, seeds=1), settings)
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["bench"] == "table1" and set(last["auc_new"]) == {v.name for v in VARIANTS}
    run_dir = tmp_path / last["run_dir"].split("/")[-1]
    assert (run_dir / "table1.json").is_file() and (run_dir / "table1.png").is_file()
