"""The faust stream processor on a real broker: samples, no leakage, DLQ, restart."""

from __future__ import annotations

import json
import random
import time

import pytest

from streams.events import DeadLetter, TrainingSample, parse_json
from streams.topics import Topics, ensure_topics
from tests.streams.helpers import CliProcess, common_config, drain, item_event, produce

pytestmark = pytest.mark.kafka


def _clicks(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "user_id": f"u{rng.randrange(6)}",
            "item_id": str(rng.randrange(12)),
            "label": rng.randrange(2),
            "ts": 1000.0 + k,
        }
        for k in range(n)
    ]


def expected_samples(clicks: list[dict], uploads: dict[str, float], history_len: int) -> dict:
    """Pure-Python recomputation, per (user, ts): history before the click, item flag."""
    history: dict[str, list[str]] = {}
    out = {}
    for c in clicks:
        before = list(history.get(c["user_id"], []))
        out[(c["user_id"], c["ts"])] = {
            "history": before,
            "item_known": c["item_id"] in uploads,
        }
        if c["label"] == 1:
            history[c["user_id"]] = (before + [c["item_id"]])[-history_len:]
    return out


def _run_processor(settings, broker, tmp_path):
    proc = CliProcess(settings, broker, "processor", "--datadir", str(tmp_path / "processor"))
    proc.wait_for("ready")
    return proc


def _samples(settings, broker, topics, want: int) -> list[TrainingSample]:
    got: list = []
    end = time.time() + 240  # a restarted processor first recovers and rebalances
    while time.time() < end:
        got = drain(settings, broker, topics.samples, idle_s=3, timeout_s=30)
        if len({parse_json(r.value, TrainingSample).sample_id for r in got}) >= want:
            break
    return [parse_json(r.value, TrainingSample) for r in got]


def _check(samples, clicks, uploads, history_len):
    want = expected_samples(clicks, uploads, history_len)
    unique = {s.sample_id: s for s in samples}
    missing = sorted(
        {(c["user_id"], c["ts"]) for c in clicks} - {(s.user_id, s.ts) for s in samples}
    )
    assert len(unique) == len(clicks), f"clicks without a sample (user, ts): {missing}"
    for s in samples:  # re-deliveries are identical to the first delivery
        assert s == unique[s.sample_id]
    for s in unique.values():
        exp = want[(s.user_id, s.ts)]
        assert s.history == exp["history"], s
        assert s.item_known == exp["item_known"]
    # item counts follow arrival order at the item's partition, which interleaves user
    # partitions: per item, the counts the samples saw are exactly 0..n-1, once each
    seen: dict[str, list[int]] = {}
    for s in unique.values():
        seen.setdefault(s.item_id, []).append(s.item_interactions)
    assert all(sorted(v) == list(range(len(v))) for v in seen.values()), seen
    print(f"{len(samples)} sample records for {len(clicks)} clicks")


@pytest.mark.smoke
def test_clicks_become_samples_with_history_before_the_click(
    kafka_settings, kafka_broker, tmp_path
):
    topics = ensure_topics(kafka_settings, common_config(kafka_settings, kafka_broker))
    history_len = kafka_settings.trainer.history_len
    uploads = {str(i): 900.0 for i in range(8)}  # items 8-11 are never uploaded
    produce(
        kafka_settings,
        kafka_broker,
        topics.items,
        [(i.encode(), item_event(int(i), uploaded_at=t)) for i, t in uploads.items()],
    )
    proc = _run_processor(kafka_settings, kafka_broker, tmp_path)
    try:
        clicks = _clicks(80)
        bad = [
            b"{oops",
            json.dumps({**clicks[0], "label": 7}).encode(),
            json.dumps({**clicks[0], "ts": "x"}).encode(),
        ]
        produce(
            kafka_settings,
            kafka_broker,
            topics.clicks,
            [(c["user_id"].encode(), json.dumps(c).encode()) for c in clicks]
            + [(b"u0", b) for b in bad],
        )
        samples = _samples(kafka_settings, kafka_broker, topics, len(clicks))
        _check(samples, clicks, uploads, history_len)
        letters = [
            parse_json(r.value, DeadLetter) for r in drain(kafka_settings, kafka_broker, topics.dlq)
        ]
        assert len(letters) == len(bad) and all(
            letter.component == "processor" for letter in letters
        )
    finally:
        proc.proc.terminate()
        proc.finish(timeout=60)


def test_processor_killed_and_restarted_recovers_its_tables(
    kafka_settings, kafka_broker, durable_broker, tmp_path
):
    topics = Topics.from_settings(kafka_settings)
    ensure_topics(kafka_settings, common_config(kafka_settings, kafka_broker))
    uploads: dict[str, float] = {}
    clicks = _clicks(120, seed=1)
    first, second = clicks[:60], clicks[60:]
    proc = _run_processor(kafka_settings, kafka_broker, tmp_path)
    produce(
        kafka_settings,
        kafka_broker,
        topics.clicks,
        [(c["user_id"].encode(), json.dumps(c).encode()) for c in first],
    )
    _samples(kafka_settings, kafka_broker, topics, len(first))
    proc.kill()  # SIGKILL: no clean shutdown, no final commit
    # restart with an empty state directory: the tables must come back from the changelogs
    proc = _run_processor(kafka_settings, kafka_broker, tmp_path / "fresh")
    try:
        produce(
            kafka_settings,
            kafka_broker,
            topics.clicks,
            [(c["user_id"].encode(), json.dumps(c).encode()) for c in second],
        )
        samples = _samples(kafka_settings, kafka_broker, topics, len(clicks))
        try:
            _check(samples, clicks, uploads, kafka_settings.trainer.history_len)
        except AssertionError:
            print(_where_are_they(kafka_settings, kafka_broker, topics, clicks, samples))
            raise
    finally:
        proc.proc.terminate()
        print("restarted processor log:\n" + proc.finish(timeout=60)[-3000:])


def _where_are_they(settings, broker, topics, clicks, samples) -> str:
    """Diagnosis of clicks without a sample: in clicks-by-item? committed past them?"""
    from kafka import KafkaAdminClient

    got = {(s.user_id, s.ts) for s in samples}
    lost = [c for c in clicks if (c["user_id"], c["ts"]) not in got]
    by_item = drain(settings, broker, topics.clicks_by_item)
    staged = {(json.loads(r.value)["user_id"], json.loads(r.value)["ts"]) for r in by_item}
    raw = drain(settings, broker, topics.clicks)
    where = {
        (json.loads(r.value)["user_id"], json.loads(r.value)["ts"]): (r.partition, r.offset)
        for r in raw
    }
    admin = KafkaAdminClient(**common_config(settings, broker))
    committed = admin.list_group_offsets(topics.processor_app)
    admin.close()
    lines = [f"committed offsets of the processor group: {committed}"]
    for c in lost:
        key = (c["user_id"], c["ts"])
        lines.append(f"lost {key}: clicks at {where.get(key)}, in clicks-by-item: {key in staged}")
    return "\n".join(lines)
