"""Items and clicks produced without Python: Apache Kafka's console producer (Java) through
scripts/produce_with_console_producer.sh reach their topics as valid, keyed events."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from idproxy.broker_ladder import kafka_jars
from idproxy.settings import load_settings
from streams.events import Click, ItemUploaded, parse_json

pytestmark = pytest.mark.kafka

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "produce_with_console_producer.sh"

ITEMS = [
    {"item_id": "cp-1", "title": "Console item", "text": "from Java", "uploaded_at": 1.5},
    {"item_id": "cp-2", "title": "Another", "image_path": "posters/2.jpg"},
]
CLICKS = [
    {"user_id": "u1", "item_id": "cp-1", "label": 1, "ts": 10.0},
    {"user_id": "u2", "item_id": "cp-2", "label": 0, "ts": 11, "context": {"page": "home"}},
    {"user_id": "u1", "item_id": "cp-2", "label": 1, "ts": 12.25, "context": {"ref": "a|b"}},
]


@pytest.fixture
def jars() -> Path:
    """The Apache Kafka jars with the console producer; skips when Java or they are missing."""
    if shutil.which("java") is None:
        pytest.skip("java is not on PATH: the console producer is a Java tool")
    folder = kafka_jars(load_settings())
    if folder is None or not any(folder.glob("kafka-tools-*.jar")):
        pytest.skip("no Apache Kafka jars with kafka-tools: run scripts/fetch_kafka.sh")
    return folder


def _produce(bootstrap: str, topic: str, lines: list[str], sep: str, tmp: Path, jars: Path):
    path = tmp / f"{topic}.jsonl"
    path.write_text("".join(f"{line}\n" for line in lines))
    env = {**os.environ, "IDPROXY_KAFKA_JARS": str(jars)}
    done = subprocess.run(
        ["bash", str(SCRIPT), bootstrap, topic, str(path), sep],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr


def _read_all(settings, broker, topics: list[str], expected: int) -> list:
    from kafka import KafkaConsumer, TopicPartition

    from streams.kafka_config import consumer_config
    from streams.topics import partitions_for

    consumer = KafkaConsumer(**consumer_config(settings, broker, None))
    try:
        parts = [TopicPartition(t, p) for t in topics for p in partitions_for(consumer, t)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        records: list = []
        end = time.time() + 60
        while len(records) < expected and time.time() < end:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def test_console_producer_items_and_clicks_reach_their_topics(
    jars: Path, kafka_settings, kafka_broker, tmp_path: Path
) -> None:
    from streams.kafka_config import common_config
    from streams.topics import ensure_topics

    topics = ensure_topics(kafka_settings, common_config(kafka_settings, kafka_broker))
    bootstrap = kafka_broker.bootstrap
    _produce(
        bootstrap,
        topics.items,
        [f"{e['item_id']}\t{json.dumps(e)}" for e in ITEMS],
        "\t",
        tmp_path,
        jars,
    )
    _produce(
        bootstrap,
        topics.clicks,
        [f"{c['user_id']}|{json.dumps(c)}" for c in CLICKS],
        "|",
        tmp_path,
        jars,
    )

    records = _read_all(
        kafka_settings, kafka_broker, [topics.items, topics.clicks], len(ITEMS) + len(CLICKS)
    )
    items = [r for r in records if r.topic == topics.items]
    clicks = [r for r in records if r.topic == topics.clicks]
    assert len(items) == len(ITEMS) and len(clicks) == len(CLICKS)

    sent = {e["item_id"]: json.dumps(e).encode() for e in ITEMS}
    for r in items:  # the bytes of the line after the key, verbatim
        assert r.value == sent[r.key.decode()]
        assert parse_json(r.value, ItemUploaded).item_id == r.key.decode()

    by_user: dict[str, list[Click]] = {}
    for r in sorted(clicks, key=lambda r: (r.partition, r.offset)):
        click = parse_json(r.value, Click)  # split at the first "|": "a|b" stays whole
        assert r.key.decode() == click.user_id
        by_user.setdefault(click.user_id, []).append(click)
    expected: dict[str, list[Click]] = {}
    for c in CLICKS:
        expected.setdefault(c["user_id"], []).append(Click(**c))
    assert by_user == expected  # per-user order is kept: one key, one partition
