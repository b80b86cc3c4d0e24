"""The live pipeline on a real broker: items -> workers -> proxies topic -> store."""

from __future__ import annotations

import base64
import json
import time

import numpy as np
import pytest

from proxy_model.service import ProxyService
from store import ProxyStore
from streams.events import DeadLetter, ProxyRecordEvent, decode_frame, parse_json
from streams.materializer import Materializer
from streams.topics import Topics
from streams.worker import ProxyWorker
from tests.streams.helpers import CliProcess, drain, item_event, produce

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def service():
    return ProxyService.tiny()


def _materialize(settings, broker, group="m1") -> ProxyStore:
    store = ProxyStore(settings.store.path, dim=settings.model.id_dim)
    Materializer(settings, broker, store, group_id=group).run(idle_exit_s=4)
    return store


@pytest.mark.smoke
def test_every_published_item_becomes_servable(kafka_settings, kafka_broker, service):
    topics = Topics.from_settings(kafka_settings)
    n = 30
    worker = ProxyWorker(kafka_settings, kafka_broker, service)  # creates the topics
    produce(
        kafka_settings,
        kafka_broker,
        topics.items,
        [(str(i).encode(), item_event(i)) for i in range(n)],
    )
    stats = worker.run(idle_exit_s=4)
    assert stats.items == n and stats.dead_letters == 0
    store = _materialize(kafka_settings, kafka_broker)
    res = store.get_many([str(i) for i in range(n)])
    assert res.found.all()
    assert store.active_version() == service.proxy_version
    # the served vectors are the model's, for the right item
    from proxy_model.encoder import ItemContent

    want = service.run([ItemContent("Item number 3. a test item")])
    np.testing.assert_allclose(res.p_fine[3], want.p_fine[0].numpy(), atol=1e-5)
    store.close()


def test_bad_items_go_to_the_dlq_with_reasons_and_the_worker_keeps_going(
    kafka_settings, kafka_broker, service
):
    topics = Topics.from_settings(kafka_settings)
    kafka_settings.worker.max_text_chars = 200
    worker = ProxyWorker(kafka_settings, kafka_broker, service)
    bad = {
        "malformed json": b"{not json",
        "wrong type": json.dumps({"item_id": 5, "title": ["x"]}).encode(),
        "unknown field": item_event(900, colour="red"),
        "schema version": item_event(901, schema_version=2),
        "oversized text": item_event(902, text="x" * 500),
        "corrupt image": item_event(903, image_b64=base64.b64encode(b"\x89PNG broken").decode()),
        "empty title": item_event(904, title=""),
        "image path without root": item_event(905, image_path="/etc/passwd"),
        "tombstone": None,
    }
    messages = [(b"bad", v) for v in bad.values()] + [
        (str(i).encode(), item_event(i)) for i in range(10)
    ]
    produce(kafka_settings, kafka_broker, topics.items, messages)
    stats = worker.run(idle_exit_s=4)
    assert stats.items == 10
    letters = [
        parse_json(r.value, DeadLetter) for r in drain(kafka_settings, kafka_broker, topics.dlq)
    ]
    assert len(letters) == len(bad)
    assert all(letter.reason and letter.source_topic == topics.items for letter in letters)
    reasons = " | ".join(letter.reason for letter in letters)
    for needle in (
        "Invalid JSON",
        "Extra inputs",
        "schema_version",
        "limit 200",
        "corrupt image",
        "IMAGE_ROOT",
        "tombstone",
    ):
        assert needle in reasons, needle
    originals = {bytes(letter.value_b64) for letter in letters}
    assert b"{not json" in originals  # the original bytes are kept


def test_worker_killed_mid_batch_loses_no_item(kafka_settings, kafka_broker):
    topics = Topics.from_settings(kafka_settings)
    n = 120
    kafka_settings.worker.batch_max_items = 4
    first = CliProcess(kafka_settings, kafka_broker, "worker", "--tiny", "--client-id", "w1")
    first.wait_for("ready")
    items = [(str(i).encode(), item_event(i)) for i in range(n)]
    produce(kafka_settings, kafka_broker, topics.items, items)
    # wait until the worker is well into the stream, then kill it without warning
    while len(drain(kafka_settings, kafka_broker, topics.proxies, idle_s=0.5, timeout_s=5)) < 20:
        assert first.proc.poll() is None, first.output()
    first.kill()
    second = CliProcess(
        kafka_settings, kafka_broker, "worker", "--tiny", "--client-id", "w2", "--idle-exit", "5"
    )
    out = second.finish()
    assert second.proc.returncode == 0, out
    records = drain(kafka_settings, kafka_broker, topics.proxies)
    got = [decode_frame(r.value, ProxyRecordEvent)[0].item_id for r in records]
    assert set(got) == {str(i) for i in range(n)}  # none lost
    print(f"proxy records {len(got)} for {n} items: {len(got) - n} re-processed after the kill")
    store = _materialize(kafka_settings, kafka_broker)
    assert store.get_many([str(i) for i in range(n)]).found.all()
    store.close()


