"""The Kafka-free part of the online Stage-2 trainer: decoded samples -> batch -> the
prequential score -> one optimiser step, and the windowed metrics of those scores.

Used by the online trainer's consume loop (``trainer/online.py``), ``idproxy bench online``
and ``idproxy bench trainer``: the code measured offline is the code that runs live.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from idproxy.settings import Settings
from streams.sample_batch import id_hashes
from trainer.checkpoint import Predictions
from trainer.item_cache import ItemCache
from trainer.online_model import Batch, OnlineRanker
from trainer.optim import RowSparseAdam
from trainer.sample_decoder import DecodedBatch, SampleDecoder
from trainer.streaming_metrics import WindowedAUC

log = logging.getLogger(__name__)


class BatchBuilder:
    """:class:`DecodedBatch` -> :class:`Batch`: ids -> table rows (the tables grow), and
    the cached content of the batch's items.

    The user and item ids take their rows from the model's tables in two calls
    (``GrowingEmbedding.rows``): the users, then the targets followed by the history ids, so
    new ids get rows in that fixed order. Content is mirrored in tensors aligned with the
    item table's rows (p_coarse [R, d], z_groups [R, G, D], has [R]), refreshed from the
    cache's change log before each batch, so a batch gathers its distinct items with one
    index_select.
    """

    def __init__(self, model: OnlineRanker, cache: ItemCache) -> None:
        self.model = model
        self.cache = cache
        self.synced_rows = 0  # rows 1..synced_rows have been filled
        self.cursor = 0  # position in cache.changes
        if model.variant == "idproxy":
            s = model.shape
            self.pc = torch.zeros(0, s.dim)
            self.zg = torch.zeros(0, s.n_groups, s.hidden_size)
            self.has = torch.zeros(0, dtype=torch.bool)

    def _sync(self) -> None:
        table, cache = self.model.item_table, self.cache
        if len(self.has) < table.capacity:
            extra = table.capacity - len(self.has)
            self.pc = torch.cat([self.pc, self.pc.new_zeros(extra, *self.pc.shape[1:])])
            self.zg = torch.cat([self.zg, self.zg.new_zeros(extra, *self.zg.shape[1:])])
            self.has = torch.cat([self.has, self.has.new_zeros(extra)])
        rows = set(range(self.synced_rows + 1, table.n_ids + 1))
        changed = cache.changes[self.cursor :]
        if changed:
            found = table.index.find(id_hashes(changed))
            rows.update(found[found > 0].tolist())
        self.cursor, self.synced_rows = len(cache.changes), table.n_ids
        ids = table.index.ids
        for row in rows:
            item = cache.item_of(int(ids[row - 1]))
            if item is not None and cache.ready(item):
                c = cache.items[item]
                self.pc[row] = torch.from_numpy(c.p_coarse)
                self.zg[row] = torch.from_numpy(c.z_groups)
                self.has[row] = True

    def build(self, decoded: DecodedBatch) -> Batch:
        m = self.model
        n = len(decoded)
        users = m.user_table.rows(decoded.users)
        rows = m.item_table.rows(np.concatenate([decoded.items, decoded.history.ravel()]))
        items = torch.from_numpy(rows[:n])
        history = torch.from_numpy(rows[n:].reshape(decoded.history.shape))
        batch = Batch(torch.from_numpy(users), items, history, torch.from_numpy(decoded.labels))
        if m.variant == "idproxy":
            self._sync()
            both = torch.cat([items[:, None], history], dim=1)
            uniq, inverse = torch.unique(both, return_inverse=True)
            batch.content_index = inverse
            batch.p_coarse = self.pc[uniq]
            batch.z_groups = self.zg[uniq]
            batch.has_proxy = self.has[uniq]
        return batch


def train_step(model: OnlineRanker, optimizer: torch.optim.Optimizer, batch: Batch) -> torch.Tensor:
    """Forward (the prequential scores), BCE, backward, step -> probabilities [B]."""
    logits = model(batch)
    loss = F.binary_cross_entropy_with_logits(logits, batch.labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    model.user_table.count(batch.users)
    model.item_table.count(batch.items, batch.history)
    return torch.sigmoid(logits.detach())


def attach_optimizer(
    model: OnlineRanker, lr: float, adaptor_lr_scale: float = 1.0
) -> RowSparseAdam:
    """Row-sparse Adam on the ID tables, Adam on the rest; a growing table swaps its
    parameter and pads the state (``RowSparseAdam.replace_param``).

    The fine head (adaptor φ̃ and gate W_g, W_c) gets its own group with learning rate
    ``lr * adaptor_lr_scale`` (0 freezes it). The paper gives no learning rates. At the
    ranker's rate, the adaptor (~220k weights on 3×576 LM features, against 32-d ID rows)
    fits per-item noise; ``idproxy bench online --adaptor-lr-scale`` measures the choice
    (docs/TRAINER.md).
    """
    tables = [model.user_table.weight, model.item_table.weight]
    fine = list(model.fine_head.parameters()) if model.variant == "idproxy" else []
    skip = {id(p) for p in fine + tables}
    groups = [{"params": [p for p in model.parameters() if id(p) not in skip]}]
    if fine:
        groups.append({"params": fine, "lr": lr * adaptor_lr_scale})
    optimizer = RowSparseAdam(groups, tables, lr=lr)
    model.user_table.on_grow.append(optimizer.replace_param)
    model.item_table.on_grow.append(optimizer.replace_param)
    return optimizer


@torch.no_grad()
def fit_fine_normaliser(
    model: OnlineRanker, cache: ItemCache, items: Sequence[str] | None = None
) -> int:
    """Fits the fine head's feature normaliser on the cached z_groups of ``items`` (default:
    every item with features), unless it is fitted already (a bundle's or a checkpoint's);
    returns the number of items it was fitted on (0 = left as it was)."""
    if model.variant != "idproxy" or bool(model.fine_head.normaliser.fitted):
        return 0
    ids = [i for i in (items if items is not None else cache.items) if cache.ready(i)]
    if len(ids) < 2:
        return 0
    _, z_groups, _ = cache.gather(ids, model.shape.dim)
    model.fine_head.normaliser.fit(z_groups)
    return len(ids)


class TrainerCore:
    """The Kafka-free part of the loop: decode, de-duplicate, score, train, keep metrics.

    Records have ``.value``, ``.partition``, ``.offset``. ``process(records)`` decodes them
    (:class:`SampleDecoder`: a record that does not decode goes to ``reject(record,
    reason)``, the trainer's dead-letter sink; repeated sample keys are dropped) and trains
    the kept samples as one batch; it returns the samples trained. ``recent_keys``: the
    sample keys a restored trainer had seen (for de-duplication).
    """

    def __init__(
        self,
        settings: Settings,
        model: OnlineRanker,
        optimizer,
        cache: ItemCache,
        recent_keys: Iterable[int] = (),
        reject: Callable[[object, str], None] | None = None,
    ):
        t = settings.trainer
        self.on_reject = reject  # (record, reason) for a malformed record; default: logged
        self.settings = settings
        self.model = model
        self.optimizer = optimizer
        self.cache = cache
        self.builder = BatchBuilder(model, cache)
        self.metrics_all = WindowedAUC(t.eval_window)
        self.metrics_new = WindowedAUC(t.eval_window)
        self.predictions = Predictions()
        self.decoder = SampleDecoder.from_settings(t, recent_keys)
        self.samples = 0
        self.new_samples = 0
        self.batches = 0  # batches trained
        self.consumed = 0  # batches whose records are all done (trained, repeats, rejected)
        self.rejected = 0
        self.offsets: dict[int, int] = {}

    @property
    def recent_keys(self) -> list[int]:
        """The de-duplication window's sample keys, oldest first (for checkpoints)."""
        return self.decoder.recent.keys().tolist()

    def reject(self, message, reason: str) -> None:
        """Counts a record that is not trained on, and hands it to ``on_reject``."""
        self.rejected += 1
        if self.on_reject is not None:
            self.on_reject(message, reason)
        else:
            log.warning("rejected samples at %d@%d: %s", message.partition, message.offset, reason)

    def process(self, messages: list) -> int:
        """Decodes, scores (prequential) and trains on one batch of records."""
        if not messages:
            return 0
        return self._train(messages, self.decoder.decode([m.value for m in messages]))

    def _train(self, messages: list, decoded: DecodedBatch) -> int:
        offsets = self.offsets
        for m in messages:
            offsets[m.partition] = m.offset + 1
        for index, reason in decoded.rejected:
            self.reject(messages[index], reason)
        self.consumed += 1
        n = len(decoded)
        if not n:
            return 0
        batch = self.builder.build(decoded)
        if not self.model.training:  # train() walks every module: ~40 µs, so only if needed
            self.model.train()
        probs = train_step(self.model, self.optimizer, batch).numpy()
        new, labels = decoded.is_new, decoded.labels
        self.metrics_all.update(probs, labels)
        self.metrics_new.update(probs[new], labels[new])
        self.predictions.extend(probs, labels, new, decoded.ts)
        self.samples += n
        self.new_samples += int(new.sum())
        self.batches += 1
        return n

    def refill_windows(self) -> None:
        """Windowed metrics continue from a restored prediction stream."""
        a = self.predictions.arrays()
        w = self.settings.trainer.eval_window
        self.metrics_all.update(a["score"][-w:], a["label"][-w:])
        new = a["is_new"]
        self.metrics_new.update(a["score"][new][-w:], a["label"][new][-w:])
