"""No single record stops a consumer (real broker): image bombs, records that make the
model or the store fail, broken internal records; each lands in `dlq` with its reason."""

from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from proxy_model.service import ProxyService
from store import ProxyStore
from streams.events import (
    DeadLetter,
    ItemFeaturesRecord,
    ProxyRecordEvent,
    VersionCommit,
    decode_frame,
    encode_frame,
    parse_json,
    to_json,
)
from streams.kafka_config import common_config
from streams.materializer import Materializer
from streams.sample_batch import SampleBatch, id_hash
from streams.topics import Topics, ensure_topics
from streams.worker import ProxyWorker
from tests.proxy_model.test_image_decoding import png_bomb, png_header_only
from tests.streams.helpers import CliProcess, drain, item_event, produce, start_processor

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def service():
    return ProxyService.tiny()


def _letters(settings, broker, topics) -> list[DeadLetter]:
    return [parse_json(r.value, DeadLetter) for r in drain(settings, broker, topics.dlq)]


def _proxied(settings, broker, topics) -> set[str]:
    records = drain(settings, broker, topics.proxies)
    return {decode_frame(r.value, ProxyRecordEvent)[0].item_id for r in records}


def _png(colour) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_an_image_bomb_is_a_dead_letter_and_the_worker_keeps_going(
    kafka_settings, kafka_broker, service
):
    topics = Topics.from_settings(kafka_settings)
    worker = ProxyWorker(kafka_settings, kafka_broker, service)
    bombs = {
        "b1": item_event("b1", image_b64=base64.b64encode(png_bomb(40_000, 40_000)).decode()),
        "b2": item_event("b2", image_b64=base64.b64encode(png_header_only(5000, 5000)).decode()),
    }
    good = [(str(i).encode(), item_event(i, image_b64=_png((i * 20, 0, 0)))) for i in range(10)]
    messages = good[:5] + [(k.encode(), v) for k, v in bombs.items()] + good[5:]
    produce(kafka_settings, kafka_broker, topics.items, messages)
    stats = worker.run(idle_exit_s=4)  # an exception out of the loop would fail the test
    assert stats.items == 10 and stats.dead_letters == 2
    assert _proxied(kafka_settings, kafka_broker, topics) == {str(i) for i in range(10)}
    letters = {
        bytes(letter.key_b64).decode(): letter
        for letter in _letters(kafka_settings, kafka_broker, topics)
    }
    assert set(letters) == set(bombs)
    assert "over the pixel limit of 16,000,000 (decompression bomb)" in letters["b1"].reason
    assert "5000x5000 = 25,000,000 pixels is over the limit" in letters["b2"].reason
    for key, letter in letters.items():
        assert bytes(letter.value_b64) == bombs[key]  # the original bytes are kept
        assert letter.component == "worker" and letter.source_topic == topics.items


class PoisonedService:
    """The tiny service, except that the model raises on items whose text holds ``poison``
    (or on every item when ``broken``): a failure of the model on one record."""

    def __init__(self, inner, *, broken: bool = False) -> None:
        self.inner, self.broken = inner, broken

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def run(self, items):
        if self.broken or any("poison" in item.text for item in items):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return self.inner.run(items)


def test_a_record_the_model_or_the_parser_fails_on_is_a_dead_letter(
    kafka_settings, kafka_broker, service, monkeypatch
):
    topics = Topics.from_settings(kafka_settings)
    worker = ProxyWorker(kafka_settings, kafka_broker, PoisonedService(service))
    parse = worker._content

    def content(message):  # a parser bug that only this record triggers
        if message.key == b"parse-bug":
            raise ZeroDivisionError("division by zero")
        return parse(message)

    monkeypatch.setattr(worker, "_content", content)
    good = [(str(i).encode(), item_event(i)) for i in range(12)]
    messages = (
        good[:6]
        + [(b"poison", item_event("p1", title="poison pill")), (b"parse-bug", item_event("p2"))]
        + good[6:]
    )
    produce(kafka_settings, kafka_broker, topics.items, messages)
    stats = worker.run(idle_exit_s=4)
    assert stats.items == 12 and stats.dead_letters == 2
    assert _proxied(kafka_settings, kafka_broker, topics) == {str(i) for i in range(12)}
    letters = {bytes(x.key_b64): x for x in _letters(kafka_settings, kafka_broker, topics)}
    assert letters[b"poison"].reason == (
        "RuntimeError: CUDA error: an illegal memory access was encountered"
    )
    assert letters[b"parse-bug"].reason == "ZeroDivisionError: division by zero"
    assert bytes(letters[b"poison"].value_b64) == messages[6][1]


