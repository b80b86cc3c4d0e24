"""`idproxy worker`: consumes `items`, runs the model once per item, produces features and
proxies, then commits. One process per consumer-group member; scale by partitions.

Per micro-batch (at most ``batch_max_items``, waiting at most ``batch_max_wait_ms``):

1. parse and validate each ``ItemUploaded`` (size limits, image decoding); a bad one goes
   to ``dlq`` with the reason and the original bytes;
2. run ``ProxyService.run`` once for the valid items (an item that still fails is isolated
   by running the batch item by item, and dead-lettered);
3. produce an ``ItemFeaturesRecord`` (key = item id) and a ``ProxyRecordEvent``
   (key = "<proxy version>/<item id>") per item, plus once per proxy version a
   ``VersionCommit(expected_items=1)`` so the materializer publishes that version as soon
   as it holds an item and appends later items to it;
4. ``flush()`` the producer, and only then ``commit()`` the consumer offsets.

Before step 1 the batch's partitions get an in-flight marker in their committed-offset
metadata (``streams/quarantine.py``): a record that kills the process outright is handled
alone after a restart and dead-lettered ("killed its consumer N times") after
``IDPROXY_KAFKA_QUARANTINE_DEATHS`` deaths, instead of a crash loop.

So processing is at least once: a crash before the commit re-delivers the batch, and the
re-produced records are identical (deterministic model, same version), which the
materializer writes idempotently. SIGTERM finishes the current batch, commits and exits.
Polling, the quarantine, flush-then-commit, signals and idle exit are the shared consume
loop's (``streams/consume_loop.py``); this module is the worker's batch handler.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from idproxy.settings import Settings
from streams.consume_loop import BatchHandler

log = logging.getLogger(__name__)
SLOW_BATCH_S = 5.0  # a batch slower than this is logged with where its time went


@dataclass
class WorkerStats:
    items: int = 0
    dead_letters: int = 0
    batches: int = 0
    batch_seconds: list[float] = field(default_factory=list)
    first_batch_at: float | None = None  # time.time() when the first batch arrived
    finished_at: float | None = None  # time.time() after the last commit


class ProxyWorker(BatchHandler):
    """The batch handler of the worker's consume loop (``streams/consume_loop.py``)."""

    def __init__(
        self, settings: Settings, broker, service, *, client_id: str = "worker", models=None
    ) -> None:
        from proxy_model.vision import ImageLimits
        from streams.consume_loop import ConsumeLoop
        from streams.model_feed import ModelFeed

        w = settings.worker
        self.settings = settings
        self.service = service
        self.loop = ConsumeLoop(
            settings,
            broker,
            name=f"worker {client_id}",
            component="worker",
            group_id=w.group_id,
            topics=["items"],
            client_id=client_id,
            max_records=w.batch_max_items,
            max_wait_ms=w.batch_max_wait_ms,
            metrics_port=w.metrics_port,
        )
        self.topics, self.producer, self.dlq = self.loop.topics, self.loop.producer, self.loop.dlq
        self.consumer = self.loop.consumer
        # the ``models`` topic: a newly announced bundle replaces the heads between batches
        self.models = models or ModelFeed(settings, broker, self.topics)
        self.stats = WorkerStats()
        self.image_limits = ImageLimits.from_settings(w)
        self._announced: set[str] = set()

    # ------------------------------------------------------------------ parsing
    def _content(self, message):
        """ConsumerRecord -> (ItemUploaded, ItemContent); raises EventError/InvalidItemError."""
        from proxy_model.encoder import ItemContent
        from proxy_model.vision import decode_image
        from streams.events import EventError, ItemUploaded, parse_json

        w = self.settings.worker
        if message.value is not None and len(message.value) > w.max_image_bytes * 2:
            raise EventError(f"message of {len(message.value)} bytes is over the size limit")
        event = parse_json(message.value, ItemUploaded)
        if len(event.title) + len(event.text) > w.max_text_chars:
            raise EventError(
                f"text of {len(event.title) + len(event.text)} chars, limit {w.max_text_chars}"
            )
        image = None
        if event.image_b64 is not None:
            image = decode_image(event.image_b64, limits=self.image_limits)
        elif event.image_path is not None:
            image = decode_image(
                _read_image_path(event.image_path, w.image_root, w.max_image_bytes),
                limits=self.image_limits,
            )
        return event, ItemContent(event.content_text(), image)

    # ------------------------------------------------------------------ the handler
    def prepare(self, records: list) -> list:
        """Before a batch: the heads of a newly announced bundle (re-proxy, realign)."""
        if self.stats.first_batch_at is None:
            self.stats.first_batch_at = time.time()
        self.refresh_heads()
        return records

    def refresh_heads(self) -> bool:
        """Applies the newest bundle announced since the last call; True if heads changed."""
        from streams.model_feed import BUNDLE_KEY

        bundles = [a for a in self.models.poll() if a.key == BUNDLE_KEY]
        bundle = self.models.load(bundles[-1]) if bundles else None
        return bundle is not None and self.service.apply_bundle(bundle)

    def handle(self, records: list) -> None:
        self.process(records)

    def after_commit(self, records: list, seconds: float) -> None:
        self.stats.finished_at = time.time()
        if seconds > SLOW_BATCH_S:
            log.warning("slow batch: %d records in %.1f s", len(records), seconds)
        self.stats.batches += 1
        self.stats.batch_seconds.append(seconds)
        self.stats.dead_letters = self.dlq.count

    def process(self, messages: list) -> None:
        """Validates, encodes and produces one micro-batch (no commit).

        Any exception while handling one record dead-letters that record (validation
        errors give their own text, anything else its type and message) and the batch goes
        on. A model failure is blamed on the record only if the model still encodes a
        plain probe item afterwards; otherwise it is the model's, not the record's, and it
        is raised (nothing is committed, the batch is read again after a restart).
        """
        from proxy_model.errors import InvalidItemError
        from streams.dlq import failure_reason
        from streams.events import EventError

        valid: dict[str, tuple] = {}  # item id -> (event, content); last upload wins
        for message in messages:
            try:
                event, content = self._content(message)
            except (EventError, InvalidItemError) as exc:
                self.dlq.send(message, str(exc))
                continue
            except Exception as exc:  # any other failure of this one record
                log.exception("item record %s/%d failed", message.partition, message.offset)
                self.dlq.send(message, failure_reason(exc))
                continue
            valid[event.item_id] = (event, content, message)
        if not valid:
            return
        rows = list(valid.values())
        try:
            outputs = [self.service.run([c for _, c, _ in rows])]
            groups = [rows]
        except Exception:  # isolate the offending item(s)
            outputs, groups = [], []
            for row in rows:
                try:
                    outputs.append(self.service.run([row[1]]))
                    groups.append([row])
                except InvalidItemError as exc:
                    self.dlq.send(row[2], str(exc))
                except Exception as exc:
                    if not self._model_works():
                        raise
                    log.exception("item %r failed in the model", row[0].item_id)
                    self.dlq.send(row[2], failure_reason(exc))
        for out, group in zip(outputs, groups, strict=True):
            self._produce(out, [e for e, _, _ in group])

    def _model_works(self) -> bool:
        """True when the model encodes a plain text-only probe item (so a failure on one
        item was about that item)."""
        from proxy_model.encoder import ItemContent

        try:
            self.service.run([ItemContent("probe item. plain text")])
        except Exception:
            log.exception("the model fails on a plain probe item too: not the record's fault")
            return False
        return True

    def _produce(self, out, events) -> None:
        from streams.events import (
            ItemFeaturesRecord,
            ProxyRecordEvent,
            VersionCommit,
            encode_frame,
            to_json,
        )

        version = self.service.proxy_version
        if self.service.announces_version and version not in self._announced:
            commit = VersionCommit(version=version, expected_items=1)
            self.producer.send(self.topics.control, key=version.encode(), value=to_json(commit))
            self._announced.add(version)
        now = time.time()
        for k, event in enumerate(events):
            key = event.item_id.encode()
            features = ItemFeaturesRecord(
                item_id=event.item_id,
                encoder_version=self.service.encoder_version,
                uploaded_at=event.uploaded_at,
                produced_at=now,
            )
            self.producer.send(
                self.topics.item_features,
                key=key,
                value=encode_frame(
                    features, {"z": out.z[k].numpy(), "z_groups": out.z_groups[k].numpy()}
                ),
            )
            proxy = ProxyRecordEvent(
                item_id=event.item_id,
                proxy_version=version,
                encoder_version=self.service.encoder_version,
                uploaded_at=event.uploaded_at,
                produced_at=now,
            )
            self.producer.send(
                self.topics.proxies,
                key=f"{version}/{event.item_id}".encode(),
                value=encode_frame(
                    proxy, {"p_coarse": out.p_coarse[k].numpy(), "p_fine": out.p_fine[k].numpy()}
                ),
            )
        self.stats.items += len(events)

    def run(
        self, *, idle_exit_s: float | None = None, max_batches: int | None = None
    ) -> WorkerStats:
        """Loops until SIGTERM/SIGINT, ``idle_exit_s`` without input, or ``max_batches``."""
        try:
            self.loop.run(self, idle_exit_s=idle_exit_s, max_batches=max_batches)
        finally:
            self.models.close()
        return self.stats


