"""`idproxy trainer --variant id-only`: the baseline runs on the same stream without proxies;
repeated samples are dropped and malformed records go to the DLQ, whole, with a reason."""

from __future__ import annotations

import json

import numpy as np

from streams.events import DeadLetter
from streams.topics import ensure_topics
from tests.online.synthetic import raw_frame, sample_messages, samples
from tests.streams.helpers import CliProcess, common_config, drain, produce

BAD_SAMPLES = [
    (b"0", b'{"sample_id": "x/0/1", "user_id": "u2", "item_id": "1", "label": 1}'),  # JSON
    (b"0", b"IDPF\xff\xfe{"),  # a frame header that is not UTF-8 JSON
    (b"0", raw_frame(samples(2, 1, 1, start=10_000), label=np.array([1, 7], np.int8))),
    (b"0", None),  # tombstone
]

KEYS = {"t", "samples", "auc_all", "auc_new", "logloss_all", "n_new", "checkpoint", "proxy_version"}


def test_id_only_trainer_writes_metrics_predictions_summary_and_dead_letters(
    kafka_settings, kafka_broker, tmp_path, monkeypatch
):
    monkeypatch.setenv("IDPROXY_TRAINER_ONLINE_BATCH_SIZE", "50")
    monkeypatch.setenv("IDPROXY_TRAINER_BATCH_MAX_WAIT_MS", "300")
    monkeypatch.setenv("IDPROXY_TRAINER_THREADS", "1")
    topics = ensure_topics(kafka_settings, common_config(kafka_settings, kafka_broker))
    data = samples(500, 20, 30)
    messages = sample_messages(data + data[:50])  # frames of 8; the last 50 samples repeat
    produce(
        kafka_settings, kafka_broker, topics.samples, messages[:25] + BAD_SAMPLES + messages[25:]
    )
    state = tmp_path / "id-only"
    proc = CliProcess(
        kafka_settings, kafka_broker, "trainer", "--variant", "id-only",
        "--state-dir", str(state), "--idle-exit", "3",
    )  # fmt: skip
    out = proc.finish(timeout=120)
    assert proc.proc.returncode == 0 and "trainer ready (id-only" in out, out[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["samples"] == 500 and summary["n_all"] == 500  # the 50 repeats were dropped
    dead = [
        DeadLetter.model_validate_json(r.value)
        for r in drain(kafka_settings, kafka_broker, topics.dlq)
    ]
    dead = [d for d in dead if d.component == "trainer"]
    assert sorted(d.value_b64 for d in dead) == sorted(v or b"" for _, v in BAD_SAMPLES)
    assert all(d.source_topic == topics.samples and d.reason for d in dead)
    assert any("label" in d.reason for d in dead) and any("tombstone" in d.reason for d in dead)
    assert summary["proxy_version"] is None and 0.0 <= summary["cum_auc_all"] <= 1.0
    lines = [json.loads(x) for x in (state / "metrics.jsonl").read_text().splitlines()]
    assert set(lines[-1]) >= KEYS and lines[-1]["samples"] == 500
    with np.load(state / "predictions.npz", allow_pickle=False) as p:
        assert {k: p[k].dtype.kind for k in p.files} == {
            "score": "f",
            "label": "i",
            "is_new": "b",
            "ts": "f",
        }
        assert len(p["score"]) == 500
