"""Crash-loop quarantine: a record that kills its consumer outright (out of memory, a
native crash, ``os._exit``) is dead-lettered after N deaths instead of killing every
restart.

1. Before records are handled, each of their partitions gets an *in-flight marker*
   ``{"inflight": [first, last], "deaths": k}`` naming the offsets being handled.
2. Once their output is durable, the marker is cleared.
3. A consumer that finds a marker for a partition knows that a previous run died while
   handling that range. It then handles the range one record at a time, each behind its
   own marker (``[o, o]``, ``"alone": true`` and the deaths of that record so far).
4. A record whose single-record marker is found ``max_deaths`` times is not handled
   again: it goes to ``dlq`` with the reason ``killed its consumer N times``.

Where the markers live: ``streams/inflight_markers.py`` (committed-offset metadata for
consumer groups, a file for the others).

A consumer that stops with a Python exception (not a death) clears its markers first
(:meth:`CrashQuarantine.clear`), so a failure that is not about the record (a broken model,
a full disk, the broker) never quarantines records. A kill from outside (SIGKILL, the fault
drill) leaves a marker: the next run goes through that one range record by record, and
nothing is dead-lettered unless the same record dies alone ``max_deaths`` times.

Consumers with the quarantine: the proxy worker and the materializer (:meth:`handle`, with
committed-offset markers), the online trainer (:meth:`handle_in_order`, a file in its state
folder) and the faust processor (one record at a time, a file per agent in its table
folder). The setting is ``kafka.quarantine_deaths`` (``IDPROXY_KAFKA_QUARANTINE_DEATHS``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from kafka import ConsumerRebalanceListener, TopicPartition

from streams.inflight_markers import Marker, Markers

log = logging.getLogger(__name__)


@dataclass
class _Suspect:
    """A partition whose previous consumer died in [start, end]."""

    start: int
    end: int
    deaths: dict[int, int] = field(default_factory=dict)  # offset -> deaths alone


def _tp(message) -> TopicPartition:
    return TopicPartition(message.topic, message.partition)


class CrashQuarantine:
    """In-flight markers around a consumer's record handling (see the module docstring)."""

    def __init__(self, markers: Markers, max_deaths: int) -> None:
        self.markers = markers
        self.max_deaths = max_deaths
        self.suspects: dict[TopicPartition, _Suspect] = {}
        self.checked: set[TopicPartition] = set()  # partitions whose marker was read
        self.marked: dict[TopicPartition, int] = {}  # partition -> first offset marked

    def on_assigned(self) -> None:
        """Call after every rebalance: markers are read again for the new assignment."""
        self.checked.clear()
        self.suspects.clear()

    # ------------------------------------------------------------------ reading
    def _check(self, tp: TopicPartition) -> None:
        if tp in self.checked:
            return
        self.checked.add(tp)
        marker = self.markers.read(tp)
        if marker is None:
            return
        alone = marker.alone and marker.start == marker.end
        suspect = _Suspect(marker.start, marker.end)
        if alone:  # it died on this record handled alone: the record's own death
            suspect.deaths[marker.start] = marker.deaths + 1
        self.suspects[tp] = suspect
        log.warning(
            "%s: the previous consumer died handling offsets %d..%d (%s); handling them "
            "one record at a time",
            tp,
            marker.start,
            marker.end,
            f"record {marker.start} alone: {marker.deaths + 1} death(s)" if alone else "a batch",
        )

    def is_suspect(self, message) -> bool:
        """Was ``message`` in flight when a previous consumer died (or dead-lettered as a
        killer already)?"""
        tp = _tp(message)
        self._check(tp)
        suspect = self.suspects.get(tp)
        if suspect is not None and suspect.start <= message.offset <= suspect.end:
            return True
        return message.offset in self.markers.buried(tp)

    def split(self, messages: list) -> tuple[list, list]:
        """(records to handle as a batch, records to handle one at a time)."""
        batch, alone = [], []
        for m in messages:
            (alone if self.is_suspect(m) else batch).append(m)
        return batch, alone

    def deaths(self, message) -> int:
        """How many times this record, handled alone, killed its consumer."""
        tp = _tp(message)
        if message.offset in self.markers.buried(tp):
            return self.max_deaths
        suspect = self.suspects.get(tp)
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
        """Runs ``process`` on ``messages`` under the quarantine (no final commit), for a
        consumer group that commits after each batch.

        Records whose previous handling killed a consumer go first (they come before any
        batch record of their partition, whose committed offset is the marker's), one at a
        time, each behind its own marker: a doomed one goes to ``dead_letter(message,
        reason)`` instead, and after each one ``flush()`` makes its output durable and its
        offset is committed. The rest go to one ``process`` call behind one marker per
        partition; the caller flushes and commits them, then calls :meth:`committed_all`.
        An exception (not a death) clears the markers, so no record is blamed, and
        propagates.
        """
        batch, alone = self.split(messages)
        try:
            for message in alone:
                self._one(message, process, dead_letter)
                flush()
                self.done(message)
            if batch:
                self.mark(batch)
                process(batch)
        except Exception:
            self.clear()
            raise

    def handle_in_order(
        self,
        messages: list,
        process: Callable[[list], None],
        dead_letter: Callable[[object, str], None],
        flush: Callable[[], None],
        in_flight: list = (),
    ) -> None:
        """Runs ``process`` on ``messages`` in their order under the quarantine, for a
        consumer whose output is durable when ``process`` returns, or pipelined: records
        in ``in_flight`` (given to an earlier ``process`` call, not finished) stay covered
        by the marker. Suspect records are handled one at a time, with the runs of other
        records between them as batches; a doomed one is dead-lettered, ``flush()``ed and
        buried (:meth:`bury`), and one buried before is skipped. The markers stay set after
        the call (the next call replaces them); :meth:`clear` them when nothing is in flight
        any more."""
        try:
            if not any(self.is_suspect(m) for m in messages):
                self.mark([*in_flight, *messages])
                process(messages)
                return
            run: list = []
            for m in messages:
                if not self.is_suspect(m):
                    run.append(m)
                    continue
                if run:
                    self.mark(run)
                    process(run)
                    run = []
                if self._one(m, process, dead_letter):
                    flush()
                    self.bury(m)
            if run:
                self.mark(run)
                process(run)
        except Exception:
            self.clear()
            raise

    def _one(self, message, process, dead_letter) -> bool:
        """One suspect record: skipped when buried, dead-lettered when doomed (True), else
        processed behind its own marker."""
        if self.buried(message):
            log.info(
                "%s@%d was dead-lettered as a killer before: skipped", _tp(message), message.offset
            )
            return False
        if self.doomed(message):
            log.error("%s@%d %s: dead-lettered", _tp(message), message.offset, self.reason(message))
            dead_letter(message, self.reason(message))
            return True
        self.mark([message])
        process([message])
        return False

    def buried(self, message) -> bool:
        """Was ``message`` dead-lettered as a killer already (by this run or an earlier one)?"""
        return message.offset in self.markers.buried(_tp(message))

    # ------------------------------------------------------------------ writing
    def mark(self, messages: list) -> None:
        """Sets an in-flight marker per partition of ``messages`` (before handling)."""
        ranges: dict[TopicPartition, tuple[int, int]] = {}
        for m in messages:
            tp = _tp(m)
            lo, hi = ranges.get(tp, (m.offset, m.offset))
            ranges[tp] = (min(lo, m.offset), max(hi, m.offset))
        alone = len(messages) == 1
        deaths = self.deaths(messages[0]) if alone else 0
        markers = {tp: Marker(lo, hi, deaths, alone) for tp, (lo, hi) in ranges.items()}
        if self.markers.write(markers):
            self.marked.update({tp: m.start for tp, m in markers.items()})

    def done(self, message) -> None:
        """Moves past one record handled alone (its output already durable)."""
        tp = _tp(message)
        if self.markers.release({tp: message.offset + 1}):
            self.marked.pop(tp, None)

    def bury(self, message) -> None:
        """``message`` was dead-lettered as a killer (the letter flushed): its marker goes,
        and a consumer that reads it again (from a checkpoint, or from the beginning) skips
        it."""
        self.markers.bury(_tp(message), message.offset)
        self.done(message)

    def committed_all(self) -> None:
        """The caller's normal commit (empty metadata) moved past every marker."""
        self.markers.released_by_commit(list(self.marked))
        self.marked.clear()

    def clear(self) -> None:
        """Removes this consumer's markers without moving the offsets (the work is done,
        or it is stopping with an exception: not a death caused by a record)."""
        if self.marked:
            self.markers.release(dict(self.marked))
            self.marked.clear()


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