def test_a_model_that_fails_on_everything_stops_the_worker_without_dead_letters(
    kafka_settings, kafka_broker, service
):
    """Not the record's fault: nothing is dead-lettered or committed, so a worker with a
    working model processes every item afterwards."""
    topics = Topics.from_settings(kafka_settings)
    broken = ProxyWorker(kafka_settings, kafka_broker, PoisonedService(service, broken=True))
    produce(
        kafka_settings,
        kafka_broker,
        topics.items,
        [(str(i).encode(), item_event(i)) for i in range(6)],
    )
    with pytest.raises(RuntimeError, match="illegal memory access"):
        broken.run(idle_exit_s=20)
    assert broken.dlq.count == 0
    stats = ProxyWorker(kafka_settings, kafka_broker, service).run(idle_exit_s=4)
    assert stats.items == 6 and stats.dead_letters == 0
    assert _letters(kafka_settings, kafka_broker, topics) == []


def _proxy_frame(item: str, version: str, arrays: dict) -> bytes:
    header = ProxyRecordEvent(
        item_id=item,
        proxy_version=version,
        encoder_version="e1",
        uploaded_at=time.time(),
        produced_at=time.time(),
    )
    return encode_frame(header, arrays)


def test_a_proxy_record_the_store_write_fails_on_is_a_dead_letter(
    kafka_settings, kafka_broker, tmp_path
):
    """Records that spoil their version's write batch (another width, a missing array)
    are dead-lettered one by one; the rest of the batch is stored and published."""
    topics = ensure_topics(kafka_settings, common_config(kafka_settings, kafka_broker))
    dim = kafka_settings.model.id_dim
    rng = np.random.default_rng(1)

    def vec(d=dim):
        return rng.standard_normal(d).astype(np.float32)

    good = {f"g{k}": {"p_coarse": vec(), "p_fine": vec()} for k in range(6)}
    poison = {
        "narrow": {"p_coarse": vec(dim - 3), "p_fine": vec(dim - 3)},
        "half": {"p_coarse": vec(), "p_extra": vec()},
    }
    frames = [(f"v1/{i}".encode(), _proxy_frame(i, "v1", a)) for i, a in good.items()]
    bad = [(f"v1/{i}".encode(), _proxy_frame(i, "v1", a)) for i, a in poison.items()]
    commit = VersionCommit(version="v1", expected_items=6)
    produce(kafka_settings, kafka_broker, topics.proxies, frames[:3] + bad + frames[3:])
    produce(kafka_settings, kafka_broker, topics.control, [(b"v1", to_json(commit))])
    store = ProxyStore(tmp_path / "store", dim=dim)
    Materializer(kafka_settings, kafka_broker, store, group_id="poison").run(idle_exit_s=4)
    got = store.get_many(sorted(good))
    assert got.found.all() and store.active_version() == "v1"
    np.testing.assert_array_equal(got.p_fine, np.stack([good[i]["p_fine"] for i in sorted(good)]))
    assert store.version_info("v1").item_count == 6
    store.close()
    letters = {bytes(x.key_b64): x for x in _letters(kafka_settings, kafka_broker, topics)}
    assert set(letters) == {b"v1/narrow", b"v1/half"}
    assert letters[b"v1/narrow"].reason.startswith("store rejected 'narrow'@v1:")
    assert letters[b"v1/half"].reason == "KeyError: 'p_fine'"
    assert all(x.component == "materializer" for x in letters.values())


