"""The online trainer's state: a new :class:`TrainerCore` (a fresh model, warm-started from
the latest bundle's fine head), or one restored from a checkpoint, and the manifest a
checkpoint stores beside its tensors.

Kafka-free: the consume loop (``trainer/online.py``) seeks its consumer to the offsets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from idproxy.settings import Settings
from trainer.checkpoint import Predictions, load_optimizer, model_state
from trainer.item_cache import ItemCache
from trainer.online_core import TrainerCore, attach_optimizer, fit_fine_normaliser
from trainer.online_model import OnlineRanker, OnlineShape, Variant

log = logging.getLogger(__name__)


def fresh_shape(
    settings: Settings, variant: Variant, dims: tuple[int, int] | None, fine: dict | None
) -> OnlineShape:
    """The shape of a new model. ``dims``: (LM hidden size D, layer groups G) of the item
    features (idproxy only); ``fine``: a bundle's fine-head state, whose adaptor width wins."""
    t, m = settings.trainer, settings.model
    base = dict(
        dim=m.id_dim,
        cross_layers=t.cross_layers,
        attention_hidden=t.attention_hidden,
        mlp_hidden=tuple(t.mlp_hidden),
        initial_rows=t.initial_rows,
        id_init_std=t.id_init_std,
        adaptor_hidden=m.adaptor_hidden,
    )
    if variant == "id-only":
        return OnlineShape(**base)
    hidden, groups = dims or (1, 1)
    if fine is not None:
        base["adaptor_hidden"] = fine["adaptor.0.weight"].shape[0]
    return OnlineShape(**base, hidden_size=hidden, n_groups=groups, fine_input=t.online_fine_input)


def new_core(
    settings: Settings,
    variant: Variant,
    shape: OnlineShape,
    fine: dict | None,
    cache: ItemCache,
    reject: Callable[[object, str], None] | None = None,
) -> TrainerCore:
    """A fresh model (its fine head from ``fine`` when given; its feature normaliser
    fitted on the cached items) with its optimiser."""
    t = settings.trainer
    model = OnlineRanker(shape, variant, seed=t.online_seed)
    if fine is not None:
        model.fine_head.load_state_dict(fine)
    fitted = fit_fine_normaliser(model, cache)
    if fitted:
        log.info("fine-head feature normaliser fitted on %d items", fitted)
    optimizer = attach_optimizer(model, t.online_lr, t.online_adaptor_lr_scale)
    return TrainerCore(settings, model, optimizer, cache, reject=reject)


def restore_core(
    settings: Settings,
    variant: Variant,
    tensors: dict[str, torch.Tensor],
    manifest: dict,
    folder: Path,
    cache: ItemCache,
    reject: Callable[[object, str], None] | None = None,
) -> TrainerCore:
    """The core a checkpoint holds: model, tables, optimiser, counters, predictions and
    the next offset of every partition (``core.offsets``)."""
    t = settings.trainer
    shape = OnlineShape(
        **{**manifest["shape"], "mlp_hidden": tuple(manifest["shape"]["mlp_hidden"])}
    )
    model = OnlineRanker(shape, variant, seed=t.online_seed)
    state = model_state(tensors)
    for name, table in (("user_table", model.user_table), ("item_table", model.item_table)):
        table.restore(manifest[f"{name}_ids"], state[f"{name}.weight"], state[f"{name}.counts"])
    model.load_state_dict(state)
    optimizer = attach_optimizer(model, t.online_lr, t.online_adaptor_lr_scale)
    load_optimizer(optimizer, tensors, manifest["opt_groups"])
    core = TrainerCore(
        settings, model, optimizer, cache, manifest["recent_sample_keys"], reject=reject
    )
    core.samples, core.batches = manifest["samples"], manifest["batches"]
    core.new_samples = manifest["new_samples"]
    core.predictions = Predictions.load(folder / "predictions.npz")
    core.refill_windows()
    core.offsets = {int(p): o for p, o in manifest["offsets"].items()}
    return core


def checkpoint_manifest(
    core: TrainerCore, *, variant: Variant, topic: str, checkpoints: int, proxy_version: str | None
) -> dict:
    """What a checkpoint stores beside the tensors (``checkpoints``: its own number)."""
    from dataclasses import asdict

    return {
        "variant": variant,
        "shape": asdict(core.model.shape),
        "topic": topic,
        "offsets": {str(p): o for p, o in core.offsets.items()},
        "samples": core.samples,
        "new_samples": core.new_samples,
        "batches": core.batches,
        "checkpoints": checkpoints,
        "user_table_ids": core.model.user_table.ids,  # int64 ids (id_hash), in row order
        "item_table_ids": core.model.item_table.ids,
        "recent_sample_keys": core.recent_keys,
        "proxy_version": proxy_version,
    }
