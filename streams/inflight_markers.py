"""Where in-flight markers live: the state of the crash-loop quarantine
(``streams/quarantine.py``) that survives the death of its consumer.

* :class:`CommittedOffsetMarkers`, for consumer groups that commit after every batch (the
  proxy worker, the materializer): the metadata string of the committed offset, which
  stays at the batch's first record while the marker is set. The state travels with the
  partition: any member of the group, on any host, sees it after a rebalance or restart.
* :class:`FileMarkers`, for consumers whose position is not a per-batch commit (the online
  trainer restarts from its checkpoint's offsets; the faust processor commits on its own
  schedule): a small JSON file in the component's own state folder, overwritten in place
  (``pwrite``, no fsync: a killed process's writes survive in the page cache; a machine
  crash is not a record's fault).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kafka import TopicPartition

log = logging.getLogger(__name__)

BURIED_KEPT = 1000  # killers remembered per partition by a FileMarkers
NONE_BURIED: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Marker:
    """Offsets ``start..end`` of one partition were being handled; ``alone``: one record
    handled by itself, which had already killed ``deaths`` consumers."""

    start: int
    end: int
    deaths: int = 0
    alone: bool = False

    def to_json(self) -> str:
        doc: dict = {"inflight": [self.start, self.end], "deaths": self.deaths}
        if self.alone:
            doc["alone"] = True
        return json.dumps(doc, separators=(",", ":"))

    @classmethod
    def parse(cls, doc) -> Marker | None:
        """The marker in a decoded JSON value, or None when it is not one of ours."""
        try:
            start, end = (int(x) for x in doc["inflight"])
            return cls(start, end, int(doc["deaths"]), bool(doc.get("alone", False)))
        except (ValueError, KeyError, TypeError):
            return None


class Markers(Protocol):
    """Where a consumer's in-flight markers are kept."""

    def read(self, tp: TopicPartition) -> Marker | None:
        """The marker a previous run left on ``tp`` (None: none)."""

    def write(self, markers: dict[TopicPartition, Marker]) -> bool:
        """Sets these markers (False: could not; the records are handled anyway)."""

    def release(self, positions: dict[TopicPartition, int]) -> bool:
        """Clears the markers of these partitions; ``positions``: their next offsets."""

    def released_by_commit(self, tps: list[TopicPartition]) -> None:
        """The caller's own commit has moved past these partitions' markers."""

    def buried(self, tp: TopicPartition) -> Container[int]:
        """Offsets of ``tp`` dead-lettered as killers, for consumers that read them again
        (asked once per record: no copy)."""

    def bury(self, tp: TopicPartition, offset: int) -> None:
        """Remembers a dead-lettered killer (a consumer that re-reads it skips it)."""


class CommittedOffsetMarkers:
    """Markers in the metadata of a kafka-python consumer group's committed offsets."""

    def __init__(self, consumer) -> None:
        self.consumer = consumer

    def read(self, tp: TopicPartition) -> Marker | None:
        from kafka.errors import KafkaError

        try:
            committed = self.consumer.committed(tp, metadata=True)
        except KafkaError as exc:
            log.warning("could not read the in-flight marker of %s: %s", tp, exc)
            return None
        if committed is None or not committed.metadata:
            return None
        try:
            marker = Marker.parse(json.loads(committed.metadata))
        except ValueError:
            return None
        return marker if marker is not None and committed.offset == marker.start else None

    def write(self, markers: dict[TopicPartition, Marker]) -> bool:
        from kafka.structs import OffsetAndMetadata

        return self._commit(
            {tp: OffsetAndMetadata(m.start, m.to_json(), -1) for tp, m in markers.items()}
        )

    def release(self, positions: dict[TopicPartition, int]) -> bool:
        from kafka.structs import OffsetAndMetadata

        return self._commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in positions.items()})

    def released_by_commit(self, tps: list[TopicPartition]) -> None:
        pass  # the commit's empty metadata replaced the markers

    def buried(self, tp: TopicPartition) -> Container[int]:
        return NONE_BURIED  # the group's commit moves past a killer: it is not read again

    def bury(self, tp: TopicPartition, offset: int) -> None:
        pass

    def _commit(self, offsets: dict) -> bool:
        from streams.lifecycle import commit_or_log

        return commit_or_log(self.consumer, offsets)


class FileMarkers:
    """Markers in a JSON file ``{"topic/partition": marker, "_buried": {...}}``, rewritten
    in place. ``_buried`` keeps, per partition, the last ``BURIED_KEPT`` offsets
    dead-lettered as killers: these consumers read records again after a restart (from a
    checkpoint, or from the beginning), and must not be killed by them again.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "inflight.json"
    >>> tp = TopicPartition("samples", 3)
    >>> FileMarkers(path).write({tp: Marker(10, 19)})
    True
    >>> FileMarkers(path).read(tp)  # what the next run finds
    Marker(start=10, end=19, deaths=0, alone=False)
    >>> m = FileMarkers(path); m.release({tp: 20}); FileMarkers(path).read(tp) is None
    True
    True
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self.found: dict[str, Marker] = {}
        self.dead: dict[str, dict[int, None]] = {}  # partition -> offsets, oldest first
        raw = os.pread(self.fd, 1 << 22, 0).rstrip(b"\0 \n")
        try:
            doc = json.loads(raw) if raw else {}
            self.dead = {k: dict.fromkeys(map(int, v)) for k, v in doc.pop("_buried", {}).items()}
            for key, value in doc.items():
                marker = Marker.parse(value)
                if marker is not None:
                    self.found[key] = marker
        except (ValueError, AttributeError, TypeError):
            log.warning("%s is not a marker file: ignored", self.path)
        self.current: dict[str, Marker] = {}  # this run's; the old ones are only read

    @staticmethod
    def _key(tp) -> str:
        return f"{tp[0]}/{tp[1]}"

    def read(self, tp: TopicPartition) -> Marker | None:
        return self.found.get(self._key(tp))

    def write(self, markers: dict[TopicPartition, Marker]) -> bool:
        self.current.update({self._key(tp): m for tp, m in markers.items()})
        return self._save()

    def release(self, positions: dict[TopicPartition, int]) -> bool:
        for tp in positions:
            self.current.pop(self._key(tp), None)
        return self._save()

    def released_by_commit(self, tps: list[TopicPartition]) -> None:
        self.release(dict.fromkeys(tps, 0))

    def buried(self, tp: TopicPartition) -> Container[int]:
        return self.dead.get(self._key(tp), NONE_BURIED)

    def bury(self, tp: TopicPartition, offset: int) -> None:
        offsets = self.dead.setdefault(self._key(tp), {})
        offsets[offset] = None
        while len(offsets) > BURIED_KEPT:
            del offsets[next(iter(offsets))]
        self._save()

    def _save(self) -> bool:
        parts = [f'"{k}":{m.to_json()}' for k, m in self.current.items()]
        if self.dead:
            dead = {k: list(v) for k, v in self.dead.items()}
            parts.append('"_buried":' + json.dumps(dead, separators=(",", ":")))
        data = ("{" + ",".join(parts) + "}").encode()
        try:  # padded to whole 256-byte blocks, so a shorter text overwrites a longer one
            size = max(256, -(-len(data) // 256) * 256)
            os.pwrite(self.fd, data.ljust(size, b" "), 0)
            if os.fstat(self.fd).st_size > size:
                os.ftruncate(self.fd, size)
        except OSError as exc:
            log.warning("could not write the in-flight markers to %s: %s", self.path, exc)
            return False
        return True

    def close(self) -> None:
        os.close(self.fd)
