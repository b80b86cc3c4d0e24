"""poll_or_wait: a broker outage raised out of poll is waited out; other errors still raise.

The real-broker paths are tests/streams/test_broker_restart.py and the fault drill
(tests/faults/test_kill_each_component.py, which SIGKILLs the broker); this checks the
error handling itself with a consumer whose poll raises what kafka-python 3.x raises.
"""

from __future__ import annotations

import time

import pytest
from kafka.errors import KafkaConnectionError, TopicAuthorizationFailedError

from streams.lifecycle import poll_or_wait


class RaisingConsumer:
    def __init__(self, error: Exception | None) -> None:
        self.error = error
        self.calls: list[dict] = []

    def poll(self, **kwargs):
        self.calls.append(kwargs)
        if self.error is not None:
            raise self.error
        return {"tp": ["record"]}


def test_an_outage_is_logged_waited_out_and_reads_as_no_records(caplog):
    consumer = RaisingConsumer(KafkaConnectionError("111 ECONNREFUSED"))
    started = time.monotonic()
    assert poll_or_wait(consumer, 0.2, timeout_ms=100, max_records=5) == {}
    assert time.monotonic() - started >= 0.2
    assert consumer.calls == [{"timeout_ms": 100, "max_records": 5}]
    assert "ECONNREFUSED" in caplog.text and "polling again" in caplog.text


def test_records_pass_through_and_non_retriable_errors_raise():
    assert poll_or_wait(RaisingConsumer(None), 0.0, timeout_ms=1) == {"tp": ["record"]}
    with pytest.raises(TopicAuthorizationFailedError):
        poll_or_wait(RaisingConsumer(TopicAuthorizationFailedError()), 0.0, timeout_ms=1)
