"""The online Stage-2 trainer: samples -> prequential metrics -> train -> checkpoint -> re-proxy.

Loop (one process per variant; ``idproxy trainer``):

1. poll up to ``online_batch_size`` TrainingSample records (waiting at most
   ``batch_max_wait_ms``) from every partition of ``samples`` (manually assigned, so there
   is no rebalance and the batch order is fixed by the topic);
2. decode them (``trainer.sample_decoder``; inline by default, or in a helper process that
   decodes batch k+1 while batch k trains): duplicates (``sample_id`` seen among the last
   ``dedup_window`` ids) are dropped, malformed records go to the DLQ, ids become rows;
3. **prequential**: the forward pass runs before the optimiser step, so its probabilities are
   the scores of a model that has not seen the batch; they feed ``WindowedAUC`` for all and
   for new items, and the prediction stream (score, label, is_new, ts);
4. one Adam step on the BCE loss (ranker θ, ID tables, and for ``idproxy`` the adaptor φ̃ and
   gate W_g, W_c); the rows used count as updates (τ);
5. every ``checkpoint_every_batches`` batches or ``checkpoint_every_s`` seconds: an atomic
   checkpoint (``trainer.checkpoint``) holding the next offset of every partition, and only
   then the Kafka commit of those offsets; every K-th checkpoint (or T seconds) the idproxy
   variant re-proxies all cached items with its fine head (``reproxy``).

Restart: the latest checkpoint is loaded and the consumer seeks to its offsets, so samples
after it are processed again (at least once); the result is the same model as an
uninterrupted run when batches are the same (see tests/online/test_trainer_resume.py).
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from kafka.errors import KafkaError

from idproxy.settings import Settings
from streams.lifecycle import commit_or_log, poll_or_wait, stop_signals
from trainer.checkpoint import CheckpointDir, Predictions, load_optimizer, model_state
from trainer.item_cache import REPROXY_PREFIX, ContentReader, ItemCache
from trainer.online_model import Batch, OnlineRanker, OnlineShape, Variant
from trainer.optim import RowSparseAdam
from trainer.sample_decoder import DecodedBatch, DecoderState, open_decoder
from trainer.streaming_metrics import WindowedAUC, exact_auc

log = logging.getLogger(__name__)


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


class BatchBuilder:
    """:class:`DecodedBatch` -> :class:`Batch` (grows the ID tables; gathers cached content).

    Content is mirrored in tensors aligned with the item table's rows (p_coarse [R, d],
    z_groups [R, G, D], has [R]), refreshed from the cache's change log before each batch,
    so a batch gathers its distinct items with one index_select.
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
        table = self.model.item_table
        if len(self.has) < table.capacity:
            extra = table.capacity - len(self.has)
            self.pc = torch.cat([self.pc, self.pc.new_zeros(extra, *self.pc.shape[1:])])
            self.zg = torch.cat([self.zg, self.zg.new_zeros(extra, *self.zg.shape[1:])])
            self.has = torch.cat([self.has, self.has.new_zeros(extra)])
        rows = set(range(self.synced_rows + 1, table.n_ids + 1))
        changes = self.cache.changes
        rows.update(table.index[i] for i in changes[self.cursor :] if i in table.index)
        self.cursor, self.synced_rows = len(changes), table.n_ids
        for row in rows:
            item = table.ids[row - 1]
            if self.cache.ready(item):
                c = self.cache.items[item]
                self.pc[row] = torch.from_numpy(c.p_coarse)
                self.zg[row] = torch.from_numpy(c.z_groups)
                self.has[row] = True

    def build(self, decoded: DecodedBatch) -> Batch:
        m = self.model
        m.user_table.add(decoded.new_user_ids)  # the decoder's row plan, before any use
        m.item_table.add(decoded.new_item_ids)
        items = torch.from_numpy(decoded.items)
        history = torch.from_numpy(decoded.history)
        batch = Batch(
            torch.from_numpy(decoded.users), items, history, torch.from_numpy(decoded.labels)
        )
        if m.variant == "idproxy":
            self._sync()
            rows = torch.cat([items[:, None], history], dim=1)
            uniq, inverse = torch.unique(rows, return_inverse=True)
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


