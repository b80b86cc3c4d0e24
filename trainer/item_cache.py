"""Per-item content cache of the online trainer, rebuilt from the compacted topics.

* ``item-features`` -> z [D], z_groups [G, D] (the last record of an item wins);
* ``proxies`` -> p_coarse [d]: the record with the newest ``produced_at`` wins, so a
  re-alignment's recomputed proxies replace the workers' older ones. Records of re-proxy
  versions (``reproxy-*``) are skipped for items that already have a p_coarse: they carry
  no new one, and reading them back could reinstate a coarse proxy that a re-alignment
  has just replaced. They are taken for items seen first there: new uploads that workers
  proxied after reloading a re-proxy bundle (without this, such items never entered the
  trainer's cache or a later version, and stayed unservable).

``ContentReader`` reads both topics with a group-less consumer from the beginning: on
start it catches up to the end offsets seen at start, then it is polled without waiting
between mini-batches.

Content is keyed by the string item id of its records; ``by_hash`` maps the samples' int64
item id (``id_hash`` of the string id) back to it, so the trainer finds the content of an
item table row (``ItemCache.item_of``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from streams.lifecycle import poll_or_wait, read_to_end
from streams.sample_batch import id_hash

log = logging.getLogger(__name__)

REPROXY_PREFIX = "reproxy-"


@dataclass
class ItemContent:
    """One item's cached content (float32 arrays) and where it came from."""

    z: np.ndarray | None = None
    z_groups: np.ndarray | None = None
    encoder_version: str = ""
    uploaded_at: float = 0.0
    p_coarse: np.ndarray | None = None
    coarse_at: float = -1.0


@dataclass
class ItemCache:
    """item id -> ItemContent; ``dims`` = (D, G) once a features record has been seen."""

    items: dict[str, ItemContent] = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)  # append-only log of updated item ids
    dims: tuple[int, int] | None = None
    id_dim: int | None = None
    by_hash: dict[int, str] = field(default_factory=dict)  # id_hash(item id) -> item id

    def _content(self, item_id: str) -> ItemContent:
        c = self.items.get(item_id)
        if c is None:
            c = self.items[item_id] = ItemContent()
            self.by_hash.setdefault(id_hash(item_id), item_id)  # a collision: the first wins
        return c

    def item_of(self, key: int) -> str | None:
        """The string id of the cached item whose ``id_hash`` is ``key`` (None: unknown)."""
        return self.by_hash.get(key)

    def put_features(self, item_id: str, header, arrays: dict[str, np.ndarray]) -> None:
        """Caches z [D], z_groups [G, D]; raises ValueError (nothing cached) for missing,
        non-finite or mis-shaped arrays: the first record fixes (D, G)."""
        z, z_groups = _array(arrays, "z", 1), _array(arrays, "z_groups", 2)
        g, d = z_groups.shape
        if z.shape != (d,) or (self.dims is not None and self.dims != (d, g)):
            want = self.dims or (d, g)
            raise ValueError(
                f"features of shape z {z.shape}, z_groups {z_groups.shape}; this cache holds "
                f"z ({want[0]},), z_groups ({want[1]}, {want[0]})"
            )
        c = self._content(item_id)
        c.z, c.z_groups = z, z_groups
        c.encoder_version, c.uploaded_at = header.encoder_version, header.uploaded_at
        self.dims = (d, g)
        self.changes.append(item_id)

    def put_proxy(self, item_id: str, header, arrays: dict[str, np.ndarray]) -> None:
        """Caches p_coarse [d]; raises ValueError (nothing cached) when it is missing,
        non-finite or not of the cache's ``id_dim``."""
        p_coarse = _array(arrays, "p_coarse", 1)
        if self.id_dim is not None and p_coarse.shape != (self.id_dim,):
            raise ValueError(
                f"p_coarse of shape {p_coarse.shape}; this cache holds ({self.id_dim},)"
            )
        arrays = {**arrays, "p_coarse": p_coarse}
        c = self._content(item_id)
        if header.proxy_version.startswith(REPROXY_PREFIX) and c.p_coarse is not None:
            return
        if header.produced_at >= c.coarse_at:
            c.p_coarse, c.coarse_at = arrays["p_coarse"], header.produced_at
            self.id_dim = len(c.p_coarse)
            self.changes.append(item_id)

    def ready(self, item_id: str) -> bool:
        c = self.items.get(item_id)
        return c is not None and c.z_groups is not None and c.p_coarse is not None

    def with_features(self) -> list[str]:
        """Items whose features are cached (in arrival order)."""
        return [i for i, c in self.items.items() if c.z is not None]

    def gather(self, item_ids: list[str], dim: int) -> tuple[torch.Tensor, ...]:
        """-> p_coarse [U, d], z_groups [U, G, D], has_proxy [U] bool (zeros for misses)."""
        d_hidden, n_groups = self.dims or (1, 1)
        pc = np.zeros((len(item_ids), dim), np.float32)
        zg = np.zeros((len(item_ids), n_groups, d_hidden), np.float32)
        has = np.zeros(len(item_ids), bool)
        for k, i in enumerate(item_ids):
            if self.ready(i):
                c = self.items[i]
                pc[k], zg[k], has[k] = c.p_coarse, c.z_groups, True
        return torch.from_numpy(pc), torch.from_numpy(zg), torch.from_numpy(has)


