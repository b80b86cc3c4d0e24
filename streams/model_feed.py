"""Model state as announcements: writers publish artefact refs on the compacted ``models``
topic, readers follow the topic and load what it names.

* :func:`publish_artifact` saves states + manifest to the artefact store
  (``proxy_model.artifacts``) and announces the ref (key, id, kind, parent, sha256, URI).
  The producer is flushed before it returns: the announcement is durable.
* :class:`ModelFeed` reads ``models`` from the beginning with a group-less consumer;
  ``catch_up()`` reads to the end offsets seen at the call (a process knows the current
  models before it starts), ``poll()`` returns the announcements that arrived since, and
  ``latest(key)`` the newest one per key. :meth:`ModelFeed.load` fetches an announced
  artefact and verifies its sha256; a bad announcement (unparsable, or an artefact whose
  bytes do not match) is logged, counted in ``rejected`` and skipped: the reader keeps the
  model it has.

The topic is compacted and keyed (``"bundle"``, ``"snapshot/<variant>"``), so it holds the
newest announcement per key forever; artefact files are immutable and content-addressed.
No component reads another's folders: the workers, the trainers and the re-alignment job
share only the broker and the artefact store URL (``model.artifacts_dir``).
"""

from __future__ import annotations

import logging
from typing import Any

from proxy_model.artifacts import (
    Artifact,
    ArtifactIntegrityError,
    ArtifactRef,
    ArtifactStore,
    States,
)
from streams.events import EventError, ModelAnnouncement, parse_json, to_json
from streams.lifecycle import poll_or_wait, read_to_end

log = logging.getLogger(__name__)

BUNDLE_KEY = "bundle"


def snapshot_key(variant: str) -> str:
    """The ``models`` key of an online trainer's snapshots."""
    return f"snapshot/{variant}"


def publish_artifact(
    producer,
    topic: str,
    store: ArtifactStore,
    states: States,
    manifest: dict[str, Any],
    *,
    key: str,
    producer_name: str,
    parent: str | None = None,
) -> ModelAnnouncement:
    """Saves the artefact, announces it on ``topic`` under ``key`` and flushes."""
    kind = "bundle" if key == BUNDLE_KEY else "snapshot"
    ref = store.save(states, {**manifest, "kind": kind, "parent": parent}, key.replace("/", "-"))
    announcement = ModelAnnouncement(
        key=key,
        id=ref.id,
        kind=kind,
        parent=parent,
        sha256=ref.sha256,
        uri=ref.uri,
        producer=producer_name,
    )
    producer.send(topic, key=key.encode(), value=to_json(announcement))
    producer.flush()
    log.info("announced %s %s (parent %s)", key, ref.id, parent)
    return announcement


class ModelFeed:
    """Follows the ``models`` topic; the newest announcement per key."""

    def __init__(self, settings, broker, topics) -> None:
        from kafka import KafkaConsumer, TopicPartition

        from streams.kafka_config import consumer_config

        self.topic = topics.models
        self.outage_backoff_s = settings.kafka.outage_backoff_s
        self.consumer = KafkaConsumer(**consumer_config(settings, broker, None))
        self.partitions = [TopicPartition(self.topic, 0)]
        self.consumer.assign(self.partitions)
        self.consumer.seek_to_beginning(*self.partitions)
        self.newest: dict[str, ModelAnnouncement] = {}
        self.rejected = 0

    def poll(self, timeout_ms: int = 0) -> list[ModelAnnouncement]:
        """The announcements that arrived since the last call, oldest first."""
        polled = poll_or_wait(self.consumer, self.outage_backoff_s, timeout_ms=timeout_ms)
        fresh = []
        for records in polled.values():
            for m in records:
                try:
                    announcement = parse_json(m.value, ModelAnnouncement)
                except EventError as exc:
                    self.rejected += 1
                    log.error("unusable model announcement at offset %d: %s", m.offset, exc)
                    continue
                self.newest[announcement.key] = announcement
                fresh.append(announcement)
        return fresh

    def catch_up(self, timeout_s: float = 30.0) -> list[ModelAnnouncement]:
        """Reads to the end offsets seen now; returns what was read."""
        read: list[ModelAnnouncement] = []
        read_to_end(self.consumer, lambda ms: read.extend(self.poll(ms)), timeout_s)
        return read

    def latest(self, key: str) -> ModelAnnouncement | None:
        return self.newest.get(key)

    def load(self, announcement: ModelAnnouncement | None) -> Artifact | None:
        """The announced artefact, checksum verified; None (logged, counted) if unusable,
        and None for no announcement."""
        if announcement is None:
            return None
        ref = ArtifactRef(id=announcement.id, uri=announcement.uri, sha256=announcement.sha256)
        try:
            return ArtifactStore.load(ref)
        except (ArtifactIntegrityError, OSError) as exc:
            self.rejected += 1
            log.error("model %s %s not loaded: %s", announcement.key, announcement.id, exc)
            return None

    def close(self) -> None:
        self.consumer.close(autocommit=False)


def announce(
    settings, broker, states: States, manifest: dict[str, Any], **how: Any
) -> ModelAnnouncement:
    """One-shot :func:`publish_artifact` (``how``: its ``key``, ``producer_name``,
    ``parent``) for a job without a producer of its own."""
    from kafka import KafkaProducer

    from streams.kafka_config import common_config, producer_config
    from streams.topics import ensure_topics

    topics = ensure_topics(settings, common_config(settings, broker))
    producer = KafkaProducer(**producer_config(settings, broker))
    try:
        return publish_artifact(
            producer,
            topics.models,
            ArtifactStore.from_settings(settings),
            states,
            manifest,
            **how,
        )
    finally:
        producer.close()
