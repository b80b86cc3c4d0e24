"""Workers apply newly announced head bundles (re-proxy, realign) between batches; the
artefact store refuses bytes that are not the announced ones."""

from __future__ import annotations

import pytest
import torch

from proxy_model.artifacts import ArtifactIntegrityError, ArtifactRef, ArtifactStore, module_states
from proxy_model.encoder import ItemContent
from proxy_model.service import ProxyService


def _save(root, svc: ProxyService, **manifest):
    """The bundle of ``svc``'s heads saved under ``root``; returns the loaded Artifact."""
    modules = {"pooling": svc.featurizer.pooling, "coarse": svc.coarse, "fine": svc.fine}
    if svc.featurizer.encoder.projector is not None:
        modules["projector"] = svc.featurizer.encoder.projector
    store = ArtifactStore(str(root))
    ref = store.save(
        module_states(modules),
        {
            "kind": "bundle",
            "encoder_name": svc.featurizer.encoder.name,
            "layer_groups": svc.featurizer.layer_groups,
            **manifest,
        },
    )
    return store.load(ref)


def test_apply_bundle_loads_new_heads_and_the_published_version_name(tmp_path):
    svc = ProxyService.tiny()
    assert svc.proxy_version == "untrained-seed0" and svc.announces_version
    item = [ItemContent("a red bicycle")]
    before = svc.run(item).p_fine

    trained = ProxyService.tiny()
    with torch.no_grad():
        for p in trained.fine.parameters():
            p.add_(0.5)
    bundle = _save(tmp_path, trained, proxy_version="reproxy-ckpt-7", announced=True)

    assert svc.apply_bundle(bundle)
    assert svc.proxy_version == "reproxy-ckpt-7"
    assert not svc.announces_version  # its creator published it: workers only append
    after = svc.run(item).p_fine
    assert not torch.allclose(before, after)
    assert not svc.apply_bundle(bundle)  # the same bundle again: no reload


def test_an_align_bundle_is_its_own_version_and_workers_announce_it(tmp_path):
    bundle = _save(tmp_path, ProxyService.tiny())
    loaded = ProxyService.tiny(bundle=bundle)
    assert loaded.proxy_version == bundle.id and loaded.announces_version


def test_a_bundle_that_does_not_fit_is_logged_and_the_heads_are_kept(tmp_path, caplog):
    from proxy_model.heads import FineHead

    svc = ProxyService.tiny()
    wide = ProxyService.tiny()
    wide.fine = FineHead(wide.featurizer.hidden_size, 8, 128, 3)  # another adaptor width
    assert not svc.apply_bundle(_save(tmp_path, wide, proxy_version="reproxy-x", announced=True))
    assert svc.proxy_version == "untrained-seed0"
    assert "does not fit" in caplog.text
    svc.run([ItemContent("still works")])


def test_the_store_refuses_an_artifact_whose_bytes_changed(tmp_path):
    store = ArtifactStore(str(tmp_path))
    ref = store.save({"head": {"w": torch.ones(3)}}, {"kind": "bundle"})
    assert store.load(ref).states["head"]["w"].tolist() == [1.0, 1.0, 1.0]
    path = tmp_path / f"{ref.id}.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the weights
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError, match="sha256"):
        store.load(ref)
    wrong = ArtifactRef(id=ref.id, uri=ref.uri, sha256="0" * 64)
    with pytest.raises(ArtifactIntegrityError, match="not the announced"):
        store.load(wrong)


def test_saving_is_content_addressed_and_writes_one_safetensors_file(tmp_path):
    store = ArtifactStore(str(tmp_path))
    states = {"head": {"w": torch.arange(4.0)}}
    first, again = (
        store.save(states, {"kind": "snapshot"}),
        store.save(states, {"kind": "snapshot"}),
    )
    assert first.id == again.id and first.id.startswith("snapshot-")
    assert first.uri.startswith("file://")
    assert [p.name for p in tmp_path.iterdir()] == [f"{first.id}.safetensors"]


def test_the_store_keeps_the_newest_artifacts_of_each_name(tmp_path):
    store = ArtifactStore(str(tmp_path), keep=2)
    other = store.save({"t": {"w": torch.zeros(1)}}, {"kind": "bundle"})
    refs = [
        store.save({"t": {"w": torch.full((1,), float(k))}}, {}, "snapshot-x") for k in range(4)
    ]
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == sorted([f"{other.id}.safetensors"] + [f"{r.id}.safetensors" for r in refs[2:]])
    assert store.load(refs[-1]).states["t"]["w"].item() == 3.0
