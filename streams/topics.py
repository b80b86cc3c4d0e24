"""Topic names, partitions and configs in one place, and their idempotent creation.

| topic | key | content |
|---|---|---|
| items | item id | ItemUploaded |
| clicks | user id | Click |
| clicks-by-item | item id | a click with its history (the processor's internal re-key) |
| samples | source partition | SampleBatch frame (streams/sample_batch.py) |
| item-features (compacted) | item id | ItemFeaturesRecord (binary frame) |
| proxies (compacted) | "<version>/<item id>" | ProxyRecordEvent (binary frame) |
| control (compacted) | version | VersionCommit |
| models (compacted) | "bundle" or "snapshot/<trainer>" | ModelAnnouncement (JSON) |
| dlq | source key | DeadLetter (``max.message.bytes`` = ``DLQ_MAX_BYTES``: a letter holds
  a record of the broker's limit in base64) |

Proxies are keyed by (version, item) so that compaction keeps every retained version's
values and a replica can rebuild each of them from zero.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

from idproxy.settings import Settings
from streams.dlq import DLQ_MAX_BYTES

log = logging.getLogger(__name__)

COMPACTED = {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"}
# the faust processor's tables; their changelog topics are created up front with the rest
# (faust creating them lazily raced with the first events: PartitionsMismatch, stuck stream)
PROCESSOR_TABLES = ("item-uploaded", "item-interactions", "user-history")


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Topics:
    """The project's topic names (with the configured prefix)."""

    items: str
    clicks: str
    clicks_by_item: str
    processor_app: str
    samples: str
    item_features: str
    proxies: str
    control: str
    models: str
    dlq: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Topics:
        p = settings.kafka.topic_prefix
        return cls(
            items=f"{p}items",
            clicks=f"{p}clicks",
            clicks_by_item=f"{p}clicks-by-item",
            processor_app=f"{p}idproxy-processor",
            samples=f"{p}samples",
            item_features=f"{p}item-features",
            proxies=f"{p}proxies",
            control=f"{p}control",
            models=f"{p}models",
            dlq=f"{p}dlq",
        )

    def specs(self, partitions: int) -> list[TopicSpec]:
        return [
            TopicSpec(self.items, partitions),
            TopicSpec(self.clicks, partitions),
            TopicSpec(self.clicks_by_item, partitions),
            TopicSpec(self.samples, partitions),
            TopicSpec(self.item_features, partitions, COMPACTED),
            TopicSpec(self.proxies, partitions, COMPACTED),
            TopicSpec(self.control, 1, COMPACTED),
            TopicSpec(self.models, 1, COMPACTED),
            TopicSpec(self.dlq, 1, {"max.message.bytes": str(DLQ_MAX_BYTES)}),
            *(TopicSpec(self.changelog(t), partitions, COMPACTED) for t in PROCESSOR_TABLES),
        ]

    def changelog(self, table: str) -> str:
        """The changelog topic faust uses for one of the processor's tables."""
        return f"{self.processor_app}-{table}-changelog"


def ensure_topics(settings: Settings, admin_config: dict) -> Topics:
    """Creates the missing topics (idempotent: existing ones are left as they are)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    topics = Topics.from_settings(settings)
    admin = KafkaAdminClient(**admin_config)
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(
                s.name, s.partitions, settings.kafka.replication_factor, topic_configs=s.config
            )
            for s in topics.specs(settings.kafka.partitions)
            if s.name not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process was first
                admin.create_topics(missing)
            log.info("created topics %s", [t.name for t in missing])
    finally:
        admin.close()
    return topics


def subscribe(consumer, topics: list[str], listener=None) -> None:
    """Joins ``consumer``'s group on ``topics`` only once its metadata holds their partitions.

    Why (kafka-python 3.0.12, reproduced here): a consumer that joins before it has a
    just-created topic's metadata is assigned nothing; the metadata update that follows
    triggers a second rebalance, and if that rebalance is still in flight when
    ``poll(timeout_ms=...)`` returns, the library marks the group stable without ever
    applying its result. The consumer then owns no partition and never rejoins (seen as
    a worker that "received nothing" in the quick demo, about 1 join in 15 on a loaded
    2-core machine). Subscribing first and then waiting for the partitions makes the
    group's metadata snapshot complete before the first join, so no second rebalance
    happens. ``tests/streams/test_subscribe.py`` repeats the race.
    """
    consumer.subscribe(topics, listener=listener)
    for topic in topics:
        partitions_for(consumer, topic)


def partitions_for(consumer, topic: str, timeout_s: float = 30.0) -> list[int]:
    """The partition ids of ``topic``, once ``consumer`` has its metadata (waits for it)."""
    end = time.time() + timeout_s
    while time.time() < end:
        ids = consumer.partitions_for_topic(topic)
        if ids:
            return sorted(ids)
        time.sleep(0.2)
    raise RuntimeError(f"topic {topic} has no partitions")
