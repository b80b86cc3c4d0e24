"""Unit tests of the online trainer's parts: growing tables, checkpoints, the ranker step."""

from __future__ import annotations

import ast
import pathlib
from collections import namedtuple

import numpy as np
import torch

from idproxy.settings import Settings
from tests.online.synthetic import Sample, frame, sample_messages, samples
from trainer.checkpoint import CheckpointDir, Predictions, load_optimizer, model_state
from trainer.growing_embedding import GrowingEmbedding
from trainer.item_cache import ItemCache
from trainer.online_core import BatchBuilder, TrainerCore, attach_optimizer, train_step
from trainer.online_model import Batch, OnlineRanker, OnlineShape
from trainer.sample_decoder import SampleDecoder


def test_growing_keeps_rows_stable():
    t = GrowingEmbedding(dim=4, capacity=2, seed=3)
    t.rows(np.array([-7]))
    before = t.weight.detach()[1].clone()
    assert t.rows(np.arange(100, 200)).tolist() == list(range(2, 102))  # doubles 6 times
    assert t.capacity == 128 and t.n_ids == 101
    assert torch.equal(t.weight.detach()[1], before)
    assert t.rows(np.array([-7, 199, 0])).tolist() == [1, 101, 0] and t.n_ids == 101
    assert torch.equal(t(torch.tensor([0])), torch.zeros(1, 4))  # padding row


def test_growth_is_deterministic():
    a, b = GrowingEmbedding(4, 2, seed=1), GrowingEmbedding(4, 2, seed=1)
    a.rows(np.arange(1, 11))
    b.rows(np.arange(1, 6))
    b.rows(np.arange(6, 11))
    assert torch.equal(a.weight, b.weight)


SETTINGS = Settings(trainer={"history_len": 5})


def _model(variant: str) -> tuple[OnlineRanker, BatchBuilder]:
    shape = OnlineShape(dim=8, hidden_size=6, n_groups=3, adaptor_hidden=8, initial_rows=4)
    model = OnlineRanker(shape, variant, seed=0)
    cache = ItemCache(dims=(6, 3))
    return model, BatchBuilder(model, cache)


def _batch(builder: BatchBuilder, data: list[Sample]) -> Batch:
    """The samples (one frame) as a Batch, rows from the builder's model tables."""
    decoder = SampleDecoder.from_settings(SETTINGS.trainer)
    return builder.build(decoder.decode([frame(data)]))


def test_train_step_grows_tables_and_keeps_optimizer_state():
    model, builder = _model("id-only")
    opt = attach_optimizer(model, 1e-2)
    data = samples(64, n_users=10, n_items=30)
    for k in range(0, 64, 16):
        probs = train_step(model, opt, _batch(builder, data[k : k + 16]))
        assert probs.shape == (16,) and torch.all((probs > 0) & (probs < 1))
    params = [p for g in opt.param_groups for p in g["params"]]
    assert model.item_table.capacity >= 31
    assert any(p is model.item_table.weight for p in params)
    assert any(p is model.user_table.weight for p in params)
    state = opt.sparse.state[model.item_table.weight]  # the ID tables: row-sparse Adam
    assert state["exp_avg"].shape == model.item_table.weight.shape
    assert int(model.item_table.counts.sum()) > 0


def test_row_sparse_adam_moves_only_the_rows_in_the_batch():
    model, builder = _model("id-only")
    opt = attach_optimizer(model, 1e-2)
    data = samples(64, n_users=10, n_items=30)
    train_step(model, opt, _batch(builder, data[:32]))  # momentum for the rows of batch 1
    batch = _batch(builder, data[32:33])
    used = set(torch.cat([batch.items, batch.history.flatten()]).tolist()) - {0}
    before = model.item_table.weight.detach().clone()
    train_step(model, opt, batch)
    moved = (model.item_table.weight.detach() != before).any(dim=1).nonzero().flatten()
    assert set(moved.tolist()) == used  # rows with momentum but not in the batch stay still


def test_idproxy_ranker_starts_as_the_id_only_ranker():
    """The fusion's content maps start at zero: same seed, same logits as id-only."""
    import numpy as np

    from benchmarks.bench_trainer import filled_cache

    idp, _ = _model("idproxy")
    ido, builder_o = _model("id-only")
    rng = np.random.default_rng(0)
    ids = [str(k) for k in range(1, 11)]
    z_groups = rng.standard_normal((10, 3, 6)).astype(np.float32)
    p_coarse = rng.standard_normal((10, 8)).astype(np.float32)
    builder = BatchBuilder(idp, filled_cache(ids, z_groups.mean(1), z_groups, p_coarse))
    data = samples(16, 5, 10)
    batch = _batch(builder, data)
    assert batch.has_proxy.any()
    assert torch.allclose(idp(batch), ido(_batch(builder_o, data)))