def test_the_processor_dead_letters_a_record_it_fails_on_and_goes_on(
    kafka_settings, kafka_broker, tmp_path
):
    """Records on the processor's internal re-keyed topic that its handler fails on (not
    JSON, a missing field, a sample that does not validate) are dead-lettered with the
    exception's type and message; the clicks around them become samples."""
    topics = ensure_topics(kafka_settings, common_config(kafka_settings, kafka_broker))
    proc = start_processor(kafka_settings, kafka_broker, str(tmp_path / "p"))
    try:
        clicks = [
            {"user_id": f"u{k % 3}", "item_id": str(k % 4), "label": 1, "ts": 1000.0 + k}
            for k in range(12)
        ]
        produce(
            kafka_settings,
            kafka_broker,
            topics.clicks,
            [(c["user_id"].encode(), json.dumps(c).encode()) for c in clicks[:6]],
        )
        doc = {"user_id": "u9", "item_id": "1", "label": 1, "ts": 5.0, "history": []}
        poison = {
            b"not-json": b"{broken",
            b"no-sample-id": json.dumps(doc).encode(),
            b"bad-label": json.dumps({**doc, "sample_id": "x/0/1", "label": 7}).encode(),
        }
        produce(kafka_settings, kafka_broker, topics.clicks_by_item, list(poison.items()))
        produce(
            kafka_settings,
            kafka_broker,
            topics.clicks,
            [(c["user_id"].encode(), json.dumps(c).encode()) for c in clicks[6:]],
        )
        want = {(id_hash(c["user_id"]), c["ts"]) for c in clicks}
        got: set = set()
        letters: dict = {}
        end = time.time() + 180
        while time.time() < end and (got != want or len(letters) < len(poison)):
            frames = drain(kafka_settings, kafka_broker, topics.samples, idle_s=2, timeout_s=20)
            got = {
                (int(user), float(ts))
                for b in (SampleBatch.decode(r.value) for r in frames)
                for user, ts in zip(b.user, b.ts, strict=True)
            }
            letters = {bytes(x.key_b64): x for x in _letters(kafka_settings, kafka_broker, topics)}
            assert proc.proc.poll() is None, proc.output()[-3000:]
        assert got == want
        assert set(letters) == set(poison)
        assert letters[b"not-json"].reason.startswith("JSONDecodeError: ")
        assert letters[b"no-sample-id"].reason.startswith("ValidationError: ")
        assert "sample_id" in letters[b"no-sample-id"].reason
        assert letters[b"bad-label"].reason.startswith("ValidationError: ")
        for key, letter in letters.items():
            assert letter.component == "processor" and bytes(letter.value_b64) == poison[key]
            assert letter.source_topic == topics.clicks_by_item
    finally:
        proc.proc.terminate()
        proc.finish(timeout=60)


def test_a_record_that_kills_the_worker_is_quarantined_after_n_deaths(kafka_settings, kafka_broker):
    """Crash-loop quarantine: the model kills its process (``os._exit``) on one item. The
    first death is in a batch; the restarted worker goes through that batch one record at
    a time, dies on the item alone twice, and the next restart dead-letters it with
    "killed its consumer 2 times" and proxies everything else."""
    from tests.streams.killer_worker import KILL_CODE

    topics = ensure_topics(kafka_settings, common_config(kafka_settings, kafka_broker))
    good = [(str(i).encode(), item_event(i)) for i in range(10)]
    killer = (b"killer", item_event("killer", title="kill me"))
    produce(kafka_settings, kafka_broker, topics.items, good[:5] + [killer] + good[5:])
    codes, outputs, log = _restart_until_clean_exit(
        kafka_settings, kafka_broker, "tests.streams.killer_worker", ["4"], timeout=180
    )
    assert codes == [KILL_CODE, KILL_CODE, KILL_CODE, 0], log
    assert "1 dead letters" in outputs[-1], log
    assert _proxied(kafka_settings, kafka_broker, topics) == {str(i) for i in range(10)}
    (letter,) = _letters(kafka_settings, kafka_broker, topics)
    assert letter.reason == "killed its consumer 2 times"
    assert bytes(letter.value_b64) == killer[1] and bytes(letter.key_b64) == b"killer"
    assert letter.component == "worker" and letter.source_topic == topics.items


def test_a_record_that_kills_the_materializer_is_quarantined_after_n_deaths(
    kafka_settings, kafka_broker
):
    """Crash-loop quarantine in the materializer: its store kills the process
    (``os._exit``) on any write that holds one item. The first death is in a batch; the
    restarted materializer writes that batch one record at a time (each committed), dies on
    the item alone twice, and the next restart dead-letters it with "killed its consumer 2
    times", stores the ten others and publishes their version. A plain materializer of the
    same group then finds nothing left to handle."""
    from tests.streams.killer_materializer import KILL_CODE, KILL_ITEM

    topics = ensure_topics(kafka_settings, common_config(kafka_settings, kafka_broker))
    dim = kafka_settings.model.id_dim
    rng = np.random.default_rng(2)
    good = {f"g{k}": {"p_coarse": rng.standard_normal(dim).astype(np.float32)} for k in range(10)}
    for arrays in good.values():
        arrays["p_fine"] = -arrays["p_coarse"]
    frames = [(f"v1/{i}".encode(), _proxy_frame(i, "v1", a)) for i, a in good.items()]
    killer = (f"v1/{KILL_ITEM}".encode(), _proxy_frame(KILL_ITEM, "v1", good["g0"]))
    produce(kafka_settings, kafka_broker, topics.proxies, frames[:5] + [killer] + frames[5:])
    commit = VersionCommit(version="v1", expected_items=10)
    produce(kafka_settings, kafka_broker, topics.control, [(b"v1", to_json(commit))])
    codes, outputs, log = _restart_until_clean_exit(
        kafka_settings,
        kafka_broker,
        "tests.streams.killer_materializer",
        ["quarantine-test", "3"],
        timeout=120,
    )
    assert codes == [KILL_CODE, KILL_CODE, KILL_CODE, 0], log
    assert "1 dead letters" in outputs[-1], log
    with ProxyStore(kafka_settings.store.path, dim=dim) as store:
        assert store.active_version() == "v1", log
        plain = Materializer(kafka_settings, kafka_broker, store, group_id="quarantine-test")
        plain.run(idle_exit_s=2)
        assert (plain.written, plain.pending, plain.dlq.count) == (0, {}, 0)  # all committed
        assert store.version_info("v1").item_count == 10
        got = store.get_many(sorted(good) + [KILL_ITEM])
        assert got.found.tolist() == [True] * 10 + [False]
        want = np.stack([good[i]["p_coarse"] for i in sorted(good)])
        np.testing.assert_array_equal(got.p_coarse[:10], want)
    (letter,) = _letters(kafka_settings, kafka_broker, topics)
    assert letter.reason == "killed its consumer 2 times"
    assert bytes(letter.value_b64) == killer[1] and bytes(letter.key_b64) == killer[0]
    assert letter.component == "materializer" and letter.source_topic == topics.proxies


