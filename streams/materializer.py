"""`idproxy materialize`: the `proxies` and `control` topics -> the proxy store.

The store is a materialised view of Kafka. Per polled batch:

1. proxy records are grouped by version; an unknown version is staged; records are written
   with one atomic ``write_batch`` per version (appends to a published version are allowed
   for new items, identical rewrites are no-ops, a changed value is a conflict -> DLQ);
2. ``VersionCommit`` markers register the expected item count of a version;
3. a version whose marker arrived and whose count is reached is published (atomic pointer
   switch), unless a newer version is already active;
4. only then are the consumer offsets committed.

A record that fails in any other way than a disk error (a frame that does not decode, a
vector of another width, a missing array) is dead-lettered with the exception's type and
message; a version's batch that fails is written record by record, so only the culprits
go to ``dlq``.

A record that kills the process outright (a native crash in the store, the OOM killer) is
caught by the crash-loop quarantine (``streams/quarantine.py``): each batch's partitions
get an in-flight marker in their committed-offset metadata before the store is written;
after a death the next owner writes that range one record at a time, each committed on
its own, and a record that killed it ``IDPROXY_KAFKA_QUARANTINE_DEATHS`` times alone goes
to ``dlq`` with the reason "killed its consumer N times".

A replica with an empty store and a fresh consumer group rebuilds every retained version
from the compacted topics (``--group`` names the group; ``--from-beginning`` forces it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from idproxy.settings import Settings
from streams.consume_loop import BatchHandler

if TYPE_CHECKING:
    from store.base import ProxyStoreProtocol

log = logging.getLogger(__name__)


class Materializer(BatchHandler):
    """Consumes proxies + control into one store; the store's only writer. The batch
    handler of its consume loop (``streams/consume_loop.py``)."""

    def __init__(
        self,
        settings: Settings,
        broker,
        store: ProxyStoreProtocol,
        *,
        group_id: str | None = None,
        stats_file: Path | None = None,
    ) -> None:
        from streams.consume_loop import ConsumeLoop

        self.settings = settings
        self.store = store
        m = settings.materializer
        group_id = group_id or m.group_id
        self.loop = ConsumeLoop(
            settings,
            broker,
            name=f"materializer {group_id}",
            component="materializer",
            group_id=group_id,
            topics=["proxies", "control"],
            max_records=m.batch_max_records,
            metrics_port=m.metrics_port,
        )
        self.topics, self.consumer, self.dlq = self.loop.topics, self.loop.consumer, self.loop.dlq
        self.pending: dict[str, int] = {}  # version -> expected items, until published
        self.freshness: dict[str, float] = {}  # item -> seconds from upload to first servable
        self.written = 0
        self.stats_file = stats_file
        self.stats_items = 0  # items in the stats file as last written
        if stats_file is not None and stats_file.is_file():  # a restart keeps the history
            previous = json.loads(stats_file.read_text())
            self.freshness, self.written = previous["freshness_s"], previous["written"]

    def _write(self, messages: list) -> None:
        from store.errors import StoreError, StoreIOError
        from streams.dlq import failure_reason, is_infrastructure_error
        from streams.events import (
            EventError,
            ProxyRecordEvent,
            VersionCommit,
            decode_frame,
            parse_json,
        )

        by_version: dict[str, list] = defaultdict(list)
        for m in messages:
            try:
                if m.topic == self.topics.control:
                    commit = parse_json(m.value, VersionCommit)
                    self.pending[commit.version] = max(
                        self.pending.get(commit.version, 0), commit.expected_items
                    )
                else:
                    header, arrays = decode_frame(m.value, ProxyRecordEvent)
                    by_version[header.proxy_version].append((header, arrays, m))
            except EventError as exc:
                self.dlq.send(m, str(exc))
            except Exception as exc:  # any other failure of this one record
                if is_infrastructure_error(exc):
                    raise
                log.exception("record %s/%d/%d failed", m.topic, m.partition, m.offset)
                self.dlq.send(m, failure_reason(exc))
        for version, rows in by_version.items():
            latest = {h.item_id: (h, a, m) for h, a, m in rows}  # last record per item wins
            try:
                self._write_version(version, list(latest.values()))
            except StoreIOError:
                raise  # the disk, not the data: retried by step(), nothing dead-lettered
            except Exception as exc:
                if is_infrastructure_error(exc):
                    raise
                # one record spoils the version's batch (a store rejection, vectors of
                # another width, ...): write the records one by one, dead-letter the culprits
                log.warning("batch of %s failed (%s); writing its records one by one", version, exc)
                for row in latest.values():
                    try:
                        self._write_version(version, [row])
                    except StoreIOError:
                        raise
                    except Exception as one:
                        if is_infrastructure_error(one):
                            raise
                        reason = (
                            f"store rejected {row[0].item_id!r}@{version}: {one}"
                            if isinstance(one, StoreError)
                            else failure_reason(one)
                        )
                        self.dlq.send(row[2], reason)

    def _apply(self, messages: list) -> None:
        """Writes ``messages`` and publishes the versions they complete (a record handled
        alone is committed right after, so its version must not wait for the batch)."""
        self._write(messages)
        self._publish_ready()

    def _write_version(self, version: str, rows: list) -> None:
        """Writes (header, arrays, message) rows of one version in one store batch."""
        import numpy as np

        ids = [h.item_id for h, _, _ in rows]
        coarse = np.stack([a["p_coarse"] for _, a, _ in rows])
        fine = np.stack([a["p_fine"] for _, a, _ in rows])
        if self.store.version_info(version) is None:
            self.store.stage(version, manifest={"encoder_version": rows[0][0].encoder_version})
        self.store.write_batch(version, ids, coarse, fine, append=True)
        now = time.time()
        for h, _, _ in rows:
            self.freshness.setdefault(h.item_id, now - h.uploaded_at)
        self.written += len(ids)

    def _publish_ready(self) -> None:
        from store.errors import StoreError, StoreIOError

        for version, expected in list(self.pending.items()):
            info = self.store.version_info(version)
            if info is None:
                continue  # its records have not arrived yet
            if info.status != "staged":
                del self.pending[version]
                continue
            if self.store.count_items(version) >= expected:
                try:
                    self.store.publish(version, expected_items=expected)
                    log.info("published %s", version)
                except StoreIOError:
                    raise
                except StoreError as exc:
                    log.error("could not publish %s: %s", version, exc)
                del self.pending[version]

    # ------------------------------------------------------------------ the handler
    def prepare(self, records: list) -> list:
        """Proxies first (a stable sort keeps each partition's order): after a death, a
        VersionCommit handled alone is then committed after its version's records."""
        return sorted(records, key=lambda m: m.topic == self.topics.control)

    def handle(self, records: list) -> None:
        self._retrying_disk_errors(self._apply, records)

    def tick(self) -> None:
        self._retrying_disk_errors(self._publish_ready)

    def recover(self) -> None:
        """After a disk failure: the store is reopened before anything else."""
        self._retrying_disk_errors(self.store.reopen)

    def after_commit(self, records: list, seconds: float) -> None:
        if self.stats_file is not None and len(self.freshness) != self.stats_items:
            self.write_stats()  # only when an item became servable for the first time

    @staticmethod
    def _retrying_disk_errors(fn, *args) -> None:
        """When the disk refuses a write (full, read-only, I/O error) nothing more is
        committed: the loop goes back to the committed offsets, reopens the store and reads
        the batch again after a back-off, so the process stays up and loses nothing."""
        from store.errors import StoreIOError
        from streams.consume_loop import RetryBatch

        try:
            fn(*args)
        except StoreIOError as exc:
            raise RetryBatch(f"store write failed: {exc}") from exc

    def step(self) -> int:
        """One poll → write → publish → commit turn of the loop; the records committed."""
        return self.loop.step(self)

    def write_stats(self) -> None:
        """{written, freshness_s: {item: s}} as JSON, atomically (kept across restarts)."""
        self.stats_items = len(self.freshness)
        tmp = self.stats_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"written": self.written, "freshness_s": self.freshness}))
        os.replace(tmp, self.stats_file)

    def run(self, *, idle_exit_s: float | None = None) -> None:
        """Loops until SIGTERM/SIGINT or ``idle_exit_s`` without input (while assigned)."""
        self.loop.run(self, idle_exit_s=idle_exit_s)

    def close(self) -> None:
        """Closes the Kafka clients (after driving the loop with :meth:`step`)."""
        self.loop.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store-path", help="store directory (default settings.store.path)")
    parser.add_argument(
        "--group", help="consumer group (default materializer.group_id; a new one rebuilds)"
    )
    parser.add_argument(
        "--metrics-port", type=int, help="Prometheus port (default materializer.metrics_port)"
    )
    parser.add_argument("--idle-exit", type=float, help="exit after this many idle seconds")
    parser.add_argument(
        "--stats-file", help="keep {written, freshness_s: {item: seconds}} in this JSON file"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from store import open_store
    from store.errors import StoreError
    from streams.broker import external_broker

    if args.metrics_port is not None:
        m = settings.materializer.model_copy(update={"metrics_port": args.metrics_port})
        settings = settings.model_copy(update={"materializer": m})
    if not settings.kafka.bootstrap:
        print("error: set IDPROXY_KAFKA_BOOTSTRAP (e.g. from `idproxy broker`)")
        return 2
    try:
        store = open_store(settings, args.store_path)
    except StoreError as exc:
        print(f"error: {exc}")
        return 2
    try:
        materializer = Materializer(
            settings,
            external_broker(settings),
            store,
            group_id=args.group,
            stats_file=Path(args.stats_file) if args.stats_file else None,
        )
        print(f"materializer ready (store {store.path})", flush=True)
        materializer.run(idle_exit_s=args.idle_exit)
        print(f"materializer stopped: {materializer.written} proxies written", flush=True)
    finally:
        store.close()
    return 0
