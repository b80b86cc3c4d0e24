"""The hostile-input suite (real broker): for every input topic, a deterministic batch of
hostile records drawn from hypothesis strategies (tests/hostile/strategies.py) is produced
into the topic, then a valid sentinel record, against ONE running component. Each test
asserts that the component stays up and processes the sentinel, that every record its own
validator rejects is in `dlq` (keyed by source topic, partition and offset) with a reason
and the original bytes, and that no other record is dead-lettered or lost.

`pytest tests/hostile -m kafka` (about 2 minutes with the broker's start).
"""

from __future__ import annotations

import base64
import io
import json
import time
from types import SimpleNamespace

import numpy as np
import pytest
from kafka import KafkaProducer
from PIL import Image

from streams.events import (
    Click,
    DeadLetter,
    EventError,
    ItemFeaturesRecord,
    ItemUploaded,
    ProxyRecordEvent,
    VersionCommit,
    decode_frame,
    encode_frame,
    parse_json,
    to_json,
)
from streams.kafka_config import common_config, producer_config
from streams.sample_batch import SampleBatch, id_hash, sample_key
from streams.topics import ensure_topics
from tests.hostile import strategies as hs
from tests.streams.helpers import CliProcess, drain, item_event, start_processor

pytestmark = pytest.mark.kafka

PER_KIND = 6  # records per hostile kind and topic (see strategies.JSON_KINDS / FRAME_KINDS)
BROKER_LIMIT = 1_000_000  # bytes: under the broker's default message.max.bytes (1,048,588)


# ---------------------------------------------------------------------- helpers


def produce_indexed(settings, broker, topic: str, records: list, keys: list | None = None):
    """Produces ``records`` in order -> [(partition, offset)] of each."""
    producer = KafkaProducer(**{**producer_config(settings, broker), "max_request_size": 1 << 21})
    keys = keys or hs.hostile_keys(len(records))
    if topic.endswith(("proxies", "item-features", "control")):  # compacted: a key is required
        keys = [b"" if k is None else k for k in keys]
    futures = [producer.send(topic, key=k, value=v) for k, v in zip(keys, records, strict=True)]
    producer.flush()
    placed = [(f.get(timeout=30).partition, f.get(timeout=30).offset) for f in futures]
    producer.close()
    return placed


def dead_letters(settings, broker, topics, idle_s: float = 2.0) -> dict:
    """(source topic, partition, offset) -> DeadLetter, for every letter in `dlq`."""
    out = {}
    for r in drain(settings, broker, topics.dlq, idle_s=idle_s):
        letter = parse_json(r.value, DeadLetter)
        out[(letter.source_topic, letter.partition, letter.offset)] = letter
    return out


def check_letters(letters: dict, topic: str, records, placed, rejected: set[int], component):
    """Exactly the rejected records of ``topic`` are dead letters, each with a reason, the
    original bytes and the component's name."""
    mine = {k[1:]: v for k, v in letters.items() if k[0] == topic}
    want = {placed[i]: i for i in rejected}
    missing = sorted(set(want) - set(mine))
    extra = {k: mine[k].reason for k in set(mine) - set(want)}
    assert not missing and not extra, (
        f"{topic}: {len(missing)} rejected records not in dlq "
        f"(e.g. {[records[want[k]][:120] for k in missing[:3] if records[want[k]]]}), "
        f"{len(extra)} unexpected dead letters (e.g. {list(extra.values())[:3]})"
    )
    for where, i in want.items():
        letter = mine[where]
        assert letter.reason.strip(), letter
        assert bytes(letter.value_b64) == (records[i] or b""), letter.reason
        assert letter.component == component


def verdicts(records: list, validate) -> set[int]:
    """Indexes of the records ``validate`` raises on."""
    rejected = set()
    for i, value in enumerate(records):
        try:
            validate(value)
        except Exception:
            rejected.add(i)
    return rejected


def _png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def image_records() -> list[bytes]:
    """Items whose image is hostile (or fine): bombs, corrupt, bad base64, paths."""
    from tests.proxy_model.test_image_decoding import png_bomb, png_header_only

    images = {
        "ok": {"image_b64": _png()},
        "bomb": {"image_b64": hs.b64(png_bomb(40_000, 40_000))},
        "big": {"image_b64": hs.b64(png_header_only(5000, 5000))},
        "corrupt": {"image_b64": hs.b64(bytes(range(256)) * 4)},
        "not-b64": {"image_b64": "!!!not base64!!!"},
        "truncated": {"image_b64": _png()[:40]},
        "path": {"image_path": "../../etc/passwd"},
        "both": {"image_b64": _png(), "image_path": "x.png"},
        "b64-number": {"image_b64": 12345},
    }
    return [item_event(f"img-{name}", **extra) for name, extra in images.items()]


# ---------------------------------------------------------------------- items -> worker