def decoder_state(
    settings: Settings, model: OnlineRanker, recent_ids: Sequence[str] = ()
) -> DecoderState:
    """The sample decoder's start: the trainer's settings and the model's table ids."""
    t = settings.trainer
    return DecoderState(
        history_len=t.history_len,
        dedup_window=t.dedup_window,
        new_item_interactions=t.new_item_interactions,
        new_item_age_s=t.new_item_age_s,
        user_ids=model.user_table.ids,
        item_ids=model.item_table.ids,
        recent_ids=list(recent_ids),
    )


class TrainerCore:
    """The Kafka-free part of the loop: decode, de-duplicate, score, train, keep metrics.

    Records have ``.value``, ``.partition``, ``.offset``. ``feed(records)`` hands a batch to
    the sample decoder and trains the batch fed before it (so decoding overlaps training
    when the decoder is a process); ``flush()`` trains the batch in flight;
    ``process(records)`` is both. Each returns the samples trained. ``recent_ids``: the
    sample ids a restored trainer had seen (for de-duplication). Call ``close()`` at the end.
    """

    def __init__(
        self,
        settings: Settings,
        model: OnlineRanker,
        optimizer,
        cache: ItemCache,
        recent_ids: Sequence[str] = (),
    ):
        t = settings.trainer
        self.settings = settings
        self.model = model
        self.optimizer = optimizer
        self.cache = cache
        self.builder = BatchBuilder(model, cache)
        self.metrics_all = WindowedAUC(t.eval_window)
        self.metrics_new = WindowedAUC(t.eval_window)
        self.predictions = Predictions()
        self.recent: deque[str] = deque(recent_ids, maxlen=t.dedup_window)  # for checkpoints
        self.decoder = open_decoder(t.sample_decoder, decoder_state(settings, model, recent_ids))
        self.in_flight: list | None = None  # records fed to the decoder, not yet trained
        self.samples = 0
        self.new_samples = 0
        self.batches = 0  # batches trained
        self.consumed = 0  # batches whose records are all done (trained, repeats, rejected)
        self.rejected = 0
        self.offsets: dict[int, int] = {}

    def _reject(self, message, reason: str) -> None:
        self.rejected += 1
        log.warning("rejected sample at %d@%d: %s", message.partition, message.offset, reason)

    def feed(self, messages: list) -> int:
        """Submits ``messages`` to the decoder, then trains the batch fed before them."""
        previous = self.in_flight
        decoded = self.decoder.collect() if previous is not None else None
        self.in_flight = None
        if messages:
            self.decoder.submit([m.value for m in messages])
            self.in_flight = messages
        return self._train(previous, decoded) if previous is not None else 0

    def flush(self) -> int:
        """Trains the batch in flight, if any."""
        return self.feed([])

    def process(self, messages: list) -> int:
        """Decodes, scores (prequential) and trains on one batch (and any batch in flight)."""
        return self.feed(messages) + self.flush()

    def _train(self, messages: list, decoded: DecodedBatch) -> int:
        offsets = self.offsets
        for m in messages:
            offsets[m.partition] = m.offset + 1
        for index, reason in decoded.rejected:
            self._reject(messages[index], reason)
        self.consumed += 1
        n = len(decoded.sample_ids)
        if not n:
            return 0
        self.recent.extend(decoded.sample_ids)
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

    def close(self) -> None:
        """Stops the sample decoder (a batch still in flight is not trained)."""
        self.decoder.close()


