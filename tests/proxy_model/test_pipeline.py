"""encode → features → proxies, artefacts, and Stage-1 training on a known alignment."""

import torch
import torch.nn.functional as F

from proxy_model.artifacts import ArtifactStore, module_states
from proxy_model.encoder import ItemContent
from proxy_model.features import ContentFeaturizer, TokenStates
from proxy_model.heads import CoarseHead
from proxy_model.service import ProxyService
from proxy_model.stage1 import Stage1Config, alignment_report, fit_stage1


def test_service_outputs_and_cached_feature_path_agree():
    svc = ProxyService.tiny(seed=3)
    items = [ItemContent("alpha"), ItemContent("beta gamma")]
    out = svc.run(items)
    assert out.z.shape == (2, svc.featurizer.hidden_size)
    assert out.z_groups.shape == (2, 3, svc.featurizer.hidden_size)
    assert torch.allclose(out.p_coarse.norm(dim=-1), torch.ones(2), atol=1e-5)
    # proxies recomputed from the cached features alone equal the full path
    p_coarse, p_fine = svc.proxies_from_features(out.z, out.z_groups)
    assert torch.allclose(p_coarse, out.p_coarse) and torch.allclose(p_fine, out.p_fine)
    # and the run is deterministic
    assert torch.allclose(svc.run(items).p_fine, out.p_fine)


def test_layer_groups_cover_all_layers_in_order():
    svc = ProxyService.tiny()
    groups = svc.featurizer.layer_groups
    assert len(groups) == 3
    assert [layer for g in groups for layer in g] == list(
        range(1, svc.featurizer.encoder.n_layers + 1)
    )


def test_bundle_round_trip_restores_the_heads(tmp_path):
    svc = ProxyService.tiny(seed=5)
    with torch.no_grad():
        svc.coarse.mlp[0].weight.add_(1.0)
    store = ArtifactStore(str(tmp_path))
    ref = store.save(
        module_states({"pooling": svc.featurizer.pooling, "coarse": svc.coarse, "fine": svc.fine}),
        {
            "kind": "bundle",
            "encoder_name": svc.featurizer.encoder.name,
            "layer_groups": svc.featurizer.layer_groups,
        },
    )
    bundle = store.load(ref)
    assert bundle.manifest["id"] == ref.id
    assert torch.equal(bundle.states["coarse"]["mlp.0.weight"], svc.coarse.mlp[0].weight)
    restored = ProxyService.tiny(seed=5, bundle=bundle)  # same encoder, fresh heads + bundle
    assert torch.equal(restored.coarse.mlp[0].weight, svc.coarse.mlp[0].weight)
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.pkl"))


def test_stage1_lowers_loss_and_raises_heldout_recall():
    """Targets are a fixed random linear map of each item's mean token state: learnable."""
    torch.manual_seed(0)
    n, width, hidden, d = 400, 6, 16, 8
    states = TokenStates.random(n, width, hidden, seed=1)
    last = states.last.float()
    mean = (last * states.mask[..., None]).sum(1) / states.mask.sum(1, keepdim=True)
    targets = F.normalize(mean @ torch.randn(hidden, d), dim=-1)
    train, hold = torch.arange(0, 300), torch.arange(300, n)

    featurizer = ContentFeaturizer(None, states.layer_groups, hidden_size=hidden)
    head = CoarseHead(hidden, d, 32)

    def recall() -> float:
        with torch.no_grad():
            z = featurizer.pooling(last[hold], states.mask[hold])
            return alignment_report(head(z), targets, hold, k=10).recall_at_k

    before = recall()
    config = Stage1Config(lr=3e-3, batch_size=64, epochs=60, tau_c=0.1)
    hist = fit_stage1(
        featurizer, head, targets[train], config, token_states=states, rows=train, progress=False
    )
    assert hist.losses[-1] < 0.5 * hist.losses[0]
    after = recall()
    assert after > 0.5 and after > before + 0.3


def _fit_with_encoder(mode: str):
    from proxy_model.encoder import build_tiny_encoder

    encoder = build_tiny_encoder(seed=2, with_vision=False)
    featurizer = ContentFeaturizer(encoder, [[1, 2], [3, 4], [5, 6]])
    head = CoarseHead(encoder.hidden_size, 4, 8)
    items = [ItemContent(f"item number {i}") for i in range(8)]
    targets = F.normalize(torch.randn(8, 4), dim=-1)
    before = {k: v.clone() for k, v in encoder.lm.state_dict().items()}
    config = Stage1Config(lr=1e-2, batch_size=4, epochs=2, encoder_train_mode=mode, lora_rank=2)
    fit_stage1(featurizer, head, targets, config, items=items, progress=False)
    after = encoder.lm.state_dict()
    return before, after


def test_full_mode_trains_the_language_model():
    before, after = _fit_with_encoder("full")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any("layers.0.self_attn.q_proj" in k for k in changed)


def test_lora_mode_trains_only_the_adapters():
    before, after = _fit_with_encoder("lora")
    lora_keys = [k for k in after if "lora_" in k]
    assert lora_keys, "LoRA adapters were injected"
    lora_b = [k for k in lora_keys if "lora_B" in k]
    assert any(after[k].abs().sum() > 0 for k in lora_b)  # B starts at zero, so it trained
    base = {k.replace(".base_layer", ""): v for k, v in after.items() if "lora_" not in k}
    assert all(torch.equal(before[k], base[k]) for k in before)  # base weights untouched


def test_stage1_keeps_the_epoch_with_the_lowest_held_out_loss():
    """Targets unrelated to the features: φ can only memorise the training rows, so the
    held-out PAL loss is lowest early and the kept weights are that epoch's."""
    from proxy_model.alignment import pal_loss
    from proxy_model.stage1 import fit_coarse_head

    torch.manual_seed(0)
    z = torch.randn(100, 12)
    targets = F.normalize(torch.randn(100, 4), dim=-1)
    config = Stage1Config(lr=3e-2, batch_size=32, epochs=30, seed=1, holdout_fraction=0.2)
    head = CoarseHead(12, 4, 64)
    history = fit_coarse_head(head, z, targets, config, progress=False)
    assert len(history.holdout_losses) == len(history.losses) == 30
    best = min(range(30), key=history.holdout_losses.__getitem__)
    assert history.best_epoch == best < 29  # memorising made the held-out loss worse later
    assert history.losses[-1] < history.losses[best]  # ... while the training loss fell
    hold = torch.randperm(100, generator=torch.Generator().manual_seed(1))[:20]
    with torch.no_grad():
        kept = pal_loss(head(z[hold]), targets[hold], hold, config.tau_c)
    assert abs(float(kept) - history.holdout_losses[best]) < 1e-5  # the best epoch's weights
    no_stop = fit_coarse_head(
        CoarseHead(12, 4, 64), z, targets, Stage1Config(epochs=2, holdout_fraction=0.0), False
    )
    assert no_stop.best_epoch is None and no_stop.holdout_losses == []
