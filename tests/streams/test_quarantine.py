"""``CrashQuarantine.handle`` (the worker's and the materializer's batch handling) against a
fake consumer: the order of markers, work and commits. The real-broker deaths are in
tests/streams/test_poison_records.py."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from kafka import TopicPartition
from kafka.structs import OffsetAndMetadata

from streams.quarantine import CrashQuarantine

TP = TopicPartition("t", 0)


class FakeConsumer:
    """Committed offsets with metadata, as the group coordinator keeps them."""

    def __init__(self, committed: OffsetAndMetadata | None = None) -> None:
        self.offsets = {TP: committed} if committed is not None else {}
        self.commits: list[dict] = []

    def committed(self, tp, metadata: bool = False):
        return self.offsets.get(tp)

    def commit(self, offsets: dict) -> None:
        self.commits.append({tp.partition: (om.offset, om.metadata) for tp, om in offsets.items()})
        self.offsets.update(offsets)


def _records(*offsets: int) -> list:
    return [SimpleNamespace(topic="t", partition=0, offset=o) for o in offsets]


def _marker(start: int, end: int, deaths: int = 0, alone: bool = False) -> OffsetAndMetadata:
    doc = {"inflight": [start, end], "deaths": deaths, **({"alone": True} if alone else {})}
    return OffsetAndMetadata(start, json.dumps(doc), -1)


def _run(quarantine: CrashQuarantine, records: list, fail_on: int | None = None) -> list:
    events: list = []

    def process(batch: list) -> None:
        events.append(("process", [m.offset for m in batch]))
        if fail_on is not None and fail_on in [m.offset for m in batch]:
            raise RuntimeError("not the record's fault")

    quarantine.handle(
        records,
        process,
        lambda: events.append(("flush",)),
        lambda m, reason: events.append(("dead letter", m.offset, reason)),
    )
    return events


def test_without_a_marker_the_batch_is_marked_then_processed_whole():
    consumer = FakeConsumer()
    quarantine = CrashQuarantine(consumer, max_deaths=2)
    assert _run(quarantine, _records(5, 6, 7)) == [("process", [5, 6, 7])]
    assert consumer.commits == [{0: (5, '{"inflight":[5,7],"deaths":0}')}]


def test_after_a_death_in_a_batch_its_records_go_alone_and_are_committed_each():
    consumer = FakeConsumer(_marker(5, 6))
    quarantine = CrashQuarantine(consumer, max_deaths=2)
    events = _run(quarantine, _records(5, 6, 7, 8))
    assert events == [("process", [5]), ("flush",), ("process", [6]), ("flush",)] + [
        ("process", [7, 8])
    ]
    assert consumer.commits == [
        {0: (5, '{"inflight":[5,5],"deaths":0,"alone":true}')},
        {0: (6, "")},
        {0: (6, '{"inflight":[6,6],"deaths":0,"alone":true}')},
        {0: (7, "")},
        {0: (7, '{"inflight":[7,8],"deaths":0}')},
    ]


def test_a_record_dead_alone_max_deaths_times_is_dead_lettered():
    consumer = FakeConsumer(_marker(5, 5, deaths=1, alone=True))
    quarantine = CrashQuarantine(consumer, max_deaths=2)
    events = _run(quarantine, _records(5, 6))
    assert events == [
        ("dead letter", 5, "killed its consumer 2 times"),
        ("flush",),
        ("process", [6]),
    ]
    assert consumer.commits[0] == {0: (6, "")}


def test_an_exception_clears_the_markers_and_propagates():
    consumer = FakeConsumer()
    quarantine = CrashQuarantine(consumer, max_deaths=2)
    with pytest.raises(RuntimeError):
        _run(quarantine, _records(5, 6), fail_on=6)
    assert consumer.commits[-1] == {0: (5, "")}  # offset kept, marker gone
    quarantine.on_assigned()
    assert _run(quarantine, _records(5, 6)) == [("process", [5, 6])]  # nobody blamed
