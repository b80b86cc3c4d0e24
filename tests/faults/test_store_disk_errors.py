"""A store directory that refuses writes gives a clear error, not a crash loop.

* Unwritable location: `idproxy materialize` exits at once with code 2 and says why.
* Full disk (simulated with RLIMIT_FSIZE: writes past the limit fail with EFBIG, as on a
  full filesystem): the materializer logs the failure, commits nothing, stays up and keeps
  retrying; once space is back (the limit lifted) every proxy is written and published,
  and nothing was dead-lettered.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from store import ProxyStore
from streams.events import ProxyRecordEvent, VersionCommit, encode_frame, to_json
from streams.topics import ensure_topics
from tests.streams.helpers import common_config, drain, produce

pytestmark = pytest.mark.kafka


def _materializer(settings, broker, log_path, *, file_limit: int | None = None):
    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, resource.RLIM_INFINITY))

    env = {
        **os.environ,
        **broker.child_env(),
        "IDPROXY_KAFKA_TOPIC_PREFIX": settings.kafka.topic_prefix,
        "IDPROXY_KAFKA_PARTITIONS": str(settings.kafka.partitions),
        "IDPROXY_MODEL_ID_DIM": str(settings.model.id_dim),
        "IDPROXY_STORE_PATH": settings.store.path,
    }
    log = open(log_path, "w")  # noqa: SIM115 - the child writes to it until it exits
    return subprocess.Popen(
        [sys.executable, "-m", "idproxy.cli", "materialize"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=limit_file_size if file_limit else None,
    )


def test_unwritable_store_location_is_a_clear_error(kafka_settings, kafka_broker, tmp_path):
    kafka_settings.store.path = "/proc/idproxy-store"  # a filesystem that refuses mkdir
    proc = _materializer(kafka_settings, kafka_broker, tmp_path / "m.log")
    assert proc.wait(timeout=60) == 2
    out = (tmp_path / "m.log").read_text()
    assert "cannot open store for writing at /proc/idproxy-store" in out
    assert "Traceback" not in out


def test_full_disk_is_retried_without_loss_or_restart(kafka_settings, kafka_broker, tmp_path):
    topics = ensure_topics(kafka_settings, common_config(kafka_settings, kafka_broker))
    d, n, version = kafka_settings.model.id_dim, 1000, "v-full-disk"
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        header = ProxyRecordEvent(
            item_id=str(i),
            proxy_version=version,
            encoder_version="e",
            uploaded_at=time.time(),
            produced_at=time.time(),
        )
        vectors = {
            "p_coarse": rng.normal(size=d).astype(np.float32),
            "p_fine": rng.normal(size=d).astype(np.float32),
        }
        records.append((f"{version}/{i}".encode(), encode_frame(header, vectors)))
    log_path = tmp_path / "m.log"
    proc = _materializer(kafka_settings, kafka_broker, log_path, file_limit=16 * 1024)
    try:
        produce(kafka_settings, kafka_broker, topics.proxies, records)
        commit = VersionCommit(version=version, expected_items=n)
        produce(kafka_settings, kafka_broker, topics.control, [(version.encode(), to_json(commit))])
        end = time.time() + 120
        while "store write failed" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.time() < end, log_path.read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(3)
        assert proc.poll() is None, "the materializer must stay up while the disk is full"
        # space is back
        inf = resource.RLIM_INFINITY
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (inf, inf))
        end = time.time() + 120
        count = 0
        while time.time() < end:
            try:
                with ProxyStore(kafka_settings.store.path, dim=d, read_only=True) as store:
                    if store.active_version() == version:
                        count = store.count_items(version)
                        got = store.get_many([str(i) for i in range(n)])
                        break
            except Exception:  # noqa: BLE001 - not written yet
                pass
            time.sleep(1)
        assert count == n, log_path.read_text()[-3000:]
        assert got.found.all() and not got.corrupt.any()
        assert proc.poll() is None
        letters = drain(kafka_settings, kafka_broker, topics.dlq, idle_s=2, timeout_s=10)
        assert letters == [], [json.loads(r.value)["reason"] for r in letters]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
