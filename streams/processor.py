"""`idproxy processor`: the faust stream processor, clicks -> training samples.

A table must be updated by the partition that owns its key, so the work runs in two
co-partitioned steps (each table is a faust Table stored in RocksDB via rocksdict, backed
by a changelog topic, and recovered after a restart):

1. ``with_history`` (clicks, keyed by user): parse each click; a bad one goes to ``dlq``
   with the reason and the original bytes. Table ``user-history`` holds the user's last
   ``history_len`` clicks (label 1) as (click offset, item), in time order. The click takes
   the history of clicks with a *smaller offset* (strictly before it: no leakage), then is
   appended if it is a click. It gets ``sample_id`` = ``<clicks topic>/<partition>/<offset>``
   and is re-keyed by item onto ``clicks-by-item``.
2. ``with_item_state`` (clicks-by-item and items, keyed by item): tables ``item-uploaded``
   (first upload time) and ``item-interactions`` (count, plus the count each recent
   sample id saw). The click reads the count and age *before* counting itself, is flagged
   ``item_known=False`` when no upload was seen yet, and becomes a sample row appended to
   the buffer of its ``clicks-by-item`` partition.

Samples go out as binary columnar micro-batches (``streams/sample_batch.py``): a buffer is
sent as one ``SampleBatch`` frame on the ``samples`` partition with its source partition's
number, keyed by that number in ASCII, when it holds ``processor.samples_batch_max`` rows
(default 256) or its oldest entry is ``processor.samples_linger_ms`` old (default 50 ms;
the ``flush_samples`` task checks).

Processing is at least once. ``with_item_state`` acknowledges its events by hand (a faust
no-ack stream, ``streams/sample_buffers.py``): an event only after the frame holding its
sample is delivered, and a partition's events in offset order (an event without a sample,
dead-lettered or skipped, at once unless an earlier one of its partition is pending). On a
clean stop the buffers are sent and committed; after a crash their clicks, never
acknowledged, are re-delivered. Re-deliveries are idempotent: a replayed click does not
enter the history or the count twice, and its sample is rebuilt from the offsets and
remembered counts, so it is identical to the first one (same ``sample_key``, same
content); consumers de-duplicate by ``sample_key``.

How the trainer treats ``item_known=False``: the item's proxy is missing (its upload has
not been processed), so the row trains the ID slot only, with the proxy miss mask set; the
click still counts towards the item's τ counter.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from idproxy.settings import Settings
from streams.quarantine import CrashQuarantine

log = logging.getLogger(__name__)

REPLAY_WINDOW = 2000  # per item: sample ids remembered to recognise re-deliveries


def ack_only_live_events() -> None:
    """Stops faust from acknowledging events it skipped because of a rebalance.

    faust-streaming 0.15 (``Stream._py_aiter``) skips an event fetched before a rebalance
    (stale ``generation_id``, or flow control paused during recovery) and *acknowledges*
    it, so the next commit can move the offset past a click that was never processed: the
    click is lost (seen as missing samples after a SIGKILL + restart). With this patch such
    an event is not acknowledged; faust seeks back to the committed offset after the
    rebalance, so the click is delivered again and processed (at least once; the tables
    are idempotent for re-deliveries). Idempotent: patching twice is a no-op.
    """
    import faust.events

    if getattr(faust.events.Event.ack, "_idproxy_live_only", False):
        return
    original = faust.events.Event.ack

    def ack(self) -> bool:
        app = self.app
        stale = (
            not app.flow_control.is_active()
            or self.message.generation_id != app.consumer_generation_id
        )
        if stale:
            log.warning(
                "event %s@%d fetched before a rebalance: not acknowledged, it is re-delivered",
                self.message.tp,
                self.message.offset,
            )
            return False
        return original(self)

    ack._idproxy_live_only = True  # type: ignore[attr-defined]
    ack._idproxy_faust_ack = original  # type: ignore[attr-defined]
    faust.events.Event.ack = ack  # type: ignore[method-assign]


def ack_delivered(stream, event) -> bool:
    """``stream.ack(event)`` for an event whose samples the broker has, without the
    live-event check of :func:`ack_only_live_events` (that one is for events faust skipped,
    never processed). During a rebalance or a stop, faust suspends the flow and then waits,
    with no time limit, until every event handed to an agent is acknowledged
    (``Consumer.wait_empty``): the buffered events are acknowledged then, as faust's own
    iterator would acknowledge a processed event."""
    import faust.events

    ack = faust.events.Event.ack
    last = getattr(ack, "_idproxy_faust_ack", ack)(event)
    m = event.message
    stream._on_stream_event_out(m.tp, m.offset, stream, event)
    if last:
        stream._on_message_out(m.tp, m.offset, m)
    return last


class RawRecord(NamedTuple):
    """One input record, from a faust event or re-read with kafka-python."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    @classmethod
    def of(cls, record: Any) -> RawRecord:
        return cls(record.topic, record.partition, record.offset, record.key, record.value)


