"""Every standard Kafka codec in every consumer (real broker): records produced with gzip,
snappy, lz4 and zstd are read by the worker (kafka-python), the materializer (kafka-python),
the online trainer (kafka-python, ``samples`` frames) and the faust processor (aiokafka). The topics keep the producer's codec
(``compression.type=producer``), so each consumer really decompresses every codec."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from kafka import KafkaProducer

from proxy_model.service import ProxyService
from store import ProxyStore
from streams.events import (
    DeadLetter,
    ProxyRecordEvent,
    VersionCommit,
    decode_frame,
    encode_frame,
    parse_json,
    to_json,
)
from streams.kafka_config import common_config, producer_config
from streams.materializer import Materializer
from streams.sample_batch import SampleBatch, id_hash
from streams.topics import ensure_topics
from streams.worker import ProxyWorker
from tests.streams.helpers import CliProcess, drain, item_event, start_processor

pytestmark = pytest.mark.kafka

CODECS = ("gzip", "snappy", "lz4", "zstd")


def produce_with(settings, broker, codec: str, topic: str, messages) -> None:
    """Produces with kafka-python's ``compression_type=codec`` (as a non-Python client
    setting ``compression.type`` would)."""
    config = {**producer_config(settings, broker), "compression_type": codec, "linger_ms": 50}
    producer = KafkaProducer(**config)
    for key, value in messages:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


def test_the_worker_reads_items_in_every_codec(kafka_settings, kafka_broker):
    worker = ProxyWorker(kafka_settings, kafka_broker, ProxyService.tiny())
    topics = worker.topics
    want = set()
    for codec in CODECS:
        ids = [f"{codec}-{k}" for k in range(3)]
        want |= set(ids)
        produce_with(
            kafka_settings,
            kafka_broker,
            codec,
            topics.items,
            [(i.encode(), item_event(0, item_id=i)) for i in ids],
        )
    stats = worker.run(idle_exit_s=4)
    assert stats.items == len(want) and stats.dead_letters == 0
    records = drain(kafka_settings, kafka_broker, topics.proxies)
    assert {decode_frame(r.value, ProxyRecordEvent)[0].item_id for r in records} == want


def test_the_materializer_reads_proxies_and_control_in_every_codec(
    kafka_settings, kafka_broker, tmp_path
):
    topics = ensure_topics(kafka_settings, common_config(kafka_settings, kafka_broker))
    dim = kafka_settings.model.id_dim
    rng = np.random.default_rng(0)
    want = {}
    for n, codec in enumerate(CODECS):
        rows = []
        for k in range(3):
            item = f"{codec}-{k}"
            header = ProxyRecordEvent(
                item_id=item,
                proxy_version="codecs",
                encoder_version="e1",
                uploaded_at=time.time(),
                produced_at=time.time(),
            )
            arrays = {
                "p_coarse": rng.standard_normal(dim).astype(np.float32),
                "p_fine": rng.standard_normal(dim).astype(np.float32),
            }
            want[item] = arrays["p_fine"]
            rows.append((f"codecs/{item}".encode(), encode_frame(header, arrays)))
        produce_with(kafka_settings, kafka_broker, codec, topics.proxies, rows)
        # the version marker travels with one codec per run of the loop (the last one wins)
        marker = VersionCommit(version="codecs", expected_items=3 * (n + 1))
        produce_with(
            kafka_settings, kafka_broker, codec, topics.control, [(b"codecs", to_json(marker))]
        )
    store = ProxyStore(tmp_path / "store", dim=dim)
    Materializer(kafka_settings, kafka_broker, store, group_id="codecs").run(idle_exit_s=4)
    ids = sorted(want)
    got = store.get_many(ids)
    assert got.found.all() and store.active_version() == "codecs"
    np.testing.assert_array_equal(got.p_fine, np.stack([want[i] for i in ids]))
    store.close()


def test_the_processor_reads_clicks_and_items_in_every_codec(
    kafka_settings, kafka_broker, tmp_path
):
    topics = ensure_topics(kafka_settings, common_config(kafka_settings, kafka_broker))
    proc = start_processor(kafka_settings, kafka_broker, str(tmp_path / "p"))
    try:
        clicks = []
        for n, codec in enumerate(CODECS):
            item = f"item-{codec}"
            produce_with(
                kafka_settings,
                kafka_broker,
                codec,
                topics.items,
                [(item.encode(), item_event(0, item_id=item, uploaded_at=100.0))],
            )
            batch = [
                {"user_id": f"u{k}", "item_id": item, "label": 1, "ts": 1000.0 + 10 * n + k}
                for k in range(3)
            ]
            clicks += batch
            produce_with(
                kafka_settings,
                kafka_broker,
                codec,
                topics.clicks,
                [(c["user_id"].encode(), json.dumps(c).encode()) for c in batch],
            )
        want = {(id_hash(c["user_id"]), c["ts"]) for c in clicks}
        samples: dict = {}  # sample key -> (user, ts)
        end = time.time() + 180
        while time.time() < end and len(samples) < len(want):
            for r in drain(kafka_settings, kafka_broker, topics.samples, idle_s=2, timeout_s=20):
                b = SampleBatch.decode(r.value)
                for key, user, ts in zip(b.sample_key, b.user, b.ts, strict=True):
                    samples[int(key)] = (int(user), float(ts))
            assert proc.proc.poll() is None, proc.output()[-3000:]
        assert set(samples.values()) == want
        letters = [
            parse_json(r.value, DeadLetter)
            for r in drain(kafka_settings, kafka_broker, topics.dlq, idle_s=1)
        ]
        assert letters == []
        assert "UnsupportedCodecError" not in proc.output()
    finally:
        proc.proc.terminate()
        proc.finish(timeout=60)


def test_the_trainer_reads_samples_frames_in_every_codec(kafka_settings, kafka_broker, tmp_path):
    """The online trainer (kafka-python) reads ``samples`` frames produced in every codec."""
    from tests.online.synthetic import sample_messages, samples

    topics = ensure_topics(kafka_settings, common_config(kafka_settings, kafka_broker))
    data = samples(40 * len(CODECS), n_users=5, n_items=9)
    for n, codec in enumerate(CODECS):
        part = data[40 * n : 40 * (n + 1)]
        produce_with(kafka_settings, kafka_broker, codec, topics.samples, sample_messages(part))
    trainer = CliProcess(
        kafka_settings, kafka_broker, "trainer", "--variant", "id-only",
        "--state-dir", str(tmp_path / "trainer"), "--idle-exit", "3",
        env={"IDPROXY_TRAINER_THREADS": "1"},
    )  # fmt: skip
    out = trainer.finish(timeout=120)
    assert trainer.proc.returncode == 0, out[-3000:]
    assert json.loads(out.strip().splitlines()[-1])["samples"] == len(data)
    letters = drain(kafka_settings, kafka_broker, topics.dlq, idle_s=1)
    assert letters == [] and "UnsupportedCodecError" not in out
