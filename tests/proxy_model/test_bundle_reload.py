"""Workers pick up newer head bundles (re-proxy, realign) between batches."""

from __future__ import annotations

import torch

from proxy_model.artifacts import save_bundle
from proxy_model.encoder import ItemContent
from proxy_model.service import ProxyService


def _save(root, svc: ProxyService, **manifest) -> str:
    modules = {"pooling": svc.featurizer.pooling, "coarse": svc.coarse, "fine": svc.fine}
    if svc.featurizer.encoder.projector is not None:
        modules["projector"] = svc.featurizer.encoder.projector
    return save_bundle(
        root,
        modules,
        {
            "kind": "proxy",
            "encoder_name": svc.featurizer.encoder.name,
            "layer_groups": svc.featurizer.layer_groups,
            **manifest,
        },
    )


def test_refresh_loads_new_heads_and_the_published_version_name(tmp_path):
    svc = ProxyService.tiny(bundle_root=tmp_path)
    assert svc.proxy_version == "untrained-seed0" and svc.announces_version
    assert not svc.refresh()  # nothing saved yet
    item = [ItemContent("a red bicycle")]
    before = svc.run(item).p_fine

    trained = ProxyService.tiny()
    with torch.no_grad():
        for p in trained.fine.parameters():
            p.add_(0.5)
    _save(tmp_path, trained, proxy_version="reproxy-ckpt-7", announced=True)

    assert svc.refresh()
    assert svc.proxy_version == "reproxy-ckpt-7"
    assert not svc.announces_version  # its creator published it: workers only append
    after = svc.run(item).p_fine
    assert not torch.allclose(before, after)
    assert not svc.refresh()  # same LATEST: no reload


def test_an_align_bundle_is_its_own_version_and_workers_announce_it(tmp_path):
    svc = ProxyService.tiny()
    bundle = _save(tmp_path, svc)
    loaded = ProxyService.tiny(bundle_root=tmp_path)
    assert loaded.proxy_version == bundle and loaded.announces_version


def test_a_bundle_that_does_not_fit_is_logged_and_the_heads_are_kept(tmp_path, caplog):
    from proxy_model.heads import FineHead

    svc = ProxyService.tiny(bundle_root=tmp_path)
    wide = ProxyService.tiny()
    wide.fine = FineHead(wide.featurizer.hidden_size, 8, 128, 3)  # another adaptor width
    _save(tmp_path, wide, proxy_version="reproxy-x", announced=True)
    assert not svc.refresh()
    assert svc.proxy_version == "untrained-seed0"
    assert "does not fit" in caplog.text
    svc.run([ItemContent("still works")])