def test_hostile_items_worker(kafka_settings, kafka_broker):
    from proxy_model.service import ProxyService
    from proxy_model.vision import ImageLimits
    from streams.worker import ProxyWorker

    w = kafka_settings.worker
    valid = hs.valid_item()
    records = hs.json_records(valid, PER_KIND, (BROKER_LIMIT, w.max_text_chars + 60), 2)
    records += image_records()
    for chars in (w.max_text_chars - 1, w.max_text_chars, w.max_text_chars + 1):
        title = "t" * (chars - len("a"))
        records.append(
            json.dumps({"item_id": f"limit-{chars}", "title": title, "text": "a"}).encode()
        )
    worker = ProxyWorker(kafka_settings, kafka_broker, ProxyService.tiny())
    stub = SimpleNamespace(settings=kafka_settings, image_limits=ImageLimits.from_settings(w))
    rejected = verdicts(
        records, lambda v: ProxyWorker._content(stub, SimpleNamespace(value=v, key=None))
    )
    topics = worker.topics
    placed = produce_indexed(kafka_settings, kafka_broker, topics.items, records)
    produce_indexed(kafka_settings, kafka_broker, topics.items, [item_event("sentinel")], [b"s"])
    started = time.time()
    stats = worker.run(idle_exit_s=4)  # an exception out of the loop fails the test
    assert stats.items >= 1
    proxied = {
        decode_frame(r.value, ProxyRecordEvent)[0].item_id
        for r in drain(kafka_settings, kafka_broker, topics.proxies)
    }
    accepted_ids = {
        parse_json(records[i], ItemUploaded).item_id
        for i in range(len(records))
        if i not in rejected
    }
    assert "sentinel" in proxied and proxied == accepted_ids | {"sentinel"}
    letters = dead_letters(kafka_settings, kafka_broker, topics)
    check_letters(letters, topics.items, records, placed, rejected, "worker")
    print(
        f"\nitems: {len(records)} hostile records, {len(rejected)} dead letters, "
        f"{len(accepted_ids)} proxied, worker run {time.time() - started:.1f} s"
    )


# ---------------------------------------------------------------------- clicks -> processor


def _click_verdict(value) -> None:
    from streams.events import MAX_CLICK_BYTES

    if value is not None and len(value) > MAX_CLICK_BYTES:
        raise EventError("over the click size limit")
    parse_json(value, Click)


def _trainer_decoder(settings):
    from trainer.sample_decoder import SampleDecoder

    return SampleDecoder.from_settings(settings.trainer)


def test_hostile_clicks_processor(kafka_settings, kafka_broker, tmp_path):
    from streams.events import MAX_CLICK_BYTES

    topics = ensure_topics(kafka_settings, common_config(kafka_settings, kafka_broker))
    records = hs.json_records(
        hs.valid_click(), PER_KIND, (BROKER_LIMIT, MAX_CLICK_BYTES, MAX_CLICK_BYTES + 1), 3
    )
    rejected = verdicts(records, _click_verdict)
    proc = start_processor(kafka_settings, kafka_broker, str(tmp_path / "p"))
    try:
        started = time.time()
        placed = produce_indexed(kafka_settings, kafka_broker, topics.clicks, records)
        sentinel = {"user_id": "sentinel", "item_id": "s", "label": 1, "ts": 1.0}
        produce_indexed(
            kafka_settings, kafka_broker, topics.clicks, [json.dumps(sentinel).encode()], [b"s"]
        )
        want = {sample_key(p, o) for k, (p, o) in enumerate(placed) if k not in rejected}
        sentinel_user = id_hash("sentinel")
        samples: dict = {}  # sample key -> (user, item, ts) of its sample
        letters: dict = {}
        end = time.time() + 150
        while time.time() < end:
            for r in drain(kafka_settings, kafka_broker, topics.samples, idle_s=1, timeout_s=20):
                # every frame the processor emitted meets the samples contract (or raises)
                batch = SampleBatch.decode(r.value)
                columns = (batch.user.tolist(), batch.item.tolist(), batch.ts.tolist())
                for key, *sample in zip(batch.sample_key.tolist(), *columns, strict=True):
                    sample = tuple(sample)
                    assert samples.setdefault(key, sample) == sample, key  # repeats identical
            letters = dead_letters(kafka_settings, kafka_broker, topics, idle_s=1)
            assert proc.proc.poll() is None, proc.output()[-3000:]
            if (
                want <= set(samples)
                and len(letters) >= len(rejected)
                and any(user == sentinel_user for user, _, _ in samples.values())
            ):
                break
        assert proc.proc.poll() is None, proc.output()[-3000:]
        sentinel_ids = {k for k, (user, _, _) in samples.items() if user == sentinel_user}
        assert len(sentinel_ids) == 1
        assert set(samples) - sentinel_ids == want
        check_letters(letters, topics.clicks, records, placed, rejected, "processor")
        assert {k[0] for k in letters} == {topics.clicks}, "dead letters of internal records"
        print(
            f"\nclicks: {len(records)} hostile records, {len(rejected)} dead letters, "
            f"{len(want)} samples, {time.time() - started:.1f} s"
        )
    finally:
        proc.proc.terminate()
        proc.finish(timeout=60)


