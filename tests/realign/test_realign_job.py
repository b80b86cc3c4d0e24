"""`idproxy realign` on a drifting ID table, through the real pipeline.

The online trainer learns item-ID embeddings from genre-driven clicks (they drift away from
the untrained coarse head's proxies). A scheduled re-alignment run refits φ on them; the
guardrail accepts it, and the materializer publishes the new version in the store. A second
run with ``--shuffle-targets`` (a candidate trained on permuted targets) is rejected and
publishes nothing.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest
import torch

from store import open_store
from streams.topics import ensure_topics
from tests.online.synthetic import item_records, sample_messages, samples
from tests.streams.helpers import CliProcess, common_config, produce
from trainer.checkpoint import CheckpointDir, model_state


@pytest.fixture
def job_env(monkeypatch):
    for key, value in {
        "IDPROXY_TRAINER_ONLINE_BATCH_SIZE": "64",
        "IDPROXY_TRAINER_BATCH_MAX_WAIT_MS": "500",
        "IDPROXY_TRAINER_CHECKPOINT_EVERY_BATCHES": "20",
        "IDPROXY_TRAINER_REPORT_EVERY_BATCHES": "10",
        "IDPROXY_TRAINER_THREADS": "1",
        "IDPROXY_TRAINER_ONLINE_LR": "0.01",
        "IDPROXY_STAGE1_LR": "0.003",
        "IDPROXY_STAGE1_BATCH_SIZE": "64",
        "IDPROXY_STAGE1_EPOCHS": "60",
        "IDPROXY_STAGE1_TAU_C": "0.1",
    }.items():
        monkeypatch.setenv(key, value)


def _json_lines(text: str) -> list[dict]:
    return [json.loads(x) for x in re.findall(r"^\{.*\"job\": \"realign\".*\}$", text, re.M)]


def test_realign_publishes_new_coarse_version_and_rejects_shuffled(
    kafka_settings, durable_broker, job_env, tmp_path
):
    broker = durable_broker
    topics = ensure_topics(kafka_settings, common_config(kafka_settings, broker))
    feats, proxies, control = item_records(80)
    produce(kafka_settings, broker, topics.item_features, feats)
    produce(kafka_settings, broker, topics.proxies, proxies)
    produce(kafka_settings, broker, topics.control, control)
    produce(kafka_settings, broker, topics.samples, sample_messages(samples(6000, 40, 80)))

    state = tmp_path / "trainer"
    trainer = CliProcess(
        kafka_settings, broker, "trainer", "--state-dir", str(state), "--idle-exit", "3",
    )  # fmt: skip
    materializer = CliProcess(kafka_settings, broker, "materialize")
    materializer.wait_for("materializer ready", timeout=90)
    assert trainer.finish(timeout=180) and trainer.proc.returncode == 0, trainer.output()[-3000:]
    tensors, manifest, _ = CheckpointDir(state).load()
    counts = model_state(tensors)["item_table.counts"]
    assert manifest["samples"] == 6000 and int((counts >= 5).sum()) == 80
    snapshot = _announced(kafka_settings, broker, topics, "snapshot/idproxy")
    assert snapshot.manifest["checkpoint"] == manifest["version"]  # the last checkpoint's
    assert torch.equal(snapshot.states["item_table"]["counts"], counts[1:81])

    # the job reads the trainer's snapshot from `models`, never the trainer's folder
    common = ["--tiny", "--snapshot-of", "idproxy"]
    job = CliProcess(
        kafka_settings, broker, "realign", "--schedule", "--interval-s", "3600",
        "--state-dir", str(tmp_path / "realign"), *common,
    )  # fmt: skip
    job.wait_for('"job": "realign"', timeout=120)
    job.proc.send_signal(signal.SIGTERM)
    out = job.finish(timeout=60)
    (good,) = _json_lines(out)
    print("accepted run:", json.dumps(good))
    assert good["accepted"], good
    assert good["new"]["recall@10"] > good["old"]["recall@10"]
    assert good["published_items"] == 80
    assert json.loads((tmp_path / "realign" / "state.json").read_text())["runs"] == 1

    bad_job = CliProcess(kafka_settings, broker, "realign", "--once", "--shuffle-targets", *common)
    (bad,) = _json_lines(bad_job.finish(timeout=120))
    print("shuffled run:", json.dumps(bad))
    assert not bad["accepted"] and "regressed" in bad["reason"], bad
    assert bad["current_version"] == good["new_version"]  # it was compared to the new φ
    assert "new_version" not in bad
    bundle = _announced(kafka_settings, broker, topics, "bundle")
    assert bundle.manifest["proxy_version"] == good["new_version"]
    assert bundle.manifest["realigned_from_snapshot"] == good["snapshot"] == snapshot.id

    _wait_active(kafka_settings, materializer, good["new_version"])


def _announced(settings, broker, topics, key: str):
    """The newest artefact announced under ``key`` on ``models``, loaded and verified."""
    from streams.model_feed import ModelFeed

    feed = ModelFeed(settings, broker, topics)
    try:
        feed.catch_up()
        artifact = feed.load(feed.latest(key))
    finally:
        feed.close()
    assert artifact is not None, f"nothing usable announced under {key}"
    return artifact


def _wait_active(settings, materializer: CliProcess, version: str) -> None:
    """Stops the materializer once idle and checks the store's active version."""
    import time

    time.sleep(3)  # the last records are polled within 0.5 s
    materializer.proc.send_signal(signal.SIGTERM)
    materializer.finish(timeout=60)
    store = open_store(settings)
    try:
        names = [v.version for v in store.versions()]
        assert store.active_version() == version, (names, materializer.output()[-2000:])
        assert store.count_items(version) == 80
        assert not any(n.startswith("realign-") and n != version for n in names)
    finally:
        store.close()
    assert Path(settings.store.path).exists()
