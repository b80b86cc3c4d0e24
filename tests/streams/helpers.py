"""Helpers for the integration tests: produce, drain a topic, run loops in threads."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

from kafka import KafkaConsumer, KafkaProducer

from streams.kafka_config import common_config, consumer_config, producer_config


def wait_until(pred, timeout: float = 10.0, interval: float = 0.02) -> bool:
    """True as soon as ``pred()`` is, False after ``timeout`` seconds."""
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(interval)
    return False


def produce(settings, broker, topic: str, messages: list[tuple[bytes | None, bytes]]) -> None:
    producer = KafkaProducer(**producer_config(settings, broker))
    for key, value in messages:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


def drain(settings, broker, topic: str, idle_s: float = 3.0, timeout_s: float = 60.0) -> list:
    """Every record of ``topic`` from the beginning (no group), until idle."""
    consumer = KafkaConsumer(topic, **consumer_config(settings, broker, None))
    records, last = [], time.time()
    end = time.time() + timeout_s
    while time.time() < end and time.time() - last < idle_s:
        for batch in consumer.poll(timeout_ms=300).values():
            records.extend(batch)
            last = time.time()
    consumer.close()
    return records


def item_event(i: int, **extra) -> bytes:
    return json.dumps(
        {
            "item_id": str(i),
            "title": f"Item number {i}",
            "text": "a test item",
            "uploaded_at": time.time(),
            **extra,
        }
    ).encode()


class CliProcess:
    """An `idproxy` subprocess (or ``python -m module``) pointed at the test broker and topics; output goes to a file
    (a pipe nobody reads would fill up and block the child). Every instance is recorded in
    ``RUNNING``; the autouse fixture in tests/conftest.py kills what a test left running
    (also when it failed), so no orphan outlives its test."""

    def __init__(
        self,
        settings,
        broker,
        *args: str,
        metrics_port: int = 0,
        module: str = "idproxy.cli",
        env: dict | None = None,
    ) -> None:
        env = {
            **os.environ,
            **broker.child_env(),
            "IDPROXY_KAFKA_TOPIC_PREFIX": settings.kafka.topic_prefix,
            "IDPROXY_KAFKA_PARTITIONS": str(settings.kafka.partitions),
            "IDPROXY_WORKER_BATCH_MAX_ITEMS": str(settings.worker.batch_max_items),
            "IDPROXY_WORKER_BATCH_MAX_WAIT_MS": str(settings.worker.batch_max_wait_ms),
            "IDPROXY_MODEL_ID_DIM": str(settings.model.id_dim),
            "IDPROXY_STORE_PATH": settings.store.path,
            "IDPROXY_MODEL_ARTIFACTS_DIR": settings.model.artifacts_dir,
            "IDPROXY_WORKER_METRICS_PORT": str(metrics_port),
            **(env or {}),
        }
        fd, self.log_path = tempfile.mkstemp(prefix="idproxy-cli-", suffix=".log")
        self.log = os.fdopen(fd, "w")
        RUNNING.append(self)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        with open(self.log_path) as fh:
            return fh.read()

    def wait_for(self, needle: str, timeout: float = 120) -> None:
        end = time.time() + timeout
        while needle not in self.output():
            if self.proc.poll() is not None or time.time() > end:
                raise AssertionError(f"{needle!r} never appeared:\n{self.output()[-3000:]}")
            time.sleep(0.2)

    def wait_for_match(self, pattern: str, timeout: float = 120) -> None:
        """Waits until the output matches the regular expression ``pattern``."""
        end = time.time() + timeout
        while not re.search(pattern, self.output()):
            if self.proc.poll() is not None or time.time() > end:
                raise AssertionError(f"{pattern!r} never matched:\n{self.output()[-3000:]}")
            time.sleep(0.2)

    def finish(self, timeout: float = 300) -> str:
        self.proc.wait(timeout=timeout)
        return self.output()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


RUNNING: list[CliProcess] = []


def kill_leftovers() -> None:
    """SIGKILLs every CliProcess still running and forgets them all."""
    for cli in RUNNING:
        if cli.proc.poll() is None:
            cli.proc.kill()
            cli.proc.wait(timeout=30)
    RUNNING.clear()


__all__ = ["common_config", "CliProcess", "drain", "item_event", "produce"]


def start_processor(settings, broker, datadir: str, env: dict | None = None) -> CliProcess:
    """`idproxy processor` with a Prometheus port; returns once its readiness gauge says
    it consumes (``idproxy_processor_ready``), as the demo waits for it."""
    from idproxy.supervisor import metrics_probe
    from streams.broker import free_port

    port = free_port()
    proc = CliProcess(
        settings, broker, "processor", "--datadir", datadir, "--metrics-port", str(port), env=env
    )
    ready = metrics_probe("processor", port)
    if not wait_until(lambda: ready() or proc.proc.poll() is not None, timeout=120, interval=0.2):
        raise AssertionError(f"the processor is not ready after 120 s:\n{proc.output()[-3000:]}")
    if proc.proc.poll() is not None:
        raise AssertionError(f"the processor exited:\n{proc.output()[-3000:]}")
    return proc