# ---------------------------------------------------------------------- samples -> trainer


def _trainer(settings, broker, tmp_path, variant: str) -> CliProcess:
    return CliProcess(
        settings, broker, "trainer", "--variant", variant, "--state-dir", str(tmp_path / variant),
        "--idle-exit", "3", "--no-reproxy",
        env={"IDPROXY_TRAINER_ONLINE_BATCH_SIZE": "64", "IDPROXY_TRAINER_BATCH_MAX_WAIT_MS": "200",
             "IDPROXY_TRAINER_THREADS": "1"},
    )  # fmt: skip


SENTINEL_KEY = 1 << 41  # partition 2: no hostile record's key (they are below 1000)


def _sample(key: int, item: str = "s") -> bytes:
    """A valid samples record: one sample of the user ``sentinel``."""
    from streams.sample_batch import SampleBatch

    row = dict(sample_key=key, user="sentinel", item=item, label=1, ts=time.time(),
               history=[], item_interactions=0, item_age_s=None, item_known=True)  # fmt: skip
    return SampleBatch.from_rows([row], history_len=0).encode()


def test_hostile_samples_trainer(kafka_settings, kafka_broker, tmp_path):
    topics = ensure_topics(kafka_settings, common_config(kafka_settings, kafka_broker))
    records = hs.sample_records(2 * PER_KIND)
    decoded = _trainer_decoder(kafka_settings).decode(records)
    rejected = {k for k, _ in decoded.rejected}
    assert 0 < len(rejected) < len(records)  # valid records among the hostile ones
    started = time.time()
    keys = [b"" if k is None else k for k in hs.hostile_keys(len(records))]  # tombstones
    placed = produce_indexed(kafka_settings, kafka_broker, topics.samples, records, keys)
    produce_indexed(kafka_settings, kafka_broker, topics.samples, [_sample(SENTINEL_KEY)], [b"s"])
    proc = _trainer(kafka_settings, kafka_broker, tmp_path, "id-only")
    out = proc.finish(timeout=150)
    assert proc.proc.returncode == 0, out[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["samples"] == len(decoded) + 1  # repeated keys dropped, sentinel
    letters = dead_letters(kafka_settings, kafka_broker, topics)
    check_letters(letters, topics.samples, records, placed, rejected, "trainer")
    print(
        f"\nsamples: {len(records)} hostile records, {len(rejected)} dead letters, "
        f"{summary['samples'] - 1} trained, {time.time() - started:.1f} s"
    )


# ---------------------------------------------------------------------- proxies + control -> materializer


def test_hostile_proxies_and_control_materializer(kafka_settings, kafka_broker, tmp_path):
    from store import ProxyStore
    from streams.materializer import Materializer

    dim = kafka_settings.model.id_dim
    topics = ensure_topics(kafka_settings, common_config(kafka_settings, kafka_broker))
    frames, seen = [], set()
    for value in hs.frame_records("proxies", PER_KIND, dim=dim):
        try:  # one record per (version, item): a later one would be an order-dependent rewrite
            header, _ = decode_frame(value, ProxyRecordEvent)
            if (header.proxy_version, header.item_id) in seen:
                continue
            seen.add((header.proxy_version, header.item_id))
        except Exception:
            pass
        frames.append(value)
    commits = hs.json_records(hs.valid_commit(), PER_KIND, (BROKER_LIMIT,), 1)

    scratch = ProxyStore(tmp_path / "scratch", dim=dim)

    def store_verdict(value) -> None:  # what the materializer does with one record
        header, arrays = decode_frame(value, ProxyRecordEvent)
        v = header.proxy_version
        if scratch.version_info(v) is None:
            scratch.stage(v)
        scratch.write_batch(
            v, [header.item_id], arrays["p_coarse"][None], arrays["p_fine"][None], append=True
        )

    bad_frames = verdicts(frames, store_verdict)
    scratch.close()
    bad_commits = verdicts(commits, lambda v: parse_json(v, VersionCommit))
    started = time.time()
    placed_f = produce_indexed(kafka_settings, kafka_broker, topics.proxies, frames)
    placed_c = produce_indexed(kafka_settings, kafka_broker, topics.control, commits)
    rng = np.random.default_rng(0)
    sentinel = encode_frame(
        ProxyRecordEvent(item_id="s", proxy_version="sentinel", encoder_version="e1",
                         uploaded_at=1.0, produced_at=2.0),
        {"p_coarse": rng.standard_normal(dim).astype(np.float32),
         "p_fine": rng.standard_normal(dim).astype(np.float32)},
    )  # fmt: skip
    produce_indexed(kafka_settings, kafka_broker, topics.proxies, [sentinel], [b"sentinel/s"])
    marker = to_json(VersionCommit(version="sentinel", expected_items=1))
    produce_indexed(kafka_settings, kafka_broker, topics.control, [marker], [b"sentinel"])
    store = ProxyStore(tmp_path / "store", dim=dim)
    Materializer(kafka_settings, kafka_broker, store, group_id="hostile").run(idle_exit_s=4)
    try:
        assert store.version_info("sentinel").status != "staged"  # published
        assert store.get_many(["s"], version="sentinel").found.all()
        stored = {}
        for k, value in enumerate(frames):
            if k not in bad_frames:
                header, _ = decode_frame(value, ProxyRecordEvent)
                stored.setdefault(header.proxy_version, set()).add(header.item_id)
        for version, items in stored.items():
            assert store.count_items(version) == len(items), version
    finally:
        store.close()
    letters = dead_letters(kafka_settings, kafka_broker, topics)
    check_letters(letters, topics.proxies, frames, placed_f, bad_frames, "materializer")
    check_letters(letters, topics.control, commits, placed_c, bad_commits, "materializer")
    print(
        f"\nproxies: {len(frames)} hostile records, {len(bad_frames)} dead letters; control: "
        f"{len(commits)} hostile records, {len(bad_commits)} dead letters; "
        f"{time.time() - started:.1f} s"
    )


# ---------------------------------------------------------------------- item cache -> trainer

HIDDEN, GROUPS = 32, 3


def _features_verdict(value) -> None:
    header, arrays = decode_frame(value, ItemFeaturesRecord)
    z, zg = arrays["z"], arrays["z_groups"]
    if z.shape != (HIDDEN,) or zg.shape != (GROUPS, HIDDEN):
        raise ValueError("shape")
    if not (np.isfinite(z).all() and np.isfinite(zg).all()):
        raise ValueError("not finite")


def _coarse_verdict(dim: int):
    def verdict(value) -> None:
        header, arrays = decode_frame(value, ProxyRecordEvent)
        pc = arrays["p_coarse"]
        if pc.shape != (dim,) or not np.isfinite(pc).all():
            raise ValueError("p_coarse")

    return verdict


def test_hostile_item_features_and_proxies_trainer_item_cache(
    kafka_settings, kafka_broker, tmp_path
):
    dim = kafka_settings.model.id_dim
    topics = ensure_topics(kafka_settings, common_config(kafka_settings, kafka_broker))
    rng = np.random.default_rng(0)
    now = time.time()
    good_features = encode_frame(
        ItemFeaturesRecord(item_id="s", encoder_version="e1", uploaded_at=now, produced_at=now),
        {"z": rng.standard_normal(HIDDEN).astype(np.float32),
         "z_groups": rng.standard_normal((GROUPS, HIDDEN)).astype(np.float32)},
    )  # fmt: skip
    good_proxy = encode_frame(
        ProxyRecordEvent(item_id="s", proxy_version="v1", encoder_version="e1",
                         uploaded_at=now, produced_at=now),
        {"p_coarse": rng.standard_normal(dim).astype(np.float32),
         "p_fine": rng.standard_normal(dim).astype(np.float32)},
    )  # fmt: skip
    produce_indexed(kafka_settings, kafka_broker, topics.item_features, [good_features], [b"s"])
    produce_indexed(kafka_settings, kafka_broker, topics.proxies, [good_proxy], [b"v1/s"])
    features = hs.frame_records("item-features", PER_KIND, dim=dim, hidden=HIDDEN, groups=GROUPS)
    proxies = hs.frame_records("proxies", PER_KIND, dim=dim)
    bad_features = verdicts(features, _features_verdict)
    bad_proxies = verdicts(proxies, _coarse_verdict(dim))
    placed_z = produce_indexed(kafka_settings, kafka_broker, topics.item_features, features)
    placed_p = produce_indexed(kafka_settings, kafka_broker, topics.proxies, proxies)
    produce_indexed(
        kafka_settings, kafka_broker, topics.samples, [_sample(SENTINEL_KEY + 1)], [b"s"]
    )
    proc = _trainer(kafka_settings, kafka_broker, tmp_path, "idproxy")
    out = proc.finish(timeout=150)
    assert proc.proc.returncode == 0, out[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["samples"] == 1
    letters = dead_letters(kafka_settings, kafka_broker, topics)
    check_letters(letters, topics.item_features, features, placed_z, bad_features, "trainer")
    check_letters(letters, topics.proxies, proxies, placed_p, bad_proxies, "trainer")