def _read_image_path(path: str, root: str | None, max_bytes: int) -> bytes:
    from proxy_model.errors import InvalidItemError

    if root is None:
        raise InvalidItemError("image_path given but IDPROXY_WORKER_IMAGE_ROOT is not set")
    base = Path(root).resolve()
    target = (base / path).resolve()
    if base not in target.parents:
        raise InvalidItemError(f"image_path {path!r} is outside the image root")
    if not target.is_file():
        raise InvalidItemError(f"image_path {path!r} does not exist")
    if target.stat().st_size > max_bytes:
        raise InvalidItemError(f"image file is over {max_bytes} bytes")
    return target.read_bytes()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tiny", action="store_true", help="the tiny profile (IDPROXY_MODEL_ENCODER=tiny)"
    )
    parser.add_argument("--idle-exit", type=float, help="exit after this many idle seconds")
    parser.add_argument("--client-id", default="worker")
    parser.add_argument(
        "--metrics-port", type=int, help="Prometheus port (default worker.metrics_port)"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from idproxy.settings import tiny_profile
    from proxy_model.service import ProxyService
    from streams.broker import external_broker
    from streams.kafka_config import common_config
    from streams.model_feed import BUNDLE_KEY, ModelFeed
    from streams.topics import ensure_topics

    if not settings.kafka.bootstrap:
        print("error: set IDPROXY_KAFKA_BOOTSTRAP (e.g. from `idproxy broker`)")
        return 2
    if args.tiny:
        settings = tiny_profile(settings)
    if args.metrics_port is not None:
        settings.worker.metrics_port = args.metrics_port
    broker = external_broker(settings)
    models = ModelFeed(settings, broker, ensure_topics(settings, common_config(settings, broker)))
    models.catch_up()  # start on the newest announced bundle
    service = ProxyService.from_settings(settings, models.load(models.latest(BUNDLE_KEY)))
    worker = ProxyWorker(settings, broker, service, client_id=args.client_id, models=models)
    print(f"worker {args.client_id} ready (proxy version {service.proxy_version})", flush=True)
    stats = worker.run(idle_exit_s=args.idle_exit)
    print(
        f"worker {args.client_id} stopped: {stats.items} items, {stats.dead_letters} dead letters",
        flush=True,
    )
    return 0
