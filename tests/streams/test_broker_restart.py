"""A broker restart on the Apache Kafka rung: no data loss, components reconnect."""

from __future__ import annotations

import pytest

from idproxy.broker_ladder import apache_kafka, kafka_jars
from idproxy.settings import load_settings
from streams.broker import free_port
from streams.events import ProxyRecordEvent, decode_frame
from streams.topics import Topics
from tests.streams.helpers import CliProcess, drain, item_event, produce

pytestmark = pytest.mark.kafka


def test_worker_survives_a_broker_restart_without_losing_items(tmp_path, kafka_settings):
    jars = kafka_jars(load_settings())
    if jars is None:
        pytest.skip("needs the Apache Kafka jars (rung 3): run scripts/fetch_kafka.sh")
    port = free_port()
    workdir = tmp_path / "kafka"
    topics = Topics.from_settings(kafka_settings)
    n = 60
    with apache_kafka(jars, workdir=workdir, port=port) as broker:
        worker = CliProcess(kafka_settings, broker, "worker", "--tiny", "--client-id", "w")
        worker.wait_for("ready")
        produce(
            kafka_settings,
            broker,
            topics.items,
            [(str(i).encode(), item_event(i)) for i in range(n // 2)],
        )
        while len(drain(kafka_settings, broker, topics.proxies, idle_s=1, timeout_s=10)) < n // 2:
            assert worker.proc.poll() is None, worker.output()
    # the broker is down now; the worker keeps retrying. Same data dir, same port:
    with apache_kafka(jars, workdir=workdir, port=port) as broker:
        produce(
            kafka_settings,
            broker,
            topics.items,
            [(str(i).encode(), item_event(i)) for i in range(n // 2, n)],
        )
        got: set[str] = set()
        for _ in range(30):
            records = drain(kafka_settings, broker, topics.proxies, idle_s=2, timeout_s=20)
            got = {decode_frame(r.value, ProxyRecordEvent)[0].item_id for r in records}
            if len(got) >= n:
                break
        assert worker.proc.poll() is None, "the worker did not survive the restart"
        worker.proc.terminate()
        out = worker.finish(timeout=120)
        assert got == {str(i) for i in range(n)}, out[-2000:]
