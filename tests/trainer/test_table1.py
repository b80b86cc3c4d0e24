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
    tables.base_id = torch.nn.functional.normalize(torch.randn(N_ITEMS + 1, D), dim=-1)
    tables.base_trained = torch.arange(N_ITEMS + 1) % 2 == 1
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
    """Only the history slot differs between the two calls; φ̃ gets a gradient through it.

    At initialisation A_k = 0 closes the content path, so φ̃'s gradient is zero and only
    A_k's opens it; with A_k non-zero (as after training) φ̃ gets one through attention.
    """
    model = tiny_ranker(VARIANTS[5])
    assert model.fusion is not None
    users, items = torch.tensor([1, 2]), torch.tensor([3, 4])
    hist = torch.tensor([[5, 6], [7, 8]])
    (model(users, items, hist) - model(users, items, torch.zeros_like(hist))).sum().backward()
    assert model.fusion.maps.grad is not None and model.fusion.maps.grad.abs().sum() > 0
    model.zero_grad()
    with torch.no_grad():
        model.fusion.maps.normal_()
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
    from idproxy.movielens import load_movielens
    from trainer.data import make_split

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
    # the warm slice: test events of items with training events, disjoint from new ones
    trained = set(split.events.item[torch.as_tensor(split.train)].tolist())
    assert set(split.events.item[torch.as_tensor(split.test_warm)].tolist()) <= trained
    assert not set(split.test_warm) & set(split.test_new)
    # after warm-up = at least warmup_k earlier test-period events of the same item
    for k in split.test_new_after_warmup:
        i = split.events.item[k]
        earlier = [j for j in split.test if j < k and split.events.item[j] == i]
        assert len(earlier) >= 2


def test_time_protocol_cold_items_appear_later_than_warm_ones() -> None:
    from idproxy.movielens import load_movielens
    from trainer.data import make_split

    ml = load_movielens()
    kw = dict(history_len=5, new_item_fraction=0.2, test_fraction=0.2, warmup_k=2)
    split = make_split(ml, seed=0, max_events=5000, protocol="time", **kw)
    items = ml.items[:5000]
    all_items, first = np.unique(items, return_index=True)
    cold = np.isin(all_items, split.new_items)
    assert cold.sum() == round(0.2 * len(all_items))
    assert first[cold].min() >= first[~cold].max()
    # the same cold set for every seed; the random protocol's differs per seed
    again = make_split(ml, seed=1, max_events=5000, protocol="time", **kw)
    assert np.array_equal(split.new_items, again.new_items)
    r0 = make_split(ml, seed=0, max_events=5000, protocol="random", **kw).new_items
    r1 = make_split(ml, seed=1, max_events=5000, protocol="random", **kw).new_items
    assert not np.array_equal(r0, r1)


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
    assert model.item_emb.sparse and model.user_emb.sparse


def test_update_counts_are_the_steps_that_touched_each_item_row() -> None:
    from trainer.data import Events
    from trainer.table1 import train_epochs

    model = tiny_ranker(VARIANTS[5])
    ev = Events(
        torch.tensor([1, 2, 3]),
        torch.tensor([1, 2, 1]),
        torch.tensor([1.0, 0.0, 1.0]),
        torch.tensor([[3, 0], [0, 0], [4, 3]]),
    )
    settings = Settings()
    settings.trainer.batch_size = 1  # one event per step
    train_epochs(model, ev, settings, epochs=2, seed=0)
    # per epoch: item 1 in two steps, 2 in one, 3 in two (histories), 4 in one; 0 = padding
    assert model.updates.tolist()[:6] == [0, 4, 2, 4, 2, 0]
    assert model.warm.tolist()[:5] == [False, True, True, False, False]  # targets only


def test_fusion_variants_start_exactly_as_base() -> None:
    """A_k = 0 and the shared layers built first: same seed, same logits as Base."""
    users, items = torch.tensor([1, 2, 3]), torch.tensor([3, 4, 12])
    hist = torch.tensor([[5, 6, 0], [7, 0, 0], [1, 2, 3]])
    base = tiny_ranker(VARIANTS[0]).eval()
    for variant in VARIANTS:
        if variant.n_slot_proxies:
            model = tiny_ranker(variant).eval()
            assert model.fusion is not None
            assert torch.equal(model(users, items, hist), base(users, items, hist)), variant.name


