"""The go-live waits for the history samples: it counts the samples in the frames of
`samples`, not the records (real broker)."""

from __future__ import annotations

import pytest

from idproxy.demo_golive import SamplesInTopic
from streams.sample_batch import SampleBatch, sample_key
from streams.topics import ensure_topics
from tests.streams.helpers import common_config, produce

pytestmark = pytest.mark.kafka


def _frame(n: int, first: int) -> bytes:
    rows = [
        dict(sample_key=sample_key(0, first + k), user="u", item="i", label=1, ts=1.0,
             history=[], item_interactions=k, item_age_s=None, item_known=False)
        for k in range(n)
    ]  # fmt: skip
    return SampleBatch.from_rows(rows, history_len=3).encode()


def test_samples_in_topic_sums_the_frames_counts(kafka_settings, kafka_broker):
    topics = ensure_topics(kafka_settings, common_config(kafka_settings, kafka_broker))
    produce(kafka_settings, kafka_broker, topics.samples, [(b"0", _frame(5, 0)), (b"1", b"junk")])
    counter = SamplesInTopic(kafka_settings, kafka_broker, topics.samples)
    try:
        assert counter.count() == 5
        produce(kafka_settings, kafka_broker, topics.samples, [(b"0", _frame(7, 5))])
        assert counter.count() == 12  # each frame read once
        assert counter.count() == 12
    finally:
        counter.close()
