"""No single record stops a consumer (real broker): image bombs, records that make the
model or the store fail, broken internal records; each lands in `dlq` with its reason."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from proxy_model.service import ProxyService
from streams.events import (
    DeadLetter,
    ProxyRecordEvent,
    decode_frame,
    parse_json,
)
from streams.topics import Topics
from streams.worker import ProxyWorker
from tests.proxy_model.test_image_decoding import png_bomb, png_header_only
from tests.streams.helpers import drain, item_event, produce

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
