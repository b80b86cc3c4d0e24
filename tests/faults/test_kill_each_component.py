"""Fault drill on the live system: each component SIGKILLed in turn, then restarted.

`idproxy demo --quick --tiny --kill-each --bad-share 0.03` kills the proxy worker, the faust
processor, the IDProxy trainer, the store materializer and the Apache Kafka broker itself
(rung 3), one after another during the replay, while malformed events are mixed into the
uploads and clicks. The end state must be exact: every item has a servable proxy in the
active version, both trainers trained on every click exactly once (duplicates from
re-deliveries are dropped by sample id), and the DLQ holds exactly the malformed events.
"""

from __future__ import annotations

import pytest

from idproxy.settings import load_settings
from streams.broker import kafka_jars
from tests.demo.test_demo_quick import assert_exact_end_state, run_demo

pytestmark = pytest.mark.kafka


def test_every_component_killed_and_restarted_loses_nothing(tmp_path):
    if kafka_jars(load_settings()) is None:
        pytest.skip("the broker kill needs the Apache Kafka jars (rung 3): scripts/fetch_kafka.sh")
    summary = run_demo(tmp_path, "--kill-each", "--bad-share", "0.03")
    assert summary["faults_injected"] == {
        "worker-0": 1,
        "processor": 1,
        "trainer-idproxy": 1,
        "materializer": 1,
        "broker": 1,
    }
    assert summary["broker_rung"] == 3
    assert_exact_end_state(summary)
