"""``CrashQuarantine.handle`` (the worker's and the materializer's batch handling) against a
fake consumer: the order of markers, work and commits. The real-broker deaths are in
tests/streams/test_poison_records.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from kafka import TopicPartition
from kafka.structs import OffsetAndMetadata

from streams.inflight_markers import CommittedOffsetMarkers, FileMarkers, Marker
from streams.quarantine import CrashQuarantine

TP = TopicPartition("t", 0)
REPO = Path(__file__).resolve().parents[2]


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
    quarantine = CrashQuarantine(CommittedOffsetMarkers(consumer), max_deaths=2)
    assert _run(quarantine, _records(5, 6, 7)) == [("process", [5, 6, 7])]
    assert consumer.commits == [{0: (5, '{"inflight":[5,7],"deaths":0}')}]


def test_after_a_death_in_a_batch_its_records_go_alone_and_are_committed_each():
    consumer = FakeConsumer(_marker(5, 6))
    quarantine = CrashQuarantine(CommittedOffsetMarkers(consumer), max_deaths=2)
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
    quarantine = CrashQuarantine(CommittedOffsetMarkers(consumer), max_deaths=2)
    events = _run(quarantine, _records(5, 6))
    assert events == [
        ("dead letter", 5, "killed its consumer 2 times"),
        ("flush",),
        ("process", [6]),
    ]
    assert consumer.commits[0] == {0: (6, "")}


def test_an_exception_clears_the_markers_and_propagates():
    consumer = FakeConsumer()
    quarantine = CrashQuarantine(CommittedOffsetMarkers(consumer), max_deaths=2)
    with pytest.raises(RuntimeError):
        _run(quarantine, _records(5, 6), fail_on=6)
    assert consumer.commits[-1] == {0: (5, "")}  # offset kept, marker gone
    quarantine.on_assigned()
    assert _run(quarantine, _records(5, 6)) == [("process", [5, 6])]  # nobody blamed


# ---------------------------------------------------------------- markers in a file
def _run_in_order(quarantine: CrashQuarantine, records: list, in_flight: list = ()) -> list:
    events: list = []
    quarantine.handle_in_order(
        records,
        lambda batch: events.append(("process", [m.offset for m in batch])),
        lambda m, reason: events.append(("dead letter", m.offset, reason)),
        lambda: events.append(("flush",)),
        in_flight=list(in_flight),
    )
    return events


def test_file_markers_cover_the_records_in_flight_and_survive_the_process(tmp_path):
    path = tmp_path / "inflight.json"
    quarantine = CrashQuarantine(FileMarkers(path), max_deaths=2)
    events = _run_in_order(quarantine, _records(7, 8), in_flight=_records(5, 6))
    assert events == [("process", [7, 8])]
    assert FileMarkers(path).read(TP) == Marker(5, 8)  # what a restart after a death finds
    quarantine.clear()
    assert FileMarkers(path).read(TP) is None


def test_after_a_death_the_suspects_go_alone_in_stream_order(tmp_path):
    path = tmp_path / "inflight.json"
    FileMarkers(path).write({TP: Marker(6, 7)})  # the previous run died on 6..7
    quarantine = CrashQuarantine(FileMarkers(path), max_deaths=2)
    events = _run_in_order(quarantine, _records(4, 5, 6, 7, 8, 9))
    assert events == [("process", [4, 5]), ("process", [6]), ("process", [7])] + [
        ("process", [8, 9])
    ]


def test_a_record_dead_alone_max_deaths_times_is_dead_lettered_in_its_place(tmp_path):
    path = tmp_path / "inflight.json"
    FileMarkers(path).write({TP: Marker(6, 6, deaths=1, alone=True)})
    quarantine = CrashQuarantine(FileMarkers(path), max_deaths=2)
    events = _run_in_order(quarantine, _records(5, 6, 7))
    assert events == [
        ("process", [5]),
        ("dead letter", 6, "killed its consumer 2 times"),
        ("flush",),
        ("process", [7]),
    ]
    # it is remembered: a consumer that reads it again (a restart) skips it
    again = CrashQuarantine(FileMarkers(path), max_deaths=2)
    assert _run_in_order(again, _records(5, 6, 7)) == [("process", [5]), ("process", [7])]


def test_the_processor_dead_letters_a_record_that_kills_it_after_n_deaths(tmp_path):
    """Real deaths (``os._exit``) of a process running the processor's per-record handling:
    the record dies twice alone, then the third run dead-letters it and handles the rest."""
    from tests.streams.killer_records import KILL_CODE, KILL_OFFSET

    codes = []
    while len(codes) < 5 and (not codes or codes[-1] != 0):
        cmd = [sys.executable, "-m", "tests.streams.killer_records", str(tmp_path), "2"]
        codes.append(subprocess.run(cmd, timeout=60, cwd=REPO).returncode)
    assert codes == [KILL_CODE, KILL_CODE, 0]
    letters = (tmp_path / "letters").read_text().splitlines()
    assert letters == [f"{KILL_OFFSET} killed its consumer 2 times"]
    handled = (tmp_path / "handled").read_text().split()
    assert sorted(set(handled)) == ["0", "1", "3", "4"] and handled[-2:] == ["3", "4"]
