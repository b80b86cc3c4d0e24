"""The faust stream processor on a real broker: sample frames, no leakage, DLQ, restart."""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter

import pytest

from streams.events import DeadLetter, parse_json
from streams.sample_batch import SampleBatch, id_hash, id_hashes, sample_key
from streams.topics import Topics, ensure_topics
from tests.streams.helpers import (
    common_config,
    drain,
    item_event,
    produce,
    start_processor,
)

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
    """Pure-Python recomputation, per (user hash, ts): history before the click (item
    hashes), item flag and age."""
    history: dict[str, list[str]] = {}
    out = {}
    for c in clicks:
        before = list(history.get(c["user_id"], []))
        upload = uploads.get(c["item_id"])
        out[(id_hash(c["user_id"]), c["ts"])] = {
            "item": id_hash(c["item_id"]),
            "label": c["label"],
            "history": tuple(id_hashes(before[-history_len:]).tolist()),
            "item_known": upload is not None,
            "item_age_s": None if upload is None else c["ts"] - upload,
        }
        if c["label"] == 1:
            history[c["user_id"]] = (before + [c["item_id"]])[-history_len:]
    return out


def _run_processor(settings, broker, tmp_path, env: dict | None = None):
    datadir = str(tmp_path / "processor")
    proc = start_processor(settings, broker, datadir, env=env)
    return proc


def _rows(frame: SampleBatch, partition: int) -> list[dict]:
    """The samples of one frame as plain values (ids as their hashes)."""
    rows = []
    for k in range(frame.count):
        age = float(frame.item_age_s[k])
        rows.append(
            {
                "sample_key": int(frame.sample_key[k]),
                "user": int(frame.user[k]),
                "item": int(frame.item[k]),
                "label": int(frame.label[k]),
                "ts": float(frame.ts[k]),
                "history": tuple(frame.history[k, : frame.history_count[k]].tolist()),
                "item_interactions": int(frame.item_interactions[k]),
                "item_age_s": None if math.isnan(age) else age,
                "item_known": bool(frame.item_known[k]),
                "partition": partition,
            }
        )
    return rows


def _frames(settings, broker, topics, want: int) -> list:
    """Every record of ``samples`` (until ``want`` distinct sample keys), each decoded."""
    got: list = []
    end = time.time() + 240  # a restarted processor first recovers and rebalances
    while time.time() < end:
        records = drain(settings, broker, topics.samples, idle_s=3, timeout_s=30)
        got = [(r, SampleBatch.decode(r.value)) for r in records]
        if len({key for _, f in got for key in f.sample_key.tolist()}) >= want:
            break
    return got


def _samples(frames) -> list[dict]:
    return [row for record, frame in frames for row in _rows(frame, record.partition)]


def _by_item_partitions(settings, broker, topics) -> dict[int, int]:
    """sample key -> the partition of clicks-by-item its re-keyed click is on."""
    out = {}
    for r in drain(settings, broker, topics.clicks_by_item, idle_s=2):
        _, partition, offset = json.loads(r.value)["sample_id"].rsplit("/", 2)
        out[sample_key(int(partition), int(offset))] = r.partition
    return out


def _rekeyed(settings, broker, topics, clicks: int) -> list:
    """The records of clicks-by-item, once there are ``clicks`` of them (2 minutes at most)."""
    end = time.time() + 120
    while time.time() < end:
        records = drain(settings, broker, topics.clicks_by_item, idle_s=1)
        if len(records) >= clicks:
            break
    return records