def _array(arrays: dict[str, np.ndarray], name: str, ndim: int) -> np.ndarray:
    """arrays[name] as float32 with ``ndim`` dimensions and finite values, else ValueError."""
    if name not in arrays:
        raise ValueError(f"no {name!r} array (has {sorted(arrays)})")
    a = np.asarray(arrays[name], dtype=np.float32)
    if a.ndim != ndim or 0 in a.shape:
        raise ValueError(f"{name} of shape {a.shape}, want {ndim} non-empty dimension(s)")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} has non-finite values")
    return a


class ContentReader:
    """Group-less consumer of item-features + proxies feeding an :class:`ItemCache`.

    A record the cache cannot use (undecodable, a missing array, NaN, other shapes) is
    skipped and, given a ``dlq`` (``streams.dlq.DeadLetterSink``), dead-lettered with its
    reason; the reader reads from the beginning on every start, so a restarted trainer
    sends the same letters again (counted once by their source offset).

    Given ``markers`` (a file path), each poll's records are handled behind a crash-loop
    quarantine marker (``streams/quarantine.py``): a record that kills the process outright
    ``kafka.quarantine_deaths`` times is dead-lettered instead of killing every restart.
    """

    def __init__(
        self, settings, broker, topics, cache: ItemCache, dlq=None, markers: Path | None = None
    ) -> None:
        from kafka import KafkaConsumer, TopicPartition

        from streams.kafka_config import consumer_config
        from streams.topics import partitions_for

        self.cache = cache
        self.cache.id_dim = self.cache.id_dim or settings.model.id_dim
        self.topics = topics
        self.dlq = dlq
        self.outage_backoff_s = settings.kafka.outage_backoff_s
        self.consumer = KafkaConsumer(**consumer_config(settings, broker, None))
        parts = []
        for topic in (topics.item_features, topics.proxies):
            parts += [TopicPartition(topic, p) for p in partitions_for(self.consumer, topic)]
        self.consumer.assign(parts)
        self.consumer.seek_to_beginning(*parts)
        self.errors = 0
        self.quarantine = None
        if markers is not None:
            from streams.inflight_markers import FileMarkers
            from streams.quarantine import CrashQuarantine

            self.quarantine = CrashQuarantine(
                FileMarkers(markers), settings.kafka.quarantine_deaths
            )

    def _handle(self, records) -> int:
        from streams.dlq import failure_reason, is_infrastructure_error
        from streams.events import ItemFeaturesRecord, ProxyRecordEvent, decode_frame

        for m in records:
            try:
                if m.topic == self.topics.item_features:
                    header, arrays = decode_frame(m.value, ItemFeaturesRecord)
                    self.cache.put_features(header.item_id, header, arrays)
                else:
                    header, arrays = decode_frame(m.value, ProxyRecordEvent)
                    self.cache.put_proxy(header.item_id, header, arrays)
            except Exception as exc:  # one record's failure: skip it, dead-letter it
                if is_infrastructure_error(exc):
                    raise
                self._unusable(m, failure_reason(exc))
        return len(records)

    def _unusable(self, m, reason: str) -> None:
        self.errors += 1
        if self.dlq is not None:
            self.dlq.send(m, reason)
        else:
            log.warning(
                "unusable content record %s/%d@%d: %s", m.topic, m.partition, m.offset, reason
            )

    def poll(self, timeout_ms: int = 0) -> int:
        polled = poll_or_wait(
            self.consumer, self.outage_backoff_s, timeout_ms=timeout_ms, max_records=5000
        )
        if self.quarantine is None:
            return sum(self._handle(records) for records in polled.values())
        records = [m for batch in polled.values() for m in batch]
        q = self.quarantine
        try:
            if not any(q.is_suspect(m) for m in records):
                if records:
                    q.mark(records)
                    self._handle(records)
                return len(records)
            for m in records:  # a previous run died in this range: one record at a time
                if q.buried(m):
                    continue  # dead-lettered as a killer by an earlier run
                if q.is_suspect(m) and q.doomed(m):
                    self._unusable(m, q.reason(m))
                    if self.dlq is not None:
                        self.dlq.producer.flush()
                    q.bury(m)
                else:
                    q.mark([m])
                    self._handle([m])
            return len(records)
        finally:  # in the cache now (a restart reads everything again): no marker
            q.clear()

    def catch_up(self, timeout_s: float = 60.0) -> int:
        """Reads until every partition reaches the end offset it had when this was called;
        returns the records read."""
        read = 0

        def poll(timeout_ms: int) -> None:
            nonlocal read
            read += self.poll(timeout_ms=timeout_ms)

        read_to_end(self.consumer, poll, timeout_s)
        return read

    def close(self) -> None:
        self.consumer.close(autocommit=False)