def test_distillation_control_uses_base_rows_and_no_content() -> None:
    from trainer.table1 import control_tables

    control = next(v for v in VARIANTS if v.slot_base_id)
    assert not (control.slot_coarse or control.slot_fine or control.feat_frozen)
    base = tiny_ranker(VARIANTS[0])
    base.updates[torch.tensor([1, 2, 5])] = 3
    tables = item_tables(synthetic_content(N_ITEMS, 6, D, seed=1), N_ITEMS)
    control_tables(base, tables)
    assert tables.base_trained is not None and tables.base_id is not None
    assert tables.base_trained.nonzero().flatten().tolist() == [1, 2, 5]
    expected = torch.nn.functional.normalize(base.item_emb.weight.detach()[1], dim=0)
    assert torch.allclose(tables.base_id[1], expected)
    assert torch.equal(tables.base_id[3], torch.zeros(D))
    model = tiny_ranker(control)
    model.base_id.copy_(tables.base_id)
    proxies = model.slot_proxies(torch.tensor([1, 2]), None)
    assert proxies.shape == (2, 1, D) and torch.allclose(proxies[:, 0], tables.base_id[1:3])


def test_prequential_never_trains_on_an_event_later_than_one_it_scores(monkeypatch) -> None:
    """Events carry their index as user id; the spy records every score and train call."""
    from idproxy.movielens import load_movielens
    from trainer import table1
    from trainer.data import Events, make_split

    split = make_split(
        load_movielens(),
        seed=0,
        history_len=3,
        new_item_fraction=0.2,
        test_fraction=0.3,
        warmup_k=1,
        max_events=600,
    )
    n = len(split.events)
    ev = split.events
    split.events = Events(torch.arange(1, n + 1), ev.item, ev.label, ev.history)
    split.n_users = n
    split.side = SideFeatures(
        user_cat=torch.zeros(n + 1, 3, dtype=torch.long),
        item_genres=split.side.item_genres,
        item_year=split.side.item_year,
        cardinalities=split.side.cardinalities,
    )
    settings = Settings()
    settings.trainer.prequential_chunks = 4
    tables = item_tables(
        synthetic_content(split.n_items, 6, settings.model.id_dim, seed=1), split.n_items
    )
    model = Ranker(table1.shape_of(settings, split), VARIANTS[5], split.side, tables)
    calls: list[tuple[str, list[int]]] = []
    real_predict, real_train = table1.predict, table1.train_epochs

    def spy_predict(m, events, *a, **k):
        calls.append(("score", (events.user - 1).tolist()))
        return real_predict(m, events, *a, **k)

    def spy_train(m, events, *a, **k):
        calls.append(("train", (events.user - 1).tolist()))
        return real_train(m, events, *a, **k)

    monkeypatch.setattr(table1, "predict", spy_predict)
    monkeypatch.setattr(table1, "train_epochs", spy_train)
    scores = table1.prequential(model, split, settings, seed=0)
    assert len(scores) == len(split.test) and np.isfinite(scores).all()
    trained: list[int] = []
    for kind, idx in calls:
        if kind == "score":
            assert not trained or max(trained) < min(idx)
        else:
            trained += idx
    scored = [i for kind, idx in calls if kind == "score" for i in idx]
    assert scored == split.test.tolist() and sorted(trained) == split.test.tolist()
    assert sum(kind == "score" for kind, _ in calls) == 4


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
    names = {v.name for v in VARIANTS}
    assert last["bench"] == "table1" and set(last["auc_new"]) == names
    assert last["protocols"] == ["random", "time"]
    for key in ("auc_new", "auc_warm", "delta_new", "delta_warm", "delta_new_time"):
        assert set(last[key]) == names, key
    for key in ("delta_new_std", "delta_new_wins", "delta_warm_std", "delta_new_time_std"):
        assert set(last[key]) == names, key
    assert last["delta_new"]["Base"] == 0.0 and last["delta_new_time"]["Base"] == 0.0
    run_dir = tmp_path / last["run_dir"].split("/")[-1]
    assert (run_dir / "table1.json").is_file() and (run_dir / "table1.png").is_file()


def test_first_token_is_masked_out_of_pooling_without_touching_the_cache() -> None:
    from proxy_model.features import ContentFeaturizer, TokenStates
    from trainer.content import without_first_token

    states = TokenStates.random(4, 6, 8, seed=0)
    masked = without_first_token(states)
    assert masked.mask[:, 0].sum() == 0 and torch.equal(masked.mask[:, 1:], states.mask[:, 1:])
    assert states.mask[:, 0].all()  # the cached states are not modified
    featurizer = ContentFeaturizer(None, states.layer_groups, hidden_size=8)
    spiked = without_first_token(
        TokenStates(
            states.item_ids,
            states.last.clone().index_fill_(1, torch.tensor([0]), 1000.0),
            states.groups,
            states.mask,
            states.layer_groups,
        )
    )
    a = featurizer.pool(*masked.rows(torch.arange(4))).frozen
    b = featurizer.pool(*spiked.rows(torch.arange(4))).frozen
    assert torch.allclose(a, b)  # the first token's states no longer matter
