"""Shared fixtures: a real Kafka broker from the broker ladder (session-wide)."""

from __future__ import annotations

import uuid

import pytest

from idproxy.settings import load_settings

_RUNGS: list[str] = []


@pytest.fixture(scope="session")
def kafka_broker():
    """A broker by the ladder: an external one, testcontainers when Docker answers,
    Apache Kafka from jars, else Tansu. The rung is printed in the terminal summary."""
    from idproxy.broker_ladder import broker_from_ladder

    with broker_from_ladder(load_settings(), allow_docker=True) as broker:
        _RUNGS.append(f"rung {broker.rung} ({broker.name}) at {broker.bootstrap}")
        yield broker


@pytest.fixture
def kafka_settings(kafka_broker, tmp_path, record_property):
    """Settings that point at the test broker, with topics unique to this test."""
    record_property("kafka_rung", kafka_broker.rung)
    settings = load_settings()
    settings.kafka.bootstrap = kafka_broker.bootstrap
    settings.kafka.embedded_tansu = bool(kafka_broker.quirks)
    settings.kafka.topic_prefix = f"t{uuid.uuid4().hex[:8]}-"
    settings.kafka.partitions = 2
    settings.store.path = str(tmp_path / "store")
    settings.model.artifacts_dir = str(tmp_path / "artifacts")
    settings.worker.batch_max_items = 8
    settings.worker.batch_max_wait_ms = 200
    settings.model.id_dim = 8  # the tiny service's d
    return settings


@pytest.fixture(autouse=True)
def _no_orphan_cli_processes():
    """Kills `idproxy` subprocesses a test left running (e.g. after a failed assert)."""
    yield
    from tests.streams.helpers import kill_leftovers

    kill_leftovers()


def pytest_terminal_summary(terminalreporter):
    for line in _RUNGS:
        terminalreporter.write_line(f"kafka broker used by the integration tests: {line}")


@pytest.fixture
def durable_broker(kafka_broker):
    """Skips on the embedded Tansu rung, whose known defects these tests would hit."""
    if not kafka_broker.durable:
        pytest.skip(
            "Tansu (rung 4): ListOffsets/recovery defects (see FINDINGS.md) break replays "
            "from zero and faust table recovery; this runs on the Apache Kafka rung"
        )
    return kafka_broker