def test_idproxy_slot_gets_gradient_into_the_fine_head():
    model, builder = _model("idproxy")
    builder.cache.items.clear()
    opt = attach_optimizer(model, 1e-2)
    batch = _batch(builder, samples(16, 5, 10))
    assert batch.has_proxy is not None and not batch.has_proxy.any()  # all misses: zeros
    before = model.fine_head.adaptor[0].weight.detach().clone()
    train_step(model, opt, batch)
    # misses contribute zeros, so the adaptor gets no gradient from them
    assert torch.equal(before, model.fine_head.adaptor[0].weight.detach())


def test_checkpoint_round_trip(tmp_path):
    model, builder = _model("idproxy")
    opt = attach_optimizer(model, 1e-2)
    data = samples(48, 8, 20)
    for k in range(0, 48, 16):
        train_step(model, opt, _batch(builder, data[k : k + 16]))
    preds = Predictions([0.5, 0.25], [1, 0], [True, False], [1.0, 2.0])
    ckpts = CheckpointDir(tmp_path, keep=2)
    manifest = {"item_ids": model.item_table.ids, "offsets": {"0": 48}}
    for v in ("ckpt-1", "ckpt-2", "ckpt-3"):
        ckpts.save(v, model, opt, manifest, preds)
    assert ckpts.latest() == "ckpt-3"
    assert sorted(p.name for p in ckpts.root.iterdir() if p.is_dir()) == ["ckpt-2", "ckpt-3"]

    tensors, loaded, folder = ckpts.load()
    assert loaded["offsets"] == {"0": 48} and loaded["version"] == "ckpt-3"
    state = model_state(tensors)
    clone, _ = _model("idproxy")
    for name in ("user_table", "item_table"):
        table = getattr(model, name)
        getattr(clone, name).restore(table.ids, state[f"{name}.weight"], state[f"{name}.counts"])
    clone.load_state_dict(state)
    clone_opt = attach_optimizer(clone, 1e-2)
    load_optimizer(clone_opt, tensors, loaded["opt_groups"])
    for (k, a), b in zip(model.state_dict().items(), clone.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    # one more identical step on both gives identical parameters (optimizer state restored)
    more = samples(16, 8, 20, seed=1)
    train_step(model, opt, _batch(builder, more))
    train_step(clone, clone_opt, _batch(BatchBuilder(clone, builder.cache), more))
    for a, b in zip(model.parameters(), clone.parameters(), strict=True):
        assert torch.equal(a, b)
    restored = Predictions.load(folder / "predictions.npz").arrays()
    assert restored["score"].tolist() == [0.5, 0.25] and restored["is_new"].tolist() == [1, 0]


def test_no_pickle_in_trainer_modules():
    """No pickle import, and torch.load only with weights_only=True."""
    root = pathlib.Path(__file__).resolve().parents[2] / "trainer"
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any("pickle" in n for n in names), path
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("torch.load"):
                kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
                assert kw.get("weights_only") == "True", path


def test_item_cache_takes_reproxy_records_only_for_items_it_has_no_coarse_proxy_for():
    from types import SimpleNamespace

    import numpy as np

    from trainer.item_cache import ItemCache

    def header(version: str, at: float):
        return SimpleNamespace(proxy_version=version, produced_at=at)

    cache = ItemCache()
    realigned = np.full(4, 1.0, np.float32)
    cache.put_proxy("a", header("proxy-realign", 10.0), {"p_coarse": realigned})
    stale = np.full(4, 9.0, np.float32)  # a later re-proxy record of an older coarse head
    cache.put_proxy("a", header("reproxy-ckpt-1", 11.0), {"p_coarse": stale})
    assert cache.items["a"].p_coarse.tolist() == realigned.tolist()
    # a new upload the worker proxied under the re-proxy version it reloaded
    fresh = np.full(4, 2.0, np.float32)
    cache.put_proxy("b", header("reproxy-ckpt-1", 12.0), {"p_coarse": fresh})
    assert cache.items["b"].p_coarse.tolist() == fresh.tolist()


def test_trainer_core_rejects_bad_records_drops_repeats_and_moves_past_both():
    Record = namedtuple("Record", "value partition offset")
    model, builder = _model("id-only")
    rejected = []
    core = TrainerCore(
        SETTINGS,
        model,
        attach_optimizer(model, 1e-2),
        builder.cache,
        reject=lambda message, reason: rejected.append((message.offset, reason)),
    )
    good = [value for _, value in sample_messages(samples(20, n_users=5, n_items=8), 4)]
    bad = [b"not json", b"\xff{", b"IDPF\0\0\0\0", None]
    values = good[:3] + bad + good[3:] + good[:2]  # the last 2 records repeat 8 samples
    trained = core.process([Record(v, 0, k) for k, v in enumerate(values)])
    assert trained == 20 and core.samples == 20 and core.batches == 1
    assert [offset for offset, _ in rejected] == [3, 4, 5, 6] and core.rejected == 4
    assert all(reason for _, reason in rejected)
    assert core.offsets == {0: len(values)}  # the next offset is past the bad and the repeats
    assert int(model.item_table.counts.sum()) > 0
    assert core.recent_keys == list(range(20))
    assert core.process([Record(good[0], 0, 11)]) == 0 and core.consumed == 2