def _full_frames(settings, broker, topics, clicks: int, batch_max: int) -> int:
    """Samples in the full frames of ``clicks`` re-keyed clicks (once all are re-keyed)."""
    per_partition = Counter(r.partition for r in _rekeyed(settings, broker, topics, clicks))
    return sum(n // batch_max * batch_max for n in per_partition.values())


def _check(frames, clicks, uploads, history_len, by_item: dict[int, int], batch_max: int):
    want = expected_samples(clicks, uploads, history_len)
    samples = _samples(frames)
    unique = {s["sample_key"]: s for s in samples}
    missing = sorted(set(want) - {(s["user"], s["ts"]) for s in samples})
    assert len(unique) == len(clicks), f"clicks without a sample (user hash, ts): {missing}"
    for s in samples:  # re-deliveries are identical to the first delivery
        assert s == unique[s["sample_key"]]
    for s in unique.values():
        exp = want[(s["user"], s["ts"])]
        assert (s["item"], s["label"], s["history"]) == (exp["item"], exp["label"], exp["history"])
        assert s["item_known"] == exp["item_known"]
        if exp["item_age_s"] is None:
            assert s["item_age_s"] is None, s
        else:
            assert s["item_age_s"] == pytest.approx(exp["item_age_s"], rel=1e-6), s
    # item counts follow arrival order at the item's partition, which interleaves user
    # partitions: per item, the counts the samples saw are exactly 0..n-1, once each
    seen: dict[int, list[int]] = {}
    for s in unique.values():
        seen.setdefault(s["item"], []).append(s["item_interactions"])
    assert all(sorted(v) == list(range(len(v))) for v in seen.values()), seen
    # a frame holds the samples of one clicks-by-item partition, on the same partition of
    # samples, keyed by that partition's number
    for record, frame in frames:
        assert record.key == str(record.partition).encode()
        assert 1 <= frame.count <= batch_max
        sources = {by_item[k] for k in frame.sample_key.tolist()}
        assert sources == {record.partition}, (record.partition, sources)
    sizes = [frame.count for _, frame in frames]
    print(
        f"{len(samples)} samples in {len(frames)} frames (sizes {sizes}) for {len(clicks)} clicks"
    )
    return sizes


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
        frames = _frames(kafka_settings, kafka_broker, topics, len(clicks))
        by_item = _by_item_partitions(kafka_settings, kafka_broker, topics)
        batch_max = kafka_settings.processor.samples_batch_max
        sizes = _check(frames, clicks, uploads, history_len, by_item, batch_max)
        assert max(sizes) > 1, "clicks that arrive together share a frame"
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
    """The first processor sends only full frames of 8 (its linger is 10 minutes), so when
    it is SIGKILLed some samples are still in its buffers, their clicks unacknowledged: the
    restarted one (empty state directory) must emit them, and the duplicates of frames
    that went out are exact repeats."""
    topics = Topics.from_settings(kafka_settings)
    ensure_topics(kafka_settings, common_config(kafka_settings, kafka_broker))
    uploads: dict[str, float] = {}
    clicks = _clicks(120, seed=1)
    first, second = clicks[:60], clicks[60:]
    batch_max = 8
    env = {"IDPROXY_PROCESSOR_SAMPLES_BATCH_MAX": str(batch_max)}
    lingering = {**env, "IDPROXY_PROCESSOR_SAMPLES_LINGER_MS": "600000"}
    proc = _run_processor(kafka_settings, kafka_broker, tmp_path, lingering)
    produce(
        kafka_settings,
        kafka_broker,
        topics.clicks,
        [(c["user_id"].encode(), json.dumps(c).encode()) for c in first],
    )
    # the first processor sends only full frames: wait for them, then kill it with the
    # rest of its samples still buffered (their clicks not acknowledged)
    full = _full_frames(kafka_settings, kafka_broker, topics, len(first), batch_max)
    end = time.time() + 120
    while time.time() < end:
        records = drain(kafka_settings, kafka_broker, topics.samples, idle_s=2, timeout_s=30)
        sent = {k for r in records for k in SampleBatch.decode(r.value).sample_key.tolist()}
        if len(sent) >= full:
            break
    proc.kill()  # SIGKILL: no clean shutdown, no final commit, buffers lost
    assert full <= len(sent) < len(first), (full, len(sent))
    # restart with an empty state directory: the tables must come back from the changelogs
    proc = _run_processor(kafka_settings, kafka_broker, tmp_path / "fresh", env)
    try:
        produce(
            kafka_settings,
            kafka_broker,
            topics.clicks,
            [(c["user_id"].encode(), json.dumps(c).encode()) for c in second],
        )
        frames = _frames(kafka_settings, kafka_broker, topics, len(clicks))
        by_item = _by_item_partitions(kafka_settings, kafka_broker, topics)
        try:
            history_len = kafka_settings.trainer.history_len
            _check(frames, clicks, uploads, history_len, by_item, batch_max)
        except AssertionError:
            print(_where_are_they(kafka_settings, kafka_broker, topics, clicks, _samples(frames)))
            raise
    finally:
        proc.proc.terminate()
        print("restarted processor log:\n" + proc.finish(timeout=60)[-3000:])


def _where_are_they(settings, broker, topics, clicks, samples) -> str:
    """Diagnosis of clicks without a sample: in clicks-by-item? committed past them?"""
    from kafka import KafkaAdminClient

    got = {(s["user"], s["ts"]) for s in samples}
    lost = [c for c in clicks if (id_hash(c["user_id"]), c["ts"]) not in got]
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


def test_a_stopped_processor_sends_its_buffered_samples_and_commits(
    kafka_settings, kafka_broker, tmp_path
):
    """SIGTERM while samples wait in the buffers (linger 10 minutes): faust waits for every
    event's acknowledgement, so the processor sends them, commits and exits promptly."""
    topics = ensure_topics(kafka_settings, common_config(kafka_settings, kafka_broker))
    env = {"IDPROXY_PROCESSOR_SAMPLES_LINGER_MS": "600000"}
    proc = _run_processor(kafka_settings, kafka_broker, tmp_path, env)
    clicks = _clicks(20, seed=2)
    produce(
        kafka_settings,
        kafka_broker,
        topics.clicks,
        [(c["user_id"].encode(), json.dumps(c).encode()) for c in clicks],
    )
    _rekeyed(kafka_settings, kafka_broker, topics, len(clicks))
    time.sleep(8)  # the re-keyed clicks reach the second step
    assert drain(kafka_settings, kafka_broker, topics.samples, idle_s=1) == []
    started = time.time()
    proc.proc.terminate()
    out = proc.finish(timeout=60)
    assert proc.proc.returncode == 0, out[-3000:]
    print(f"stopped in {time.time() - started:.1f} s")
    frames = _frames(kafka_settings, kafka_broker, topics, len(clicks))
    assert len({k for _, f in frames for k in f.sample_key.tolist()}) == len(clicks)
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(**common_config(kafka_settings, kafka_broker))
    committed = admin.list_group_offsets(topics.processor_app)[topics.processor_app]
    admin.close()
    by_item = sum(o.offset for tp, o in committed.items() if tp.topic == topics.clicks_by_item)
    assert by_item == len(clicks), committed
