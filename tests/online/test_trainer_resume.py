"""Resume after a crash: SIGKILL the trainer mid-stream, restart, compare with a clean run.

Why the runs can match exactly: the samples topic has one partition and every batch is
filled to ``online_batch_size`` (4 records of 8 samples) from data that is already in the
topic, so both runs see the same batches; checkpoints fall on batch boundaries; new table rows are initialised
from (seed, capacity); Adam's state is checkpointed; torch runs single-threaded. The
tolerance (1e-5 absolute on every parameter and on probe predictions) only leaves room
for float reordering; in practice the difference is 0.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from streams.topics import ensure_topics
from tests.online.synthetic import item_records, sample_messages, samples
from tests.streams.helpers import CliProcess, common_config, produce
from trainer.checkpoint import CheckpointDir, model_state

BATCH = 32
N_FIRST, N_TOTAL = 20 * BATCH, 1200  # 1200 = 37 full batches + 16
PER_RECORD = 8  # samples per record: the topic's offsets count records


@pytest.fixture
def trainer_env(monkeypatch):
    for key, value in {
        "IDPROXY_TRAINER_ONLINE_BATCH_SIZE": str(BATCH),
        "IDPROXY_TRAINER_BATCH_MAX_WAIT_MS": "2000",
        "IDPROXY_TRAINER_CHECKPOINT_EVERY_BATCHES": "8",
        "IDPROXY_TRAINER_CHECKPOINT_EVERY_S": "3600",
        "IDPROXY_TRAINER_REPORT_EVERY_BATCHES": "1",
        "IDPROXY_TRAINER_THREADS": "1",
        "IDPROXY_TRAINER_INITIAL_ROWS": "8",
    }.items():
        monkeypatch.setenv(key, value)


def _trainer(settings, broker, state: Path, group: str, *extra: str) -> CliProcess:
    return CliProcess(
        settings,
        broker,
        "trainer",
        "--state-dir",
        str(state),
        "--group",
        group,
        *extra,
    )


def _final(state: Path) -> tuple[dict, dict]:
    tensors, manifest, _ = CheckpointDir(state).load()
    return model_state(tensors), manifest


def _lines(state: Path) -> list[dict]:
    return [json.loads(x) for x in (state / "metrics.jsonl").read_text().splitlines()]


def test_sigkill_resume_matches_uninterrupted_run(
    kafka_settings, durable_broker, trainer_env, tmp_path
):
    kafka_settings.kafka.partitions = 1
    topics = ensure_topics(kafka_settings, common_config(kafka_settings, durable_broker))
    feats, proxies, control = item_records(40)
    produce(kafka_settings, durable_broker, topics.item_features, feats)
    produce(kafka_settings, durable_broker, topics.proxies, proxies)
    produce(kafka_settings, durable_broker, topics.control, control)
    stream = samples(N_TOTAL, n_users=25, n_items=40)
    produce(
        kafka_settings,
        durable_broker,
        topics.samples,
        sample_messages(stream[:N_FIRST], PER_RECORD),
    )

    # run 1: processes 20 batches, checkpoints after 8 and 16, then is SIGKILLed
    crashed = tmp_path / "crashed"
    first = _trainer(kafka_settings, durable_broker, crashed, "g-crash")
    first.wait_for("trainer ready", timeout=90)
    end = time.time() + 90
    while not (crashed / "metrics.jsonl").exists() or _lines(crashed)[-1]["samples"] < N_FIRST:
        assert time.time() < end, first.output()[-3000:]
        time.sleep(0.2)
    first.kill()
    assert CheckpointDir(crashed).latest() == "ckpt-000000016"
    produce(
        kafka_settings,
        durable_broker,
        topics.samples,
        sample_messages(stream[N_FIRST:], PER_RECORD),
    )

    # run 2 resumes from the checkpoint (samples 513..640 are processed a second time)
    second = _trainer(kafka_settings, durable_broker, crashed, "g-crash", "--idle-exit", "4")
    second.wait_for("resumed from ckpt-000000016", timeout=90)
    out = second.finish(timeout=120)
    assert second.proc.returncode == 0, out[-3000:]

    # the reference: one uninterrupted run over the whole stream
    clean = tmp_path / "clean"
    ref = _trainer(kafka_settings, durable_broker, clean, "g-clean", "--idle-exit", "4")
    ref.finish(timeout=150)
    assert ref.proc.returncode == 0, ref.output()[-3000:]

    got, got_manifest = _final(crashed)
    want, want_manifest = _final(clean)
    for m in (got_manifest, want_manifest):
        assert m["samples"] == N_TOTAL and m["offsets"] == {"0": N_TOTAL // PER_RECORD}
    # every sample was trained on at least once: the crashed run's lines reached 640 before
    # the kill and its resumed predictions cover all 1200 samples
    summary = json.loads((crashed / "summary.json").read_text())
    assert summary["n_all"] == N_TOTAL
    assert max(x["samples"] for x in _lines(crashed)) == N_TOTAL
    assert got_manifest["item_table_ids"] == want_manifest["item_table_ids"]
    assert got.keys() == want.keys()
    worst = max((got[k].float() - want[k].float()).abs().max().item() for k in got)
    print(f"max parameter difference crashed vs clean: {worst}")
    assert worst <= 1e-5, f"max parameter difference {worst}"
    # and the committed offset of the group covers the whole stream
    from kafka import KafkaConsumer, TopicPartition

    from streams.kafka_config import consumer_config

    c = KafkaConsumer(**consumer_config(kafka_settings, durable_broker, "g-crash"))
    assert c.committed(TopicPartition(topics.samples, 0)) == N_TOTAL // PER_RECORD
    c.close()
    # a re-proxy version was published after the checkpoints (idproxy variant)
    assert summary["proxy_version"].startswith("reproxy-")
    assert torch.isfinite(got["fine_head.adaptor.0.weight"]).all()