def test_records_that_kill_the_trainer_are_quarantined_after_n_deaths(
    kafka_settings, kafka_broker, tmp_path
):
    """Crash-loop quarantine in the online trainer (markers in files of its state folder;
    it restarts from its checkpoint, and its content reader from the topics' beginning):
    it kills its process on the content of one item and on any batch that holds one
    sample key. Each killer record dies first in a batch, then alone twice; the next
    restart dead-letters it (the whole frame) with "killed its consumer 2 times" and goes
    on, and in the end every sample of the other records is trained on exactly once."""
    from tests.online.killer_trainer import KILL_CODE, KILL_ITEM, KILL_SAMPLE
    from tests.online.synthetic import sample_messages, samples

    topics = ensure_topics(kafka_settings, common_config(kafka_settings, kafka_broker))
    now = time.time()
    header = ItemFeaturesRecord(
        item_id=KILL_ITEM, encoder_version="e", uploaded_at=now, produced_at=now
    )
    arrays = {"z": np.zeros(4, np.float32), "z_groups": np.zeros((3, 4), np.float32)}
    content = (KILL_ITEM.encode(), encode_frame(header, arrays))
    produce(kafka_settings, kafka_broker, topics.item_features, [content])
    data = samples(60, 6, 10)
    data[30] = data[30].but(sample_key=KILL_SAMPLE)
    messages = sample_messages(data, per_record=8)  # the killer is in record 3 (24..31)
    killer = messages[30 // 8]
    produce(kafka_settings, kafka_broker, topics.samples, messages)
    codes, outputs, log = _restart_until_clean_exit(
        kafka_settings,
        kafka_broker,
        "tests.online.killer_trainer",
        [str(tmp_path / "state"), "3"],
        timeout=120,
        env={"IDPROXY_TRAINER_ONLINE_BATCH_SIZE": "25", "IDPROXY_TRAINER_THREADS": "1"},
        runs=8,
    )
    # the content record dies alone at once (the only record of its poll) and once more;
    # the sample dies in a batch, then alone twice
    assert codes == [KILL_CODE] * 5 + [0], log
    assert "1 dead letters" in outputs[-1], log  # the content's was sent by the run before
    summary = json.loads(outputs[-1].strip().splitlines()[-1])
    assert summary["samples"] == 60 - 8, log
    letters = {
        letter.source_topic: letter for letter in _letters(kafka_settings, kafka_broker, topics)
    }
    assert len(_letters(kafka_settings, kafka_broker, topics)) == 2  # each once
    assert set(letters) == {topics.item_features, topics.samples}
    assert all(x.reason == "killed its consumer 2 times" for x in letters.values())
    assert all(x.component == "trainer" for x in letters.values())
    assert bytes(letters[topics.samples].value_b64) == killer[1]
    assert bytes(letters[topics.item_features].value_b64) == content[1]


def _restart_until_clean_exit(
    settings,
    broker,
    module: str,
    args: list[str],
    timeout: float,
    env: dict | None = None,
    runs: int = 6,
) -> tuple[list[int], list[str], str]:
    """Runs ``python -m module args`` with 2 quarantine deaths, again after each death, until
    it exits 0 (at most ``runs`` runs) -> (exit codes, outputs, their joined tails)."""
    codes, outputs = [], []
    while len(codes) < runs and (not codes or codes[-1] != 0):
        proc = CliProcess(
            settings,
            broker,
            *args,
            module=module,
            env={"IDPROXY_KAFKA_QUARANTINE_DEATHS": "2", **(env or {})},
        )
        outputs.append(proc.finish(timeout=timeout))
        codes.append(proc.proc.returncode)
    return codes, outputs, "\n---\n".join(o[-1500:] for o in outputs)