class OnlineTrainer(TrainerCore):
    """The consume -> score -> train -> checkpoint -> commit loop of one variant."""

    def __init__(
        self,
        settings: Settings,
        broker,
        *,
        variant: Variant,
        state_dir: Path,
        group: str,
        reproxy: bool,
        artifacts_dir: Path,
        metrics_port: int = 0,
    ) -> None:
        from kafka import KafkaConsumer, KafkaProducer, TopicPartition

        from streams.dlq import DeadLetterSink
        from streams.inflight_markers import FileMarkers
        from streams.kafka_config import common_config, consumer_config, producer_config
        from streams.quarantine import CrashQuarantine
        from streams.topics import ensure_topics, partitions_for

        t = settings.trainer
        self.settings = settings
        self.variant = variant
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.do_reproxy = reproxy and variant == "idproxy"
        self.artifacts_dir = Path(artifacts_dir)
        self.topics = ensure_topics(settings, common_config(settings, broker))
        self.producer = KafkaProducer(**producer_config(settings, broker))
        self.dlq = DeadLetterSink(self.producer, self.topics.dlq, component="trainer")
        self.cache = ItemCache()
        self.reader = ContentReader(settings, broker, self.topics, self.cache, self.dlq)
        self.consumer = KafkaConsumer(**consumer_config(settings, broker, group))
        self.partitions = [
            TopicPartition(self.topics.samples, p)
            for p in partitions_for(self.consumer, self.topics.samples)
        ]
        self.consumer.assign(self.partitions)
        self.quarantine = CrashQuarantine(
            FileMarkers(self.state_dir / "inflight.json"), settings.kafka.quarantine_deaths
        )
        self.ckpts = CheckpointDir(self.state_dir, keep=t.checkpoints_kept)
        self.checkpoints = 0
        self.last_checkpoint: str | None = None
        self.proxy_version: str | None = None
        self.stopping = False
        self._prom = _Metrics(metrics_port, settings.metrics_host)
        self._setup()

    # ------------------------------------------------------------------ setup
    def _new_model(self, shape: OnlineShape) -> OnlineRanker:
        t = self.settings.trainer
        return OnlineRanker(shape, self.variant, seed=t.online_seed)

    def _fresh_shape(self) -> tuple[OnlineShape, dict | None]:
        """Shape of a new model; for idproxy also the bundle's fine-head state (warm start)."""
        t, m = self.settings.trainer, self.settings.model
        base = dict(
            dim=m.id_dim,
            cross_layers=t.cross_layers,
            attention_hidden=t.attention_hidden,
            mlp_hidden=tuple(t.mlp_hidden),
            initial_rows=t.initial_rows,
            id_init_std=t.id_init_std,
            adaptor_hidden=m.adaptor_hidden,
        )
        if self.variant == "id-only":
            return OnlineShape(**base), None
        while self.cache.dims is None and not self.stopping:
            log.info("waiting for the first item-features record (model dims)")
            self.reader.poll(timeout_ms=1000)
        hidden, groups = self.cache.dims or (1, 1)
        fine = _bundle_fine(self.artifacts_dir, hidden, groups, m.id_dim)
        if fine is not None:
            base["adaptor_hidden"] = fine["adaptor.0.weight"].shape[0]
        return (
            OnlineShape(
                **base, hidden_size=hidden, n_groups=groups, fine_input=t.online_fine_input
            ),
            fine,
        )

    def _setup(self) -> None:
        t = self.settings.trainer
        torch.set_num_threads(t.threads)
        self.reader.catch_up()
        version = self.ckpts.latest()
        if version is None:
            shape, fine = self._fresh_shape()
            model = self._new_model(shape)
            if fine is not None:
                model.fine_head.load_state_dict(fine)
            fitted = fit_fine_normaliser(model, self.cache)
            if fitted:
                log.info("fine-head feature normaliser fitted on %d items", fitted)
            TrainerCore.__init__(
                self,
                self.settings,
                model,
                attach_optimizer(model, t.online_lr, t.online_adaptor_lr_scale),
                self.cache,
            )
            for tp in self.partitions:
                committed = self.consumer.committed(tp)
                if committed is None:
                    self.consumer.seek_to_beginning(tp)
                else:
                    self.consumer.seek(tp, committed)
        else:
            self._restore(version)
        self.last_checkpoint_at = time.time()
        self.last_reproxy_at = time.time()
        self.reproxied_items = 0  # items in the last re-proxy version
        self.last_report_at = time.time()

    def _restore(self, version: str) -> None:
        t = self.settings.trainer
        tensors, manifest, folder = self.ckpts.load(version)
        shape = OnlineShape(
            **{**manifest["shape"], "mlp_hidden": tuple(manifest["shape"]["mlp_hidden"])}
        )
        model = self._new_model(shape)
        state = model_state(tensors)
        for name, table in (
            ("user_table", model.user_table),
            ("item_table", model.item_table),
        ):
            table.restore(manifest[f"{name}_ids"], state[f"{name}.weight"], state[f"{name}.counts"])
        model.load_state_dict(state)
        optimizer = attach_optimizer(model, t.online_lr, t.online_adaptor_lr_scale)
        load_optimizer(optimizer, tensors, manifest["opt_groups"])
        TrainerCore.__init__(
            self, self.settings, model, optimizer, self.cache, manifest["recent_sample_ids"]
        )
        self.samples, self.batches = manifest["samples"], manifest["batches"]
        self.new_samples = manifest["new_samples"]
        self.checkpoints = manifest["checkpoints"]
        self.proxy_version = manifest.get("proxy_version")
        self.predictions = Predictions.load(folder / "predictions.npz")
        self._refill_windows()
        self.offsets = {int(p): o for p, o in manifest["offsets"].items()}
        for tp in self.partitions:
            if tp.partition in self.offsets:
                self.consumer.seek(tp, self.offsets[tp.partition])
            else:
                self.consumer.seek_to_beginning(tp)
        self.last_checkpoint = version
        log.info(
            "resumed from checkpoint %s (%d samples, offsets %s)",
            version,
            self.samples,
            self.offsets,
        )

    # ------------------------------------------------------------------ the loop
    def _poll_batch(self) -> list:
        t = self.settings.trainer
        batch: list = []
        deadline = None
        while len(batch) < t.online_batch_size and not self.stopping:
            timeout = 200 if deadline is None else max(0, int((deadline - time.time()) * 1000))
            polled = poll_or_wait(
                self.consumer,
                self.settings.kafka.outage_backoff_s,
                timeout_ms=timeout,
                max_records=t.online_batch_size - len(batch),
            )
            for records in polled.values():
                batch.extend(records)
            if batch and deadline is None:
                deadline = time.time() + t.batch_max_wait_ms / 1000
            if deadline is None and not polled:
                return batch
            if deadline is not None and time.time() >= deadline:
                break
        return batch

    def run(self, *, idle_exit_s: float | None = None) -> dict:
        """Loops until SIGTERM/SIGINT or ``idle_exit_s`` without samples; returns the summary."""
        t = self.settings.trainer
        idle_since = time.time()
        dirty = False
        try:
            with stop_signals(self._on_signal):
                while not self.stopping:
                    self.reader.poll()
                    messages = self._poll_batch()
                    consumed, started = self.consumed, time.time()
                    # a quiet poll trains the batch in flight at once
                    n = self._handle(messages) if messages else self._flush_all()
                    if messages:
                        idle_since = time.time()
                    if self.consumed == consumed:  # no batch finished
                        if messages:  # the first batch after a pause is now in flight
                            continue
                        if idle_exit_s is not None and time.time() - idle_since > idle_exit_s:
                            break
                        # a quiet stream still gets its metrics line and its checkpoint
                        # (offsets committed, re-proxy) on the time schedule
                        now = time.time()
                        if now - self.last_report_at >= t.report_every_s:
                            self.report()
                        due = now - self.last_checkpoint_at >= t.checkpoint_every_s
                        if due and (dirty or self._unproxied_items()):
                            self.checkpoint()
                            dirty = False
                        continue
                    dirty = True
                    self._prom.observe(self, n, time.time() - started)
                    if self._due(self.last_report_at, t.report_every_s, t.report_every_batches):
                        self.report()
                    if self._due(
                        self.last_checkpoint_at, t.checkpoint_every_s, t.checkpoint_every_batches
                    ):
                        self.checkpoint()
                        dirty = False
            consumed = self.consumed
            self._flush_all()  # the batch in flight, if the loop stopped with one
            if dirty or self.consumed != consumed:
                self.checkpoint()
            self.report()
            return self.summary()
        except Exception:
            self.quarantine.clear()  # not a record's fault: nobody is blamed
            raise
        finally:
            self.close()

    def _handle(self, messages: list) -> int:
        """``feed(messages)`` under the crash-loop quarantine: the records in flight (this
        batch and the one it trains) behind a marker; after a death, the records it covered
        one at a time, each trained at once, and one that died alone ``quarantine_deaths``
        times dead-lettered."""
        trained = 0
        step = self.feed
        if any(self.quarantine.is_suspect(m) for m in messages):
            trained += self._flush_all()
            step = self.process

        def run(records: list) -> None:
            nonlocal trained
            trained += step(records)

        self.quarantine.handle_in_order(
            messages, run, self._quarantined, in_flight=self.in_flight or []
        )
        return trained

    def _flush_all(self) -> int:
        """Trains the batch in flight; nothing is in flight any more, so no marker."""
        trained = self.flush()
        self.quarantine.clear()
        return trained

    def _quarantined(self, message, reason: str) -> None:
        self.offsets[message.partition] = max(
            self.offsets.get(message.partition, 0), message.offset + 1
        )
        self.consumed += 1
        self._reject(message, reason)

    def _due(self, last_at: float, every_s: float, every_batches: int) -> bool:
        return (every_batches > 0 and self.batches % every_batches == 0) or (
            every_s > 0 and time.time() - last_at >= every_s
        )

    def _reject(self, message, reason: str) -> None:
        self.rejected += 1
        self.dlq.send(message, reason)

    def _refill_windows(self) -> None:
        """Windowed metrics continue from the restored prediction stream."""
        a = self.predictions.arrays()
        w = self.settings.trainer.eval_window
        self.metrics_all.update(a["score"][-w:], a["label"][-w:])
        new = a["is_new"]
        self.metrics_new.update(a["score"][new][-w:], a["label"][new][-w:])

    def _on_signal(self, signum, frame) -> None:
        log.info("signal %d: finishing the batch, then a checkpoint", signum)
        self.stopping = True

    # ------------------------------------------------------------------ outputs
    def checkpoint(self) -> str:
        """Atomic checkpoint, then the Kafka commit of the offsets it covers; maybe re-proxy."""
        from kafka.structs import OffsetAndMetadata

        version = f"ckpt-{self.batches:09d}"
        manifest = {
            "variant": self.variant,
            "shape": asdict(self.model.shape),
            "topic": self.topics.samples,
            "offsets": {str(p): o for p, o in self.offsets.items()},
            "samples": self.samples,
            "new_samples": self.new_samples,
            "batches": self.batches,
            "checkpoints": self.checkpoints + 1,
            "user_table_ids": self.model.user_table.ids,
            "item_table_ids": self.model.item_table.ids,
            "recent_sample_ids": list(self.recent),
            "proxy_version": self.proxy_version,
        }
        self.ckpts.save(version, self.model, self.optimizer, manifest, self.predictions)
        self.predictions.save(self.state_dir / "predictions.npz")
        commit_or_log(  # the checkpoint holds the offsets: a failed commit loses nothing
            self.consumer,
            {
                tp: OffsetAndMetadata(self.offsets[tp.partition], "", -1)
                for tp in self.partitions
                if tp.partition in self.offsets
            },
        )
        self.checkpoints += 1
        self.last_checkpoint = version
        self.last_checkpoint_at = time.time()
        self._prom.checkpointed()
        log.info("checkpoint %s: %d samples, offsets %s", version, self.samples, self.offsets)
        t = self.settings.trainer
        if self.do_reproxy and (
            (
                t.reproxy_every_checkpoints > 0
                and self.checkpoints % t.reproxy_every_checkpoints == 0
            )
            or (t.reproxy_every_s > 0 and time.time() - self.last_reproxy_at >= t.reproxy_every_s)
        ):
            try:
                self.reproxy()
            except KafkaError as exc:  # the broker is away: the next checkpoint re-proxies
                log.warning("re-proxy not published (%s); retried at the next checkpoint", exc)
        return version

    def _unproxied_items(self) -> bool:
        """True when items reached the cache after the last re-proxy (idproxy only): a
        quiet stream still gets them into a complete version."""
        if not self.do_reproxy:
            return False
        self.reader.poll()
        ready = sum(1 for i in self.cache.items if self.cache.ready(i))
        return ready > self.reproxied_items

    @torch.no_grad()
    def reproxy(self) -> str | None:
        """p_fine of every cached item from its features alone -> a new proxies version."""
        self.reader.poll()
        ids = [i for i in self.cache.items if self.cache.ready(i)]
        if not ids:
            return None
        pc, zg, _ = self.cache.gather(ids, self.model.shape.dim)
        fine = torch.cat(
            [
                self.model.fine_head(pc[k : k + 1024], zg[k : k + 1024])
                for k in range(0, len(ids), 1024)
            ]
        )
        version = f"{REPROXY_PREFIX}{self.last_checkpoint}-{uuid.uuid4().hex[:6]}"
        publish_proxies(self.producer, self.topics, version, ids, self.cache, pc, fine)
        self.proxy_version = version
        self.reproxied_items = len(ids)
        self.last_reproxy_at = time.time()
        bundle = save_fine_bundle(
            self.artifacts_dir,
            self.model.fine_head,
            {
                "proxy_version": version,
                "announced": True,
                "checkpoint": self.last_checkpoint,
                "fine_input": self.model.fine_head.input_transform,
            },
        )
        log.info("re-proxy %s: %d items (bundle %s)", version, len(ids), bundle)
        return version

    def report(self) -> dict:
        line = {
            "t": time.time(),
            "variant": self.variant,
            "samples": self.samples,
            "batches": self.batches,
            "auc_all": _finite(self.metrics_all.auc()),
            "auc_new": _finite(self.metrics_new.auc()),
            "logloss_all": _finite(self.metrics_all.logloss()),
            "logloss_new": _finite(self.metrics_new.logloss()),
            "n_new": self.new_samples,
            "window_all": len(self.metrics_all),
            "window_new": len(self.metrics_new),
            "checkpoint": self.last_checkpoint,
            "proxy_version": self.proxy_version,
        }
        with open(self.state_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(line) + "\n")
        self.last_report_at = time.time()
        return line

    def summary(self) -> dict:
        """Cumulative prequential AUC/LogLoss over every prediction so far (all and new)."""
        a = self.predictions.arrays()
        out = {"variant": self.variant, "samples": self.samples, "batches": self.batches}
        for name, mask in (("all", np.ones(len(a["label"]), bool)), ("new", a["is_new"])):
            p = np.clip(a["score"][mask].astype(np.float64), 1e-7, 1 - 1e-7)
            y = a["label"][mask]
            ll = float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()) if len(y) else math.nan
            out[f"cum_auc_{name}"] = _finite(exact_auc(p, y)) if len(y) else None
            out[f"cum_logloss_{name}"] = _finite(ll)
            out[f"n_{name}"] = int(mask.sum())
        out["checkpoint"] = self.last_checkpoint
        out["proxy_version"] = self.proxy_version
        (self.state_dir / "summary.json").write_text(json.dumps(out, indent=2))
        return out

    def close(self) -> None:
        self.producer.flush()
        self.producer.close()
        self.consumer.close(autocommit=False)
        self.reader.close()
        if hasattr(self, "decoder"):  # (absent when the set-up failed before it)
            super().close()


