"""The one Kafka consume loop of the consumer-group components (proxy worker, materializer).

A component supplies a :class:`BatchHandler`; :class:`ConsumeLoop` owns everything else:

* the clients: a group consumer (subscribed with the crash-loop quarantine's assignment
  listener), a producer, and the ``dlq`` sink;
* polling in micro-batches: at most ``max_records``, waiting at most ``max_wait_ms`` after
  the first record (0: what one poll returns); a broker outage is logged and polled again
  after ``kafka.outage_backoff_s`` (``streams/lifecycle.py``);
* the batch under the crash-loop quarantine (``streams/quarantine.py``): records that
  killed a previous owner go alone, each flushed and committed on its own, one that killed
  it ``kafka.quarantine_deaths`` times is dead-lettered;
* **flush, then commit**: the producer is flushed (the output is durable) before the
  offsets are committed, so processing is at least once;
* a batch the handler cannot finish for a reason outside the records (``RetryBatch``: a
  full disk, ...) is not committed: the consumer goes back to its committed offsets, waits
  (exponential back-off, at most 30 s), calls ``handler.recover()`` and reads it again;
* SIGTERM/SIGINT finish the current batch, commit and exit; ``idle_exit_s`` without input
  exits too, counted only while the consumer owns partitions (a join that waits out a dead
  member's session is not "no input");
* Prometheus metrics on ``metrics_port`` (``streams/loop_metrics.py``), among them the
  partitions owned: a member is ready once that is above 0.

Any other exception from the handler is not the records' fault: nothing is committed, the
quarantine markers are cleared and it propagates (the process restarts and reads the batch
again).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from idproxy.settings import Settings
from streams.lifecycle import commit_or_log, poll_or_wait, stop_signals

log = logging.getLogger(__name__)


class RetryBatch(Exception):
    """Raised by a handler: the batch failed for a reason outside its records; read it again
    after a back-off (nothing is committed, nothing dead-lettered)."""


class BatchHandler:
    """What a component gives the loop. ``handle`` is required; the hooks are optional."""

    def handle(self, records: list) -> None:
        """Processes records and produces their output (the loop flushes and commits).
        A bad record is dead-lettered here (``loop.dlq.send(record, reason)``)."""
        raise NotImplementedError

    def prepare(self, records: list) -> list:
        """Before a batch is handled: the records in the order to handle them (default: as
        polled), after any per-batch preparation."""
        return records

    def tick(self) -> None:
        """Called once per loop turn after the batch, with or without records."""

    def after_commit(self, records: list, seconds: float) -> None:
        """Called after the batch's offsets are committed; ``seconds`` it took."""

    def recover(self) -> None:
        """Called before the next poll after a ``RetryBatch`` (may raise it again)."""


