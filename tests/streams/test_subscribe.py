"""`streams.topics.subscribe`: a group consumer on a just-created topic owns its partitions.

The race it guards against (kafka-python 3.0.12) hit about 1 join in 15 on a loaded 2-core
machine with a plain ``consumer.subscribe``: the consumer was assigned nothing and stayed
so. Here every round creates a new topic and a new group, joins with short polls (as the
worker does) and must receive every record.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import NewTopic

from streams.kafka_config import common_config, consumer_config
from streams.topics import subscribe
from tests.streams.helpers import produce

pytestmark = pytest.mark.kafka

ROUNDS = 40
PARTITIONS = 4


def test_a_consumer_joining_a_new_topic_owns_every_partition(kafka_settings, kafka_broker):
    settings, broker = kafka_settings, kafka_broker
    admin = KafkaAdminClient(**common_config(settings, broker))
    try:
        for round_ in range(ROUNDS):
            topic = f"{settings.kafka.topic_prefix}join-{round_}"
            admin.create_topics([NewTopic(topic, PARTITIONS, settings.kafka.replication_factor)])
            group = f"join-{uuid.uuid4().hex[:8]}"
            consumer = KafkaConsumer(**consumer_config(settings, broker, group))
            try:
                sent = [(str(k).encode(), b"x") for k in range(8)]
                # the records arrive while the consumer joins (it polls right away)
                sender = threading.Timer(0.3, produce, (settings, broker, topic, sent))
                sender.start()
                subscribe(consumer, [topic])
                got, end = 0, time.time() + 30
                while got < len(sent) and time.time() < end:
                    for batch in consumer.poll(timeout_ms=200).values():
                        got += len(batch)
                sender.join()
                owned = sorted(tp.partition for tp in consumer.assignment())
                assert (round_, got, owned) == (round_, len(sent), list(range(PARTITIONS)))
            finally:
                consumer.close(autocommit=False)
    finally:
        admin.close()
