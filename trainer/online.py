"""The online Stage-2 trainer: samples -> prequential metrics -> train -> checkpoint -> re-proxy.

Loop (one process per variant; ``idproxy trainer``):

1. poll ``samples`` records (each a frame of N samples, ``streams/sample_batch.py``) from
   every partition (manually assigned, so there is no rebalance and the batch order is
   fixed by the topic) until the samples they announce reach ``online_batch_size``, or
   ``batch_max_wait_ms`` after the first record; a record's samples are never split
   between batches (records polled beyond the batch wait for the next one);
2. hand the records to the :class:`~trainer.online_core.TrainerCore` under the crash-loop
   quarantine (``streams/quarantine.py``; markers by record offset in
   ``<state dir>/inflight.json``): the core decodes them (a malformed record is
   dead-lettered whole), drops repeated sample keys (seen among the last
   ``dedup_window``) and maps ids to table rows;
3. **prequential**: the forward pass runs before the optimiser step, so its probabilities are
   the scores of a model that has not seen the batch; they feed ``WindowedAUC`` for all and
   for new items, and the prediction stream (score, label, is_new, ts);
4. one optimiser step on the BCE loss (ranker θ, ID tables, and for ``idproxy`` the adaptor
   φ̃ and gate W_g, W_c); the rows used count as updates (τ);
5. every ``checkpoint_every_batches`` batches or ``checkpoint_every_s`` seconds: an atomic
   checkpoint (``trainer.checkpoint``) holding the next offset of every partition, and only
   then the Kafka commit of those offsets; every K-th checkpoint (or T seconds) the idproxy
   variant re-proxies all cached items with its fine head (``trainer/reproxy.py``).

Restart: the latest checkpoint is loaded and the consumer seeks to its offsets, so samples
after it are processed again (at least once); the result is the same model as an
uninterrupted run when batches are the same (see tests/online/test_trainer_resume.py).
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from pathlib import Path

import torch
from kafka.errors import KafkaError

from idproxy.settings import Settings
from streams.lifecycle import commit_or_log, poll_or_wait, stop_signals
from trainer.checkpoint import CheckpointDir
from trainer.item_cache import ContentReader, ItemCache
from trainer.online_core import TrainerCore
from trainer.online_model import Variant
from trainer.online_report import TrainerMetrics, append_line, cumulative_summary, finite
from trainer.online_state import checkpoint_manifest, fresh_shape, new_core, restore_core
from trainer.reproxy import ModelPublisher, bundle_fine
from trainer.sample_decoder import record_samples

log = logging.getLogger(__name__)


class OnlineTrainer:
    """The consume -> score -> train -> checkpoint -> commit loop of one variant.

    ``core`` (:class:`TrainerCore`) holds the model, the optimiser and the metrics; this
    class owns the Kafka clients, the checkpoints, the re-proxy and the reports.
    """

    def __init__(
        self,
        settings: Settings,
        broker,
        *,
        variant: Variant,
        state_dir: Path,
        group: str,
        reproxy: bool,
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
        self.topics = ensure_topics(settings, common_config(settings, broker))
        self.producer = KafkaProducer(**producer_config(settings, broker))
        # bundles in; re-proxy versions, bundles and snapshots out
        self.publisher = ModelPublisher(settings, broker, self.producer, self.topics, variant)
        self.dlq = DeadLetterSink(self.producer, self.topics.dlq, component="trainer")
        self.cache = ItemCache()
        content_markers = self.state_dir / "inflight-content.json"
        self.reader = ContentReader(
            settings, broker, self.topics, self.cache, self.dlq, markers=content_markers
        )
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
        self.pending: deque = deque()  # records polled beyond the last batch, in order
        self.core: TrainerCore | None = None
        self._prom = TrainerMetrics(metrics_port, settings.metrics_host)
        self.core = self._setup()
        self.last_checkpoint_at = self.last_reproxy_at = self.last_report_at = time.time()

    # ------------------------------------------------------------------ setup
    def _setup(self) -> TrainerCore:
        """A new model at the committed offsets, or the latest checkpoint restored."""
        torch.set_num_threads(self.settings.trainer.threads)
        self.reader.catch_up()
        version = self.ckpts.latest()
        if version is not None:
            tensors, manifest, folder = self.ckpts.load(version)
            core = restore_core(
                self.settings, self.variant, tensors, manifest, folder, self.cache, self.dlq.send
            )
            self.checkpoints = manifest["checkpoints"]
            self.proxy_version = manifest.get("proxy_version")
            self.last_checkpoint = version
            for tp in self.partitions:
                if tp.partition in core.offsets:
                    self.consumer.seek(tp, core.offsets[tp.partition])
                else:
                    self.consumer.seek_to_beginning(tp)
            log.info(
                "resumed from checkpoint %s (%d samples, offsets %s)",
                version,
                core.samples,
                core.offsets,
            )
            return core
        fine = None
        if self.variant == "idproxy":
            while self.cache.dims is None and not self.stopping:
                log.info("waiting for the first item-features record (model dims)")
                self.reader.poll(timeout_ms=1000)
            hidden, groups = self.cache.dims or (1, 1)
            bundle = self.publisher.newest_bundle()
            fine = bundle_fine(bundle, hidden, groups, self.settings.model.id_dim)
        shape = fresh_shape(self.settings, self.variant, self.cache.dims, fine)
        core = new_core(self.settings, self.variant, shape, fine, self.cache, self.dlq.send)
        for tp in self.partitions:
            committed = self.consumer.committed(tp)
            if committed is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, committed)
        return core

    # ------------------------------------------------------------------ the loop
    def _poll_batch(self) -> list:
        """Records whose samples reach ``online_batch_size`` (the last record completes
        the batch), or what came within ``batch_max_wait_ms`` of the first; [] when a
        poll finds nothing."""
        t = self.settings.trainer
        size, pending = t.online_batch_size, self.pending
        batch: list = []
        samples, deadline = 0, None
        while not self.stopping:
            while pending and samples < size:
                batch.append(pending.popleft())
                samples += record_samples(batch[-1].value)
            if samples >= size:
                break
            now = time.time()
            if batch and deadline is None:
                deadline = now + t.batch_max_wait_ms / 1000
            if deadline is not None and now >= deadline:
                break
            polled = poll_or_wait(
                self.consumer,
                self.settings.kafka.outage_backoff_s,
                timeout_ms=200 if deadline is None else max(0, int((deadline - now) * 1000)),
                max_records=size - samples,  # each record holds at least one sample
            )
            for records in polled.values():
                pending.extend(records)
            if not polled and deadline is None:
                break
        return batch

    def run(self, *, idle_exit_s: float | None = None) -> dict:
        """Loops until SIGTERM/SIGINT or ``idle_exit_s`` without samples; returns the summary."""
        t, core = self.settings.trainer, self.core
        idle_since = time.time()
        dirty = False
        self._prom.started()
        try:
            with stop_signals(self._on_signal):
                while not self.stopping:
                    self.reader.poll()
                    messages = self._poll_batch()
                    if not messages:
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
                    started = time.time()
                    n = self._handle(messages)
                    idle_since = time.time()
                    dirty = True
                    self._prom.observe(
                        core, self.consumer, self.partitions, n, time.time() - started
                    )
                    if self._due(self.last_report_at, t.report_every_s, t.report_every_batches):
                        self.report()
                    if self._due(
                        self.last_checkpoint_at, t.checkpoint_every_s, t.checkpoint_every_batches
                    ):
                        self.checkpoint()
                        dirty = False
            if dirty:
                self.checkpoint()
            self.report()
            return self.summary()
        except Exception:
            self.quarantine.clear()  # not a record's fault: nobody is blamed
            raise
        finally:
            self.close()

    def _handle(self, messages: list) -> int:
        """``core.process(messages)`` under the crash-loop quarantine: the records behind
        a marker while they are trained; after a death, the records it covered one at a
        time, and one that died alone ``quarantine_deaths`` times dead-lettered. The
        marker goes once they are trained: a later death (a checkpoint, a kill while
        idle) is not theirs. Returns the samples trained."""
        core, trained = self.core, 0

        def run(records: list) -> None:
            nonlocal trained
            trained += core.process(records)

        self.quarantine.handle_in_order(messages, run, self._quarantined, self.producer.flush)
        self.quarantine.clear()
        return trained

    def _quarantined(self, message, reason: str) -> None:
        core = self.core
        core.offsets[message.partition] = max(
            core.offsets.get(message.partition, 0), message.offset + 1
        )
        core.consumed += 1
        core.reject(message, reason)

    def _due(self, last_at: float, every_s: float, every_batches: int) -> bool:
        return (every_batches > 0 and self.core.batches % every_batches == 0) or (
            every_s > 0 and time.time() - last_at >= every_s
        )

    def _on_signal(self, signum, frame) -> None:
        log.info("signal %d: finishing the batch, then a checkpoint", signum)
        self.stopping = True

    # ------------------------------------------------------------------ outputs
    def checkpoint(self) -> str:
        """Atomic checkpoint, then the Kafka commit of the offsets it covers; maybe re-proxy."""
        from kafka.structs import OffsetAndMetadata

        core = self.core
        version = f"ckpt-{core.batches:09d}"
        manifest = checkpoint_manifest(
            core,
            variant=self.variant,
            topic=self.topics.samples,
            checkpoints=self.checkpoints + 1,
            proxy_version=self.proxy_version,
        )
        self.ckpts.save(version, core.model, core.optimizer, manifest, core.predictions)
        core.predictions.save(self.state_dir / "predictions.npz")
        commit_or_log(  # the checkpoint holds the offsets: a failed commit loses nothing
            self.consumer,
            {
                tp: OffsetAndMetadata(core.offsets[tp.partition], "", -1)
                for tp in self.partitions
                if tp.partition in core.offsets
            },
        )
        self.checkpoints += 1
        self.last_checkpoint = version
        self.last_checkpoint_at = time.time()
        self._prom.checkpointed()
        log.info("checkpoint %s: %d samples, offsets %s", version, core.samples, core.offsets)
        try:
            self.publisher.snapshot(self.core.model, version, self.core.samples)
        except KafkaError as exc:  # the broker is away: the next checkpoint announces one
            log.warning("snapshot of %s not announced (%s)", version, exc)
        t = self.settings.trainer
        every, period = t.reproxy_every_checkpoints, t.reproxy_every_s
        by_count = every > 0 and self.checkpoints % every == 0
        by_time = period > 0 and time.time() - self.last_reproxy_at >= period
        if self.do_reproxy and (by_count or by_time):
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
        return ready > self.publisher.reproxied_items

    def reproxy(self) -> str | None:
        """p_fine of every cached item from its features alone -> a new proxies version."""
        self.reader.poll()
        self.last_reproxy_at = time.time()
        version = self.publisher.reproxy(self.core.model, self.cache, self.last_checkpoint)
        self.proxy_version = version or self.proxy_version
        return version

    def report(self) -> dict:
        """Appends the windowed metrics line to ``metrics.jsonl`` and returns it."""
        core = self.core
        line = {
            "t": time.time(),
            "variant": self.variant,
            "samples": core.samples,
            "batches": core.batches,
            "auc_all": finite(core.metrics_all.auc()),
            "auc_new": finite(core.metrics_new.auc()),
            "logloss_all": finite(core.metrics_all.logloss()),
            "logloss_new": finite(core.metrics_new.logloss()),
            "n_new": core.new_samples,
            "window_all": len(core.metrics_all),
            "window_new": len(core.metrics_new),
            "checkpoint": self.last_checkpoint,
            "proxy_version": self.proxy_version,
            "proxy_change": self.publisher.proxy_change,
            "proxy_versions": self.publisher.churn.versions,
            "reproxies_skipped": self.publisher.churn.skipped,
        }
        append_line(self.state_dir / "metrics.jsonl", line)
        self.last_report_at = time.time()
        return line

    def summary(self) -> dict:
        """Cumulative prequential AUC/LogLoss (all and new), also written to summary.json."""
        core = self.core
        out = {"variant": self.variant, "samples": core.samples, "batches": core.batches}
        out.update(cumulative_summary(core.predictions))
        out["checkpoint"] = self.last_checkpoint
        out["proxy_version"] = self.proxy_version
        (self.state_dir / "summary.json").write_text(json.dumps(out, indent=2))
        return out

    def close(self) -> None:
        self.producer.flush()
        self.producer.close()
        self.consumer.close(autocommit=False)
        self.reader.close()
        self.publisher.close()