def publish_proxies(
    producer, topics, version: str, ids: list[str], cache: ItemCache, p_coarse, p_fine
) -> None:
    """Same frames and keys as streams/worker.py, then VersionCommit(expected_items=len(ids))."""
    from streams.events import ProxyRecordEvent, VersionCommit, encode_frame, to_json

    now = time.time()
    pc, pf = p_coarse.numpy(), p_fine.numpy()
    for k, item_id in enumerate(ids):
        c = cache.items[item_id]
        header = ProxyRecordEvent(
            item_id=item_id,
            proxy_version=version,
            encoder_version=c.encoder_version,
            uploaded_at=c.uploaded_at,
            produced_at=now,
        )
        producer.send(
            topics.proxies,
            key=f"{version}/{item_id}".encode(),
            value=encode_frame(header, {"p_coarse": pc[k], "p_fine": pf[k]}),
        )
    producer.flush()  # every record before the marker
    commit = VersionCommit(version=version, expected_items=len(ids))
    producer.send(topics.control, key=version.encode(), value=to_json(commit))
    producer.flush()


def _bundle_fine(root: Path, hidden: int, groups: int, dim: int) -> dict | None:
    """The fine-head state of the LATEST bundle when its shapes fit, else None."""
    from proxy_model.artifacts import latest_version, load_bundle

    version = latest_version(root)
    if version is None:
        return None
    states, _ = load_bundle(root, version)
    fine = states.get("fine")
    if fine is None:
        return None
    w_in, w_out = fine["adaptor.0.weight"], fine["adaptor.2.weight"]
    if w_in.shape[1] != hidden * groups or w_out.shape[0] != dim:
        log.warning(
            "bundle %s fine head does not fit (D=%d, G=%d, d=%d): not used",
            version,
            hidden,
            groups,
            dim,
        )
        return None
    return fine