class ConsumeLoop:
    """poll → handle (quarantined) → flush → commit, for one consumer-group member.

    ``name`` is used in logs ("worker w1"), ``component`` in dead letters ("worker");
    ``topics`` are field names of :class:`streams.topics.Topics` (e.g. ``["items"]``),
    created if missing.
    """

    def __init__(
        self,
        settings: Settings,
        broker,
        *,
        name: str,
        component: str,
        group_id: str,
        topics: Sequence[str],
        client_id: str | None = None,
        max_records: int = 2000,
        max_wait_ms: int = 0,
        metrics_port: int = 0,
    ) -> None:
        from kafka import KafkaConsumer, KafkaProducer

        from streams.dlq import DeadLetterSink
        from streams.inflight_markers import CommittedOffsetMarkers
        from streams.kafka_config import common_config, consumer_config, producer_config
        from streams.loop_metrics import LoopMetrics
        from streams.quarantine import AssignmentListener, CrashQuarantine
        from streams.topics import ensure_topics, subscribe

        clients = {"client_id": client_id} if client_id else {}
        self.settings = settings
        self.name = name
        self.max_records, self.max_wait_ms = max_records, max_wait_ms
        self.topics = ensure_topics(settings, common_config(settings, broker))
        self.consumer = KafkaConsumer(**clients, **consumer_config(settings, broker, group_id))
        self.quarantine = CrashQuarantine(
            CommittedOffsetMarkers(self.consumer), settings.kafka.quarantine_deaths
        )
        names = [getattr(self.topics, t) for t in topics]
        subscribe(self.consumer, names, AssignmentListener(name, self.quarantine))
        self.producer = KafkaProducer(**clients, **producer_config(settings, broker))
        self.dlq = DeadLetterSink(self.producer, self.topics.dlq, component=component)
        self.metrics = LoopMetrics(component, metrics_port, settings.metrics_host)
        self.stopping = False
        self.batches = 0
        self.retry_reason: str | None = None  # the last RetryBatch, until a batch succeeds
        self.retries = 0

    # ------------------------------------------------------------------ polling
    def poll_batch(self) -> list:
        """Up to ``max_records`` records, waiting at most ``max_wait_ms`` after the first;
        [] when a poll finds nothing."""
        batch: list = []
        deadline = None
        while len(batch) < self.max_records and not self.stopping:
            timeout = 200 if deadline is None else max(0, int((deadline - time.time()) * 1000))
            polled = poll_or_wait(
                self.consumer,
                self.settings.kafka.outage_backoff_s,
                timeout_ms=timeout,
                max_records=self.max_records - len(batch),
            )
            for records in polled.values():
                batch.extend(records)
            if batch and deadline is None:
                deadline = time.time() + self.max_wait_ms / 1000
            if deadline is None and not polled:
                return batch  # idle: let the caller check for stop / idle exit
            if deadline is not None and time.time() >= deadline:
                break
        return batch

    # ------------------------------------------------------------------ one turn
    def step(self, handler: BatchHandler) -> int:
        """One poll → handle → flush → commit turn; returns the records committed."""
        if self.retry_reason is not None:
            try:
                handler.recover()
            except RetryBatch as exc:
                self._back_off(exc)
                return 0
        records = self.poll_batch()
        started = time.time()
        try:
            if records:
                records = handler.prepare(records)
                self.quarantine.handle(records, handler.handle, self.producer.flush, self.dlq.send)
            handler.tick()
        except RetryBatch as exc:
            self._back_off(exc)
            return 0
        self.retry_reason, self.retries = None, 0
        if records:
            self.producer.flush()  # durable first ...
            commit_or_log(self.consumer)  # ... then the offsets
            self.quarantine.committed_all()
            self.batches += 1
            seconds = time.time() - started
            self.metrics.observe(self.consumer, self.dlq.count, records, seconds)
            handler.after_commit(records, seconds)
        return len(records)

    def _back_off(self, exc: Exception) -> None:
        """Back to the committed offsets, then wait before the batch is read again."""
        self.retry_reason = str(exc)
        self.retries += 1
        wait = min(30.0, 0.5 * 2 ** min(self.retries, 6))
        log.error("%s: %s; offsets not committed, retrying in %.1f s", self.name, exc, wait)
        for tp in self.consumer.assignment():
            committed = self.consumer.committed(tp)
            if committed is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, committed)
        time.sleep(wait)

    # ------------------------------------------------------------------ the loop
    def run(
        self,
        handler: BatchHandler,
        *,
        idle_exit_s: float | None = None,
        max_batches: int | None = None,
    ) -> None:
        """Turns until SIGTERM/SIGINT, ``idle_exit_s`` without input while owning
        partitions, or ``max_batches`` committed batches; closes the clients."""
        idle_since = time.time()
        self.metrics.started()
        try:
            with stop_signals(self._on_signal):
                while not self.stopping:
                    handled = self.step(handler)
                    self.metrics.owned(self.consumer)
                    if handled or not self.consumer.assignment():
                        idle_since = time.time()
                    elif idle_exit_s is not None and time.time() - idle_since > idle_exit_s:
                        break
                    if max_batches is not None and self.batches >= max_batches:
                        break
        finally:
            self.close()

    def _on_signal(self, signum, frame) -> None:
        log.info("%s: signal %d, finishing the current batch", self.name, signum)
        self.stopping = True

    def close(self) -> None:
        self.producer.flush()
        self.producer.close()
        self.consumer.close(autocommit=False)