async def isolated(handle, record: RawRecord, quarantine: CrashQuarantine, dead_letter) -> None:
    """``await handle(record)`` behind its in-flight marker; ``await dead_letter(record,
    reason, durable=True)`` instead when the record killed the processor
    ``quarantine_deaths`` times (crash-loop quarantine, one record at a time; a record
    dead-lettered so by an earlier run is skipped). Any failure of this one record
    dead-letters it with the exception's type and message, and the stream goes on.
    Failures not about the record (the broker, the disk) are raised: faust stops the agent
    and the un-acknowledged record is read again after the restart."""
    from streams.dlq import failure_reason, is_infrastructure_error

    if quarantine.is_suspect(record):
        if quarantine.buried(record):
            return  # dead-lettered as a killer by an earlier run
        if quarantine.doomed(record):
            log.error("%s/%d/%d: %s", *record[:3], quarantine.reason(record))
            await dead_letter(record, quarantine.reason(record), durable=True)
            quarantine.bury(record)
            return
    quarantine.mark([record])
    try:
        await handle(record)
    except Exception as exc:
        if is_infrastructure_error(exc):
            raise
        log.exception("record %s/%d/%d failed", record.topic, record.partition, record.offset)
        await dead_letter(record, failure_reason(exc))
    finally:  # handled, or stopping (not a death): the marker goes
        quarantine.clear()


def faust_credentials(settings: Settings):
    """The Kafka SASL/TLS settings as faust credentials (None for PLAINTEXT).

    >>> from idproxy.settings import Settings
    >>> faust_credentials(Settings()) is None
    True
    """
    k = settings.kafka
    if k.security_protocol == "PLAINTEXT":
        return None
    import ssl

    import faust

    context = None
    if k.security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=k.ssl_cafile)
        if k.ssl_certfile:
            context.load_cert_chain(k.ssl_certfile, k.ssl_keyfile)
    if k.security_protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(
        username=k.sasl_plain_username,
        password=k.sasl_plain_password,
        ssl_context=context,
        mechanism=k.sasl_mechanism or "PLAIN",
    )