class _State(torch.nn.Module):
    """A saved state dict posing as a module, to re-save bundle parts unchanged."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self._saved = state

    def state_dict(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        return dict(self._saved)


def save_fine_bundle(
    root: Path, fine: torch.nn.Module, note: dict, coarse: torch.nn.Module | None = None
) -> str | None:
    """Re-saves the LATEST bundle with ``fine`` (and ``coarse`` if given) replaced.

    Keeps pooling, projector, layer groups and encoder name; None when no bundle exists
    (e.g. workers on the tiny model or untrained heads: nothing to update).
    """
    from proxy_model.artifacts import latest_version, load_bundle, save_bundle

    version = latest_version(root)
    if version is None:
        return None
    states, manifest = load_bundle(root, version)
    modules: dict[str, torch.nn.Module] = {name: _State(s) for name, s in states.items()}
    modules["fine"] = fine
    if coarse is not None:
        modules["coarse"] = coarse
    keep = {k: v for k, v in manifest.items() if k not in ("version", "created_at", "modules")}
    return save_bundle(root, modules, {**keep, **note, "parent": version})


class _Metrics:
    """Prometheus metrics on host:port (off when port is 0); ``address`` is the bound one."""

    def __init__(self, port: int, host: str) -> None:
        self.enabled = port > 0
        if not self.enabled:
            return
        from prometheus_client import CollectorRegistry, Counter, Gauge

        from idproxy.prometheus import serve_metrics

        r = self.registry = CollectorRegistry()
        self.samples = Counter("idproxy_trainer_samples", "samples trained", registry=r)
        self.rate = Gauge("idproxy_trainer_samples_per_second", "last batch samples/s", registry=r)
        self.auc_all = Gauge("idproxy_trainer_auc_all", "windowed prequential AUC", registry=r)
        self.auc_new = Gauge("idproxy_trainer_auc_new", "windowed AUC on new items", registry=r)
        self.ckpt_at = time.time()
        age = Gauge("idproxy_trainer_checkpoint_age_seconds", "since last checkpoint", registry=r)
        age.set_function(lambda: time.time() - self.ckpt_at)
        self.lag = Gauge("idproxy_trainer_lag", "samples high watermark - position", registry=r)
        self.address = serve_metrics(r, port, host)

    def checkpointed(self) -> None:
        if self.enabled:
            self.ckpt_at = time.time()

    def observe(self, trainer: OnlineTrainer, n: int, seconds: float) -> None:
        if not self.enabled:
            return
        self.samples.inc(n)
        self.rate.set(n / max(seconds, 1e-9))
        for gauge, m in ((self.auc_all, trainer.metrics_all), (self.auc_new, trainer.metrics_new)):
            if trainer.batches % 10 == 0:
                gauge.set(m.auc())
        lag = 0
        for tp in trainer.partitions:
            high = trainer.consumer.highwater(tp)
            if high is not None:
                lag += max(0, high - trainer.consumer.position(tp))
        self.lag.set(lag)
