"""Repeated, overlapping faults on the live system.

`idproxy demo --quick --tiny --fault-rounds 3 --pause-consumer --bad-share 0.05` SIGKILLs
and restarts the proxy worker, the faust processor, the IDProxy trainer, the store
materializer and the Apache Kafka broker itself (rung 3) three times each, at seeded random
moments of the replay, and SIGSTOPs the worker past its group session timeout once, while
5 % malformed events are mixed into the uploads and clicks. The end state must be exact: every item has a servable proxy in the
active version, both trainers trained on every click exactly once (duplicates from
re-deliveries are dropped by sample id), and the DLQ holds exactly the malformed events.
A component that exits on its own (a bad record, a bug) fails the demo: only the injected
faults restart anything. The run also makes every check of the fault-free quick demo
(`tests/demo/test_demo_quick.py`), which therefore only runs where the jars are missing.
"""

from __future__ import annotations

import pytest

from idproxy.broker_ladder import kafka_jars
from idproxy.settings import load_settings
from tests.demo.test_demo_quick import assert_demo_outputs, assert_exact_end_state, run_demo

pytestmark = pytest.mark.kafka


def test_every_component_killed_and_restarted_loses_nothing(tmp_path):
    if kafka_jars(load_settings()) is None:
        pytest.skip("the broker kill needs the Apache Kafka jars (rung 3): scripts/fetch_kafka.sh")
    summary = run_demo(tmp_path, "--fault-rounds", "3", "--pause-consumer", "--bad-share", "0.05")
    assert summary["faults_injected"] == {
        "worker-0": 3,
        "processor": 3,
        "trainer-idproxy": 3,
        "materializer": 3,
        "broker": 3,
        "pause:worker-0": 1,
    }
    assert summary["broker_rung"] == 3
    assert_exact_end_state(summary)
    assert_demo_outputs(summary, tmp_path / "demo")