def test_two_workers_split_the_partitions(kafka_settings, kafka_broker):
    topics = Topics.from_settings(kafka_settings)
    kafka_settings.worker.batch_max_items = 4
    procs = [
        CliProcess(
            kafka_settings,
            kafka_broker,
            "worker",
            "--tiny",
            "--client-id",
            f"w{k}",
            "--idle-exit",
            "8",
        )
        for k in range(2)
    ]
    for p in procs:  # both members own one of the two partitions before any item arrives
        p.wait_for_match(r"assigned partitions \[\d\]\n(?![\s\S]*assigned partitions)")
    n = 80
    items = [(str(i).encode(), item_event(i)) for i in range(n)]
    produce(kafka_settings, kafka_broker, topics.items, items)
    outputs = [p.finish() for p in procs]
    counts = [int(o.split("stopped: ")[1].split(" items")[0]) for o in outputs]
    assert sum(counts) >= n and all(c > 0 for c in counts), outputs  # both did work
    records = drain(kafka_settings, kafka_broker, topics.proxies)
    got = [decode_frame(r.value, ProxyRecordEvent)[0].item_id for r in records]
    assert set(got) == {str(i) for i in range(n)}
    assert len(got) <= n * 1.2  # about once each; re-deliveries on rebalance are idempotent


def test_replica_rebuilds_the_store_from_zero(
    kafka_settings, kafka_broker, durable_broker, service, tmp_path
):
    topics = Topics.from_settings(kafka_settings)
    worker = ProxyWorker(kafka_settings, kafka_broker, service)
    produce(
        kafka_settings,
        kafka_broker,
        topics.items,
        [(str(i).encode(), item_event(i)) for i in range(15)],
    )
    worker.run(idle_exit_s=4)
    first = _materialize(kafka_settings, kafka_broker, group="primary")
    want = first.get_many([str(i) for i in range(15)])
    first.close()
    kafka_settings.store.path = str(tmp_path / "replica")
    replica = _materialize(kafka_settings, kafka_broker, group="replica")
    got = replica.get_many([str(i) for i in range(15)])
    assert got.found.all() and replica.active_version() == service.proxy_version
    np.testing.assert_array_equal(got.p_fine, want.p_fine)
    replica.close()


def test_sigterm_finishes_the_batch_commits_and_exposes_metrics(kafka_settings, kafka_broker):
    import urllib.request

    from streams.broker import free_port

    topics = Topics.from_settings(kafka_settings)
    port = free_port()
    kafka_settings.worker.batch_max_items = 4
    worker = CliProcess(
        kafka_settings, kafka_broker, "worker", "--tiny", "--client-id", "wm", metrics_port=port
    )
    worker.wait_for("ready")
    n = 40
    produce(
        kafka_settings,
        kafka_broker,
        topics.items,
        [(str(i).encode(), item_event(i)) for i in range(n)],
    )
    deadline = time.time() + 120  # a stuck worker fails the test with its log, not a hang
    while len(drain(kafka_settings, kafka_broker, topics.proxies, idle_s=0.5, timeout_s=5)) < 8:
        assert worker.proc.poll() is None, worker.output()
        assert time.time() < deadline, "fewer than 8 proxies in 120 s\n" + worker.output()[-3000:]
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for name in (
        "idproxy_worker_items_total",
        "idproxy_worker_batch_seconds",
        "idproxy_worker_lag",
        "idproxy_worker_dead_letters",
    ):
        assert name in metrics
    worker.proc.terminate()  # SIGTERM
    out = worker.finish(timeout=120)
    assert worker.proc.returncode == 0 and "stopped" in out
    done = int(out.split("stopped: ")[1].split(" items")[0])
    # everything it reported done is in the topic, and a restart picks up exactly the rest
    rest = CliProcess(
        kafka_settings, kafka_broker, "worker", "--tiny", "--client-id", "wr", "--idle-exit", "5"
    ).finish()
    remaining = int(rest.split("stopped: ")[1].split(" items")[0])
    assert done + remaining == n, (done, remaining)