def build_app(settings: Settings, broker, datadir: Path):
    """The faust app with its topics, tables and agents (not started)."""
    import faust

    from streams.dlq import DLQ_MAX_BYTES, is_infrastructure_error, letter_record
    from streams.events import MAX_CLICK_BYTES, Click, EventError, ItemUploaded, parse_json
    from streams.inflight_markers import FileMarkers
    from streams.kafka_config import common_config, consumer_config
    from streams.offset_gaps import OffsetGapFiller, kafka_range_reader
    from streams.sample_batch import SampleBatch
    from streams.sample_buffers import SampleBuffers
    from streams.sample_rows import KeyedClick, check_frame_size, sample_row
    from streams.topics import PROCESSOR_TABLES, ensure_topics

    history_len = settings.trainer.history_len
    batch_max = settings.processor.samples_batch_max
    check_frame_size(batch_max, history_len)
    ack_only_live_events()
    topics = ensure_topics(settings, common_config(settings, broker))
    partitions = settings.kafka.partitions
    quirks = broker.quirks
    app = faust.App(
        topics.processor_app,
        broker=f"kafka://{broker.bootstrap}",
        broker_credentials=faust_credentials(settings),
        store="rocksdb://",
        datadir=str(datadir),
        topic_partitions=partitions,
        topic_replication_factor=settings.kafka.replication_factor,
        web_enabled=False,
        web_host="127.0.0.1",
        consumer_auto_offset_reset="earliest",
        producer_max_batch_size=quirks.get("faust_producer_max_batch_size", 16384),
        producer_max_request_size=DLQ_MAX_BYTES,  # dead letters of records at the broker's limit
        broker_session_timeout=quirks.get("session_timeout_ms", 60000) / 1000,
        broker_heartbeat_interval=quirks.get("heartbeat_interval_ms", 3000) / 1000,
        table_cleanup_interval=3600,
        key_serializer="raw",
        value_serializer="raw",
    )
    clicks = app.topic(topics.clicks, partitions=partitions)
    items = app.topic(topics.items, partitions=partitions)
    by_item = app.topic(topics.clicks_by_item, partitions=partitions)  # created up front
    samples = app.topic(topics.samples, partitions=partitions)
    dlq = app.topic(topics.dlq)
    rocks = {"driver": "rocksdict"}
    uploaded_t, counts_t, history_t = PROCESSOR_TABLES
    uploaded = app.Table(uploaded_t, partitions=partitions, options=rocks)
    counts = app.Table(counts_t, default=dict, partitions=partitions, options=rocks)
    history = app.Table(history_t, default=list, partitions=partitions, options=rocks)

    gaps = OffsetGapFiller(kafka_range_reader(consumer_config(settings, broker, None)))

    async def dead_letter(record: RawRecord, reason: str, durable: bool = False) -> None:
        """Queues the letter; ``durable``: and waits until the broker has it."""
        key, letter = letter_record(record, reason, "processor")
        sent = await dlq.send(key=key, value=letter)
        if durable:
            await sent

    async def add_history(record: RawRecord) -> None:
        """Click -> history before it (no leakage) -> clicks-by-item; appends a click."""
        try:
            if record.value is not None and len(record.value) > MAX_CLICK_BYTES:
                raise EventError(
                    f"click of {len(record.value)} bytes is over the limit of {MAX_CLICK_BYTES}"
                )
            click = parse_json(record.value, Click)
        except EventError as exc:
            await dead_letter(record, str(exc))
            return
        entries = history[click.user_id]  # [[click offset, item id], ...], time-ordered
        before = [item for offset, item in entries if offset < record.offset]
        replayed = any(offset == record.offset for offset, _ in entries)
        if click.label == 1 and not replayed:
            history[click.user_id] = (entries + [[record.offset, click.item_id]])[-history_len:]
        doc = {
            **click.model_dump(),
            "sample_id": f"{record.topic}/{record.partition}/{record.offset}",
            "history": before[-history_len:],
        }
        await by_item.send(key=click.item_id.encode(), value=json.dumps(doc).encode())

    async def send_frame(partition: int, rows: list[dict]) -> None:
        """One frame on the samples partition of the same number; returns once delivered."""
        frame = SampleBatch.from_rows(rows, history_len).encode()
        sent = await samples.send(key=str(partition).encode(), value=frame, partition=partition)
        await sent

    linger_s = settings.processor.samples_linger_ms / 1000
    buffers = SampleBuffers(send_frame, batch_max, linger_s)

    async def add_item_state(record: RawRecord) -> None:
        """Keyed click -> sample row with the item's count and age before this click,
        appended to the buffer of the record's partition."""
        doc = KeyedClick.model_validate(json.loads(record.value))
        item = doc.item_id
        upload_ts = uploaded.get(item)
        state = counts[item] or {"n": 0, "recent": {}}
        seen_before = state["recent"].get(doc.sample_id)
        row = sample_row(doc, state["n"] if seen_before is None else seen_before, upload_ts)
        if seen_before is None:  # first delivery: count it
            recent = {**state["recent"], doc.sample_id: state["n"]}
            counts[item] = {
                "n": state["n"] + 1,
                "recent": dict(list(recent.items())[-REPLAY_WINDOW:]),
            }
        buffers.add(record.partition, row)

    def quarantine(agent: str) -> CrashQuarantine:
        markers = FileMarkers(datadir / f"inflight-{agent}.json")
        return CrashQuarantine(markers, settings.kafka.quarantine_deaths)

    async def each_record(events, handle, quarantine: CrashQuarantine, done=None) -> None:
        """Runs ``handle`` on every record, first on any the stream skipped before it;
        then ``await done(event)`` (manual acknowledgement) when given."""
        async for event in events:
            m = event.message
            for skipped in gaps.missing(m.topic, m.partition, m.offset):
                await isolated(handle, RawRecord.of(skipped), quarantine, dead_letter)
            record = RawRecord(m.topic, m.partition, m.offset, event.key, event.value)
            await isolated(handle, record, quarantine, dead_letter)
            if done is not None:
                await done(event)

    watched = {topics.clicks, topics.clicks_by_item}
    stall_s = settings.kafka.stream_stall_s

    @app.timer(interval=max(1.0, stall_s / 3))
    async def unstick_partitions() -> None:
        """Seeks a partition back when faust dropped its last records (see offset_gaps)."""
        consumer = app.consumer
        assigned = [tp for tp in consumer.assignment() if tp.topic in watched]
        if not assigned or not app.flow_control.is_active():
            return
        ends = await consumer.highwaters(*assigned)
        for tp in assigned:
            committed = consumer._committed_offset.get(tp)  # faust keeps no public accessor
            offset = gaps.stalled(tp.topic, tp.partition, ends[tp], committed, stall_s)
            if offset is not None:
                await consumer.seek(tp, offset)

    @app.agent(clicks)
    async def with_history(stream):
        await each_record(stream.events(), add_history, quarantine("with-history"))

    @app.agent(items)
    async def remember_uploads(stream):
        async for event in stream.events():
            try:
                item = parse_json(event.value, ItemUploaded)
            except EventError:
                continue  # the proxy workers dead-letter bad uploads; not reported twice
            except Exception as exc:  # not reported twice either, but never fatal
                if is_infrastructure_error(exc):
                    raise
                log.warning("upload at offset %d not readable: %s", event.message.offset, exc)
                continue
            if item.item_id not in uploaded:
                uploaded[item.item_id] = item.uploaded_at

    @app.agent(by_item)
    async def with_item_state(stream):
        manual = stream.noack()  # acknowledged by the buffers, once the samples are sent

        async def done(event) -> None:
            await buffers.done(event.message.partition, partial(ack_delivered, manual, event))

        await each_record(manual.events(), add_item_state, quarantine("with-item-state"), done)

    @app.task
    async def flush_samples() -> None:
        """Sends the sample buffers older than the linger time. When the flow is suspended
        (a rebalance, or a stop) no new event arrives and faust waits until every event
        handed to an agent is acknowledged (``Consumer.wait_empty``, no time limit), so
        everything buffered is sent at once. A task, not ``app.timer``: a timer ends as
        soon as the app is stopping, *before* that wait, which then never ends."""
        while True:
            await asyncio.sleep(min(linger_s / 2, 0.1))
            suspended = app.should_stop or not app.flow_control.is_active()
            await buffers.flush_due(everything=suspended)

    return app


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--datadir", help="table state directory (default <cache>/processor)")
    parser.add_argument("--metrics-port", type=int, help="default processor.metrics_port")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from faust.worker import Worker

    from idproxy.prometheus import serve_ready_gauge
    from streams.broker import external_broker, free_port

    if not settings.kafka.bootstrap:
        print("error: set IDPROXY_KAFKA_BOOTSTRAP (e.g. from `idproxy broker`)")
        return 2
    datadir = Path(args.datadir or Path(settings.cache_dir) / "processor")
    datadir.mkdir(parents=True, exist_ok=True)
    app = build_app(settings, external_broker(settings), datadir)
    app.conf.web_bind = "127.0.0.1"  # faust binds its web port even with the web disabled
    app.conf.web_port = free_port()
    port = settings.processor.metrics_port if args.metrics_port is None else args.metrics_port
    if port:  # idproxy_processor_ready: 1 once faust runs the app's tasks (consumer started)
        gauge = serve_ready_gauge("processor", port, settings.metrics_host)

        @app.task
        async def mark_ready() -> None:
            gauge.set(1)

    print(f"processor starting (state in {datadir})", flush=True)
    Worker(app, loglevel="WARNING", redirect_stdouts=False).execute_from_commandline()
    return 0
