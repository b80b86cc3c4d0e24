"""`idproxy publish items|clicks FILE`: JSONL and CSV reach the topic, keyed."""

from __future__ import annotations

import json

import pytest

from streams.topics import Topics
from tests.streams.helpers import CliProcess, drain

pytestmark = pytest.mark.kafka


def test_publish_jsonl_and_csv(kafka_settings, kafka_broker, tmp_path):
    topics = Topics.from_settings(kafka_settings)
    jsonl = tmp_path / "items.jsonl"
    jsonl.write_text(
        "\n".join(json.dumps({"item_id": str(i), "title": f"t{i}"}) for i in range(5))
        + "\n{broken\n"
    )
    csv_file = tmp_path / "clicks.csv"
    csv_file.write_text(
        "user_id,item_id,label,ts\n" + "\n".join(f"u{i},{i},1,{100 + i}" for i in range(4)) + "\n"
    )
    for kind, path in (("items", jsonl), ("clicks", csv_file)):
        out = CliProcess(kafka_settings, kafka_broker, "publish", kind, str(path)).finish(
            timeout=120
        )
        assert '"published"' in out, out
    items = drain(kafka_settings, kafka_broker, topics.items)
    assert len(items) == 6  # the broken line is sent as is: the worker dead-letters it
    assert {r.key for r in items} == {str(i).encode() for i in range(5)} | {None}
    clicks = drain(kafka_settings, kafka_broker, topics.clicks)
    docs = [json.loads(r.value) for r in clicks]
    assert sorted(d["ts"] for d in docs) == [100, 101, 102, 103]
    assert all(r.key == f"u{d['item_id']}".encode() for r, d in zip(clicks, docs, strict=True))


def test_publish_movielens_uploads_items_before_their_first_rating(kafka_settings, kafka_broker):
    topics = Topics.from_settings(kafka_settings)
    out = CliProcess(kafka_settings, kafka_broker, "publish", "movielens", "--limit", "40").finish(
        timeout=180
    )
    assert '"published"' in out, out
    from idproxy.movielens import load_movielens

    data = load_movielens()
    clicks = drain(kafka_settings, kafka_broker, topics.clicks)
    items = drain(kafka_settings, kafka_broker, topics.items)
    assert len(clicks) == 40
    assert {json.loads(r.value)["item_id"] for r in items} == {str(i) for i in data.items[:40]}
    first_rating = {}
    for r in clicks:
        doc = json.loads(r.value)
        first_rating.setdefault(doc["item_id"], doc["ts"])
        assert doc["label"] in (0, 1)
    for r in items:  # each upload is stamped no later than the item's first rating
        doc = json.loads(r.value)
        assert doc["uploaded_at"] <= first_rating[doc["item_id"]]


def test_movielens_replay_uploads_items_a_lead_time_before_their_first_rating():
    from streams.publish import movielens_events

    lead = 30 * 86400.0
    events = list(movielens_events(3000, lead))
    times = [ts for _, _, _, ts in events]
    assert times == sorted(times)  # one time-ordered stream
    start = times[0]
    uploaded: dict[str, float] = {}
    for kind, _, event, ts in events:
        if kind == "items":
            uploaded[event.item_id] = ts
        elif event.item_id not in uploaded:
            raise AssertionError(f"click on {event.item_id} before its upload")
        elif event.item_id in uploaded and uploaded[event.item_id] is not None:
            first = ts  # the item's first rating: upload is `lead` earlier, or at the start
            assert abs(uploaded[event.item_id] - max(start, first - lead)) < 1e-6
            uploaded[event.item_id] = None  # only the first rating is checked


def test_movielens_replay_parts_split_the_launch_catalogue_from_the_stream():
    from streams.publish import movielens_events

    lead = 1 * 86400.0
    whole = list(movielens_events(3000, lead))
    catalogue = list(movielens_events(3000, lead, "catalogue"))
    stream = list(movielens_events(3000, lead, "stream"))
    start = whole[0][3]
    assert catalogue and all(kind == "items" and ts == start for kind, _, _, ts in catalogue)
    catalogue_ids = {e.item_id for _, _, e, _ in catalogue}
    stream_uploads = {e.item_id for kind, _, e, _ in stream if kind == "items"}
    assert stream_uploads and not stream_uploads & catalogue_ids  # later items arrive live
    assert [ts for *_, ts in stream] == sorted(ts for *_, ts in stream)
    # together they are exactly the whole replay
    key = lambda ev: (ev[0], ev[2].model_dump_json())  # noqa: E731
    assert sorted(map(key, catalogue + stream)) == sorted(map(key, whole))


def test_movielens_history_period_goes_before_go_live():
    """catalogue + history + stream is the whole replay; the history is the first H clicks
    and every item rated in it is in the catalogue (uploaded by go-live)."""
    from streams.publish import movielens_events

    lead, history = 1 * 86400.0, 1000
    whole = list(movielens_events(3000, lead))
    parts = {
        p: list(movielens_events(3000, lead, p, history))
        for p in ("catalogue", "history", "stream")
    }
    clicks = [e for kind, _, e, _ in whole if kind == "clicks"]
    assert [e for _, _, e, _ in parts["history"]] == clicks[:history]
    stream_clicks = [e for kind, _, e, _ in parts["stream"] if kind == "clicks"]
    assert stream_clicks == clicks[history:]
    catalogue_ids = {e.item_id for _, _, e, _ in parts["catalogue"]}
    assert {e.item_id for e in clicks[:history]} <= catalogue_ids
    go_live = clicks[history].ts
    assert all(ts <= go_live for *_, ts in parts["catalogue"])
    assert all(ts > go_live for kind, _, _, ts in parts["stream"] if kind == "items")
    key = lambda ev: (ev[0], ev[2].model_dump_json())  # noqa: E731
    together = parts["catalogue"] + parts["history"] + parts["stream"]
    assert sorted(map(key, together)) == sorted(map(key, whole))
