"""Model state as announcements (real broker): a worker applies the bundle announced on
``models`` between batches, and keeps its heads when an announcement is unusable (bytes
that do not hash to the announced sha256, or a record that is not an announcement)."""

from __future__ import annotations

import pytest
import torch
from kafka import KafkaProducer

from proxy_model.artifacts import ArtifactStore, module_states
from proxy_model.encoder import ItemContent
from proxy_model.service import ProxyService
from streams.events import ModelAnnouncement, to_json
from streams.kafka_config import producer_config
from streams.model_feed import BUNDLE_KEY, announce
from streams.worker import ProxyWorker
from tests.streams.helpers import wait_until

pytestmark = pytest.mark.kafka


def _heads(shift: float) -> tuple[dict, dict]:
    """A tiny service's bundle states with the fine head shifted by ``shift``."""
    svc = ProxyService.tiny()
    with torch.no_grad():
        for p in svc.fine.parameters():
            p.add_(shift)
    states = module_states(
        {"pooling": svc.featurizer.pooling, "coarse": svc.coarse, "fine": svc.fine}
    )
    manifest = {
        "encoder_name": svc.featurizer.encoder.name,
        "layer_groups": svc.featurizer.layer_groups,
    }
    return states, manifest


def test_a_worker_applies_an_announced_bundle_and_refuses_a_tampered_one(
    kafka_settings, kafka_broker
):
    service = ProxyService.tiny()
    worker = ProxyWorker(kafka_settings, kafka_broker, service)
    item = [ItemContent("a blue kettle")]
    before = service.run(item).p_fine
    assert not worker.refresh_heads()  # nothing announced yet

    states, manifest = _heads(0.5)
    good = announce(
        kafka_settings, kafka_broker, states, manifest, key=BUNDLE_KEY, producer_name="test"
    )
    assert wait_until(worker.refresh_heads, 10, 0.2)  # the next batches' non-blocking polls see it
    assert service.bundle == good.id and service.proxy_version == good.id
    applied = service.run(item).p_fine
    assert not torch.allclose(before, applied)

    # an announcement whose file is not the announced bytes: refused, heads kept
    states, manifest = _heads(-3.0)
    ref = ArtifactStore(kafka_settings.model.artifacts_dir).save(
        states, {**manifest, "kind": "bundle"}
    )
    forged = ModelAnnouncement(
        key=BUNDLE_KEY, id=ref.id, kind="bundle", sha256="f" * 64, uri=ref.uri, producer="test"
    )
    producer = KafkaProducer(**producer_config(kafka_settings, kafka_broker))
    producer.send(worker.topics.models, key=b"bundle", value=to_json(forged))
    producer.send(worker.topics.models, key=b"bundle", value=b'{"not": "an announcement"}')
    producer.flush()
    producer.close()
    assert not wait_until(worker.refresh_heads, 5, 0.2)
    assert worker.models.rejected == 2
    assert service.bundle == good.id
    assert torch.allclose(service.run(item).p_fine, applied)
    worker.loop.close()
    worker.models.close()
