"""`idproxy publish items|clicks FILE` and `idproxy publish movielens`.

Files: JSONL (one event per line, sent as is, so that bad lines reach the DLQ through the
consumers) or CSV (a header row; each row becomes a JSON object, numbers converted).
Every message is keyed by its item id (items) or user id (clicks), so per-key order holds.

MovieLens replay: ratings in time order become clicks (rating >= 4 -> label 1); each item
is uploaded just before its first rating. ``--speed`` compresses time (1 dataset second ->
1/speed seconds; 0 = as fast as possible).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from idproxy.settings import Settings


def _number(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def read_events(path: Path) -> Iterator[bytes]:
    """JSONL lines or CSV rows -> raw JSON bytes (not validated here)."""
    if path.suffix == ".csv":
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                yield json.dumps({k: _number(v) for k, v in row.items() if v != ""}).encode()
    else:
        with path.open("rb") as fh:
            for line in fh:
                if line.strip():
                    yield line.rstrip(b"\n")


def event_key(raw: bytes, field: str) -> bytes | None:
    """The partitioning key (item_id / user_id) of a raw event, if it has one."""
    try:
        value = json.loads(raw).get(field)
    except (ValueError, AttributeError):
        return None
    return str(value).encode() if value is not None else None


ReplayPart = Literal["all", "catalogue", "history", "stream"]


def movielens_events(
    limit: int | None = None,
    upload_lead_s: float = 0.0,
    part: ReplayPart = "all",
    history: int = 0,
) -> Iterator[tuple[str, bytes, BaseModel, float]]:
    """(topic kind, key, event, dataset time in s) in time order.

    Each item is uploaded ``upload_lead_s`` dataset seconds before its first rating; with 0
    it comes just before that rating. The first ``history`` ratings are the **history
    period** the deployment is bootstrapped on (``idproxy bootstrap``); the system goes
    live at the time of the rating after them (the first rating when ``history`` is 0).
    Items whose upload time falls at or before go-live are the **launch catalogue**: they
    are uploaded first. ``part`` picks what is yielded: ``all``; only the ``catalogue``
    uploads; the ``history`` clicks; or the ``stream``, meaning the clicks after the
    history period plus the uploads of items that are not in the catalogue.
    """
    from idproxy.movielens import load_movielens
    from streams.events import Click

    data = load_movielens()
    n = len(data.users) if limit is None else min(limit, len(data.users))
    if not 0 <= history < n:
        raise ValueError(f"history must be in [0, {n}) ratings, got {history}")
    start = float(data.timestamps[0])
    go_live = float(data.timestamps[history])
    first: dict[int, float] = {}  # item -> its upload time
    for k in range(n):
        first.setdefault(int(data.items[k]), max(start, float(data.timestamps[k]) - upload_lead_s))
    uploads = sorted(first.items(), key=lambda kv: kv[1])  # stable: ties keep rating order
    if part == "catalogue":
        for up_item, up_ts in uploads:
            if up_ts > go_live:
                return
            yield "items", str(up_item).encode(), _upload(data, up_item, up_ts), up_ts
        return
    u = 0
    for k in range(history if part == "history" else n):
        item, user, ts = int(data.items[k]), int(data.users[k]), float(data.timestamps[k])
        while u < len(uploads) and (uploads[u][1] <= ts or uploads[u][0] == item):
            up_item, up_ts = uploads[u]
            u += 1
            if part == "all" or (part == "stream" and up_ts > go_live):
                yield "items", str(up_item).encode(), _upload(data, up_item, up_ts), up_ts
        if part == "all" or (part == "history") == (k < history):
            click = Click(user_id=str(user), item_id=str(item), label=int(data.labels[k]), ts=ts)
            yield "clicks", str(user).encode(), click, ts


def _upload(data, item: int, ts: float) -> BaseModel:
    from streams.events import ItemUploaded

    title = data.item_title[item]
    text = data.item_text(item)[len(title) :].strip(" .")
    return ItemUploaded(item_id=str(item), title=title, text=text, uploaded_at=ts)


def restamped(event: BaseModel, now: float) -> BaseModel:
    """The event with its time (``uploaded_at`` / ``ts``) set to ``now`` (wall clock, s)."""
    field = "uploaded_at" if "uploaded_at" in type(event).model_fields else "ts"
    return event.model_copy(update={field: now})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)
    for kind in ("items", "clicks"):
        sp = sub.add_parser(kind, help=f"publish {kind} from a JSONL or CSV file")
        sp.add_argument("file", type=Path)
    ml = sub.add_parser("movielens", help="replay MovieLens-100K as uploads and clicks")
    ml.add_argument("--speed", type=float, default=0.0, help="time compression; 0 = no waiting")
    ml.add_argument("--limit", type=int, help="number of ratings to replay")
    ml.add_argument(
        "--upload-lead-days",
        type=float,
        default=0.0,
        help="upload each item this many dataset days before its first rating (default: just before)",
    )
    ml.add_argument(
        "--bad-share",
        type=float,
        default=0.0,
        help="also send this share of malformed events (a bad-input flood; they must reach the DLQ)",
    )
    ml.add_argument("--seed", type=int, default=0, help="seed of the malformed-event draw")
    ml.add_argument(
        "--part",
        choices=["all", "catalogue", "history", "stream"],
        default="all",
        help="all events; only the launch catalogue (items uploaded by go-live); the history "
        "period's clicks; or the stream after it, without the catalogue",
    )
    ml.add_argument(
        "--history",
        type=int,
        default=0,
        help="ratings in the history period (go-live is the rating after them; default 0)",
    )
    ml.add_argument(
        "--restamp",
        action="store_true",
        help="stamp each event with the wall-clock time it is sent (live freshness, item age)",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from kafka import KafkaProducer
    from tqdm import tqdm

    from streams.bad_events import malformed
    from streams.broker import external_broker
    from streams.events import to_json
    from streams.kafka_config import common_config, producer_config
    from streams.topics import ensure_topics

    if not settings.kafka.bootstrap:
        print("error: set IDPROXY_KAFKA_BOOTSTRAP (e.g. from `idproxy broker`)")
        return 2
    broker = external_broker(settings)
    topics = ensure_topics(settings, common_config(settings, broker))
    producer = KafkaProducer(**producer_config(settings, broker))
    sent = bad = 0
    started = time.time()
    if args.source == "movielens":
        rng = random.Random(args.seed)
        first_ts = None
        for kind, key, event, ts in tqdm(
            movielens_events(args.limit, args.upload_lead_days * 86400, args.part, args.history),
            desc="replay",
            unit="event",
        ):
            if args.speed > 0:
                first_ts = ts if first_ts is None else first_ts
                delay = (ts - first_ts) / args.speed - (time.time() - started)
                if delay > 0:
                    time.sleep(delay)
            if args.restamp:
                event = restamped(event, time.time())
            producer.send(getattr(topics, kind), key=key, value=to_json(event))
            sent += 1
            if args.bad_share > 0 and rng.random() < args.bad_share:
                raw = malformed(kind, event.model_dump(mode="json"), rng)
                producer.send(getattr(topics, kind), key=key, value=raw)
                bad += 1
    else:
        if not args.file.is_file():
            print(f"error: no file {args.file}")
            return 2
        topic = getattr(topics, args.source)
        field = "item_id" if args.source == "items" else "user_id"
        for raw in tqdm(read_events(args.file), desc=f"publish {args.source}", unit="event"):
            producer.send(topic, key=event_key(raw, field), value=raw)
            sent += 1
    producer.flush()
    producer.close()
    seconds = time.time() - started
    print(
        json.dumps(
            {
                "published": sent,
                "malformed": bad,
                "seconds": round(seconds, 2),
                "events_per_s": round(sent / max(seconds, 1e-9)),
            }
        )
    )
    return 0
