"""Crash-loop quarantine: a record that kills its consumer outright (out of memory, a
native crash, ``os._exit``) is dead-lettered after N deaths instead of killing every
restart.

The state travels with the partition, in Kafka: the metadata string of the committed
offset (any consumer of the group, on any host, sees it after a rebalance or restart).

1. Before a batch is handled, each of its partitions gets an *in-flight marker*: the
   committed offset stays at the batch's first record and its metadata says
   ``{"inflight": [first, last], "deaths": k}``.
2. After the batch's output is flushed, the normal commit moves the offset past the batch
   with empty metadata, which clears the marker.
3. A consumer that finds a marker on a partition it was given knows that its previous
   owner died while handling that range. It then handles the range one record at a
   time, each with its own marker (``[o, o]`` and the deaths of that record so far).
4. A record whose single-record marker is found ``max_deaths`` times is not handled
   again: it goes to ``dlq`` with the reason ``killed its consumer N times``.

A consumer that stops with a Python exception (not a death) clears its markers first
(:meth:`CrashQuarantine.clear`), so a failure that is not about the record (a broken model,
a full disk, the broker) never quarantines records. A kill from outside (SIGKILL, the fault
drill) leaves a marker: the next owner goes through that one batch record by record, and
nothing is dead-lettered unless the same record dies alone ``max_deaths`` times.

Consumers with the quarantine: the proxy worker (``streams/worker.py``) and the
materializer (``streams/materializer.py``). Both call :meth:`CrashQuarantine.handle` on
each polled batch and subscribe with an :class:`AssignmentListener`; the setting is
``kafka.quarantine_deaths`` (``IDPROXY_KAFKA_QUARANTINE_DEATHS``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from kafka import ConsumerRebalanceListener

log = logging.getLogger(__name__)


@dataclass
class _Suspect:
    """A partition whose previous owner died in [start, end]."""

    end: int
    deaths: dict[int, int] = field(default_factory=dict)  # offset -> deaths alone


class CrashQuarantine:
    """In-flight markers in committed-offset metadata, for one kafka-python consumer."""

    def __init__(self, consumer, max_deaths: int) -> None:
        self.consumer = consumer
        self.max_deaths = max_deaths
        self.suspects: dict = {}  # TopicPartition -> _Suspect
        self.checked: set = set()  # partitions whose committed metadata was read
        self.marked: dict = {}  # TopicPartition -> offset of its in-flight marker

    def on_assigned(self) -> None:
        """Call after every rebalance: markers are read again for the new assignment."""
        self.checked.clear()
        self.suspects.clear()

    # ------------------------------------------------------------------ reading
    def _check(self, tp) -> None:
        if tp in self.checked:
            return
        self.checked.add(tp)
        from kafka.errors import KafkaError

        try:
            committed = self.consumer.committed(tp, metadata=True)
        except KafkaError as exc:
            log.warning("could not read the in-flight marker of %s: %s", tp, exc)
            return
        if committed is None or not committed.metadata:
            return
        try:
            marker = json.loads(committed.metadata)
            start, end = (int(x) for x in marker["inflight"])
            deaths = int(marker["deaths"])
            alone = bool(marker.get("alone", False))
        except (ValueError, KeyError, TypeError):
            return  # not ours
        if committed.offset != start:
            return
        alone = alone and start == end
        suspect = _Suspect(end=end)
        if alone:  # it died on this record handled alone: the record's own death
            suspect.deaths[start] = deaths + 1
        self.suspects[tp] = suspect
        log.warning(
            "%s: the previous consumer died handling offsets %d..%d (%s); handling them "
            "one record at a time",
            tp,
            start,
            end,
            f"record {start} alone: {deaths + 1} death(s)" if alone else "a batch",
        )

    def split(self, messages: list) -> tuple[list, list]:
        """(records to handle as a batch, records to handle one at a time)."""
        from kafka import TopicPartition

        batch, alone = [], []
        for m in messages:
            tp = TopicPartition(m.topic, m.partition)
            self._check(tp)
            suspect = self.suspects.get(tp)  # kept: deaths() needs it while handling
            (alone if suspect is not None and m.offset <= suspect.end else batch).append(m)
        return batch, alone

    def deaths(self, message) -> int:
        """How many times this record, handled alone, killed its consumer."""
        from kafka import TopicPartition

        suspect = self.suspects.get(TopicPartition(message.topic, message.partition))
        return 0 if suspect is None else suspect.deaths.get(message.offset, 0)

    def doomed(self, message) -> bool:
        return self.deaths(message) >= self.max_deaths

    def reason(self, message) -> str:
        return f"killed its consumer {self.deaths(message)} times"

    # ------------------------------------------------------------------ handling
    def handle(
        self,
        messages: list,
        process: Callable[[list], None],
        flush: Callable[[], None],
        dead_letter: Callable[[object, str], None],
    ) -> None:
        """Runs ``process`` on ``messages`` under the quarantine (no final commit).

        Records whose previous handling killed a consumer go first (they come before any
        batch record of their partition), one at a time, each behind its own marker: a
        doomed one goes to ``dead_letter(message, reason)`` instead, and after each one
        ``flush()`` makes its output durable and its offset is committed. The rest go to
        one ``process`` call behind one marker per partition; the caller flushes and
        commits them, then calls :meth:`committed_all`. An exception (not a death) clears
        the markers, so no record is blamed, and propagates.
        """
        batch, alone = self.split(messages)
        try:
            for message in alone:
                if self.doomed(message):
                    dead_letter(message, self.reason(message))
                else:
                    self.mark([message])
                    process([message])
                flush()
                self.done(message)
            if batch:
                self.mark(batch)
                process(batch)
        except Exception:
            self.clear()
            raise

    # ------------------------------------------------------------------ writing
    def mark(self, messages: list) -> None:
        """Commits an in-flight marker per partition of ``messages`` (before handling)."""
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        ranges: dict = {}
        for m in messages:
            tp = TopicPartition(m.topic, m.partition)
            lo, hi = ranges.get(tp, (m.offset, m.offset))
            ranges[tp] = (min(lo, m.offset), max(hi, m.offset))
        alone = len(messages) == 1
        offsets = {}
        for tp, (lo, hi) in ranges.items():
            marker = {"inflight": [lo, hi], "deaths": self.deaths(messages[0]) if alone else 0}
            if alone:
                marker["alone"] = True
            offsets[tp] = OffsetAndMetadata(lo, json.dumps(marker, separators=(",", ":")), -1)
        if self._commit(offsets):
            self.marked.update({tp: om.offset for tp, om in offsets.items()})

    def done(self, message) -> None:
        """Commits past one record handled alone (its output already flushed)."""
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        tp = TopicPartition(message.topic, message.partition)
        if self._commit({tp: OffsetAndMetadata(message.offset + 1, "", -1)}):
            self.marked.pop(tp, None)

    def committed_all(self) -> None:
        """The normal commit (empty metadata) cleared every marker."""
        self.marked.clear()

    def clear(self) -> None:
        """Removes this consumer's markers without moving the offsets (it is stopping
        with an exception: not a death caused by a record)."""
        from kafka.structs import OffsetAndMetadata

        if self.marked:
            self._commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in self.marked.items()})
            self.marked.clear()

    def _commit(self, offsets: dict) -> bool:
        from streams.lifecycle import commit_or_log

        return commit_or_log(self.consumer, offsets)


class AssignmentListener(ConsumerRebalanceListener):
    """Logs the partitions a consumer owns after every rebalance ("worker w1 assigned
    partitions [0, 1]", parsed by benchmarks/bench_load.py) and makes its quarantine read
    the in-flight markers of the new assignment."""

    def __init__(self, name: str, quarantine: CrashQuarantine) -> None:
        self.name = name
        self.quarantine = quarantine

    def on_partitions_revoked(self, revoked) -> None:
        pass

    def on_partitions_assigned(self, assigned) -> None:
        one_topic = len({tp.topic for tp in assigned}) <= 1  # the worker: "[0, 1]"
        parts = sorted(
            tp.partition if one_topic else f"{tp.topic}/{tp.partition}" for tp in assigned
        )
        log.info("%s assigned partitions %s", self.name, parts)
        self.quarantine.on_assigned()
