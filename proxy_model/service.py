"""The proxy-generation service (paper §3.2.4): M + g + φ + φ̃/gate packaged together.

``ProxyService.run(items)`` is the whole ``encode → features → proxies`` path for a batch,
with the MLLM run once per item. Streaming workers call it; the trainer only needs
``proxies_from_features`` (no MLLM).

Versions: ``encoder_version`` names M + g + layer groups (features change when it changes);
``proxy_version`` names the heads bundle (φ, φ̃, gate) that produced the proxies.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from PIL import Image

from idproxy.settings import TINY_MODEL
from proxy_model.artifacts import Artifact
from proxy_model.device import pick_device
from proxy_model.encoder import ItemContent, MultimodalEncoder, build_default_encoder
from proxy_model.encoder import build_tiny_encoder as _tiny_encoder
from proxy_model.features import ContentFeaturizer, ItemFeatures, choose_layer_groups
from proxy_model.heads import CoarseHead, FineHead
from proxy_model.vision import ImageLimits, decode_image

log = logging.getLogger(__name__)

# Used to pick layer groups when no trained bundle exists yet (deterministic per encoder).
PROBE_TEXTS = [
    "Toy Story (1995). Genres: Animation, Children's, Comedy.",
    "Heat (1995). Genres: Action, Crime, Thriller.",
    "Sense and Sensibility (1995). Genres: Drama, Romance.",
    "Handmade ceramic mug, matte glaze, 350 ml.",
    "Weekend hiking trail guide with photos of the summit.",
    "Street food tour: five noodle shops worth the queue.",
    "Minimalist desk setup for a small apartment.",
    "How I repaired a 1970s film camera at home.",
    "Spring outfit ideas: linen shirts and wide trousers.",
    "Five-minute breakfast: overnight oats with berries.",
    "Alien (1979). Genres: Action, Horror, Sci-Fi, Thriller.",
    "Casablanca (1942). Genres: Drama, Romance, War.",
]


@dataclass(frozen=True)
class ServiceOutput:
    """z [B,D], z_groups [B,G,D], p_coarse [B,d], p_fine [B,d]; float32 on CPU."""

    z: torch.Tensor
    z_groups: torch.Tensor
    p_coarse: torch.Tensor
    p_fine: torch.Tensor


class ProxyService:
    """Encodes items and computes their coarse and fine proxies."""

    def __init__(
        self,
        featurizer: ContentFeaturizer,
        coarse: CoarseHead,
        fine: FineHead,
        *,
        proxy_version: str,
        max_image_bytes: int = 4 << 20,
        bundle: str | None = None,
        announces_version: bool = True,
        image_limits: ImageLimits | None = None,
    ) -> None:
        self.featurizer = featurizer.eval()
        self.coarse = coarse.eval()
        self.fine = fine.eval()
        self.proxy_version = proxy_version
        self.encoder_version = featurizer.version()
        self.max_image_bytes = max_image_bytes
        self.image_limits = image_limits or ImageLimits(max_bytes=max_image_bytes)
        self.bundle = bundle  # the loaded bundle's id, None for fresh heads
        # False when the bundle's creator (trainer re-proxy, realign) already published the
        # complete version with its VersionCommit: workers then only append new items to it
        self.announces_version = announces_version

    def apply_bundle(self, bundle: Artifact) -> bool:
        """Loads the heads of an announced bundle (same encoder); True if they changed.

        Only φ and φ̃/gate change; pooling, projector and layer groups belong to the encoder
        version, so features stay comparable. A bundle for another encoder or with other
        shapes is logged and ignored: the service keeps the heads it has.
        """
        if bundle.id == self.bundle:
            return False
        self.bundle = bundle.id  # looked at: a bundle that does not fit is not retried
        manifest = bundle.manifest
        if manifest.get("encoder_name") != self.featurizer.encoder.name:
            log.error("bundle %s is for another encoder: kept %s", bundle.id, self.proxy_version)
            return False
        try:
            coarse, fine = copy.deepcopy(self.coarse), copy.deepcopy(self.fine)
            coarse.load_state_dict(bundle.states["coarse"])
            fine.load_state_dict(bundle.states["fine"])
            fine.input_transform = manifest.get("fine_input", "none")
        except (KeyError, RuntimeError) as exc:
            log.error(
                "bundle %s does not fit these heads (%s): kept %s",
                bundle.id,
                exc,
                self.proxy_version,
            )
            return False
        self.coarse, self.fine = coarse.eval(), fine.eval()
        self.proxy_version, self.announces_version = _bundle_version(bundle)
        log.info("proxy heads loaded from bundle %s (version %s)", bundle.id, self.proxy_version)
        return True

    @property
    def id_dim(self) -> int:
        return self.coarse.mlp[-1].out_features

    def load_image(self, data: bytes) -> Image.Image:
        """Bytes -> RGB image; InvalidItemError when corrupt, of a format not allowed, or over
        the byte or pixel limit (``image_limits``, checked before decoding)."""
        return decode_image(data, limits=self.image_limits)

    @torch.no_grad()
    def proxies_from_features(
        self, z: torch.Tensor, z_groups: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached features -> (p_coarse [B,d], p_fine [B,d]); no MLLM involved."""
        p_coarse = self.coarse(z)
        return p_coarse, self.fine(p_coarse, z_groups)

    @torch.no_grad()
    def run(self, items: list[ItemContent]) -> ServiceOutput:
        feats: ItemFeatures = self.featurizer(items)
        p_coarse, p_fine = self.proxies_from_features(feats.z, feats.z_groups)
        return ServiceOutput(
            z=feats.z.cpu(),
            z_groups=feats.z_groups.cpu(),
            p_coarse=p_coarse.cpu(),
            p_fine=p_fine.cpu(),
        )

    @classmethod
    def assemble(
        cls,
        encoder: MultimodalEncoder,
        *,
        id_dim: int,
        coarse_hidden: int,
        adaptor_hidden: int,
        n_groups: int,
        bundle: Artifact | None = None,
        seed: int = 0,
        max_image_bytes: int = 4 << 20,
        image_limits: ImageLimits | None = None,
    ) -> ProxyService:
        """Heads from ``bundle`` (an announced bundle of this encoder), else fresh heads.

        Fresh heads are seeded and marked ``untrained`` in the proxy version, and the layer
        groups come from :data:`PROBE_TEXTS`.
        """
        torch.manual_seed(seed)
        version = bundle.id if bundle else None
        states, manifest = (bundle.states, bundle.manifest) if bundle else ({}, {})
        if manifest and manifest.get("encoder_name") != encoder.name:
            log.warning(
                "bundle %s is for %s, not %s: ignored",
                version,
                manifest.get("encoder_name"),
                encoder.name,
            )
            states, manifest, version = {}, {}, None
        groups = manifest.get("layer_groups") or choose_layer_groups(
            encoder, [ItemContent(t) for t in PROBE_TEXTS], n_groups
        )
        featurizer = ContentFeaturizer(encoder, groups)
        d = encoder.hidden_size
        coarse = CoarseHead(d, id_dim, coarse_hidden)
        fine = FineHead(d, id_dim, adaptor_hidden, len(groups), manifest.get("fine_input", "none"))
        modules = {"pooling": featurizer.pooling, "coarse": coarse, "fine": fine}
        if encoder.projector is not None:
            modules["projector"] = encoder.projector
        for name, state in states.items():
            modules[name].load_state_dict(state)
        device = encoder.device
        coarse.to(device)
        fine.to(device)
        featurizer.to(device)
        if version is None:
            log.warning("no trained proxy bundle found: using seeded, untrained heads")
            proxy_version, announces = f"untrained-seed{seed}", True
        else:
            proxy_version, announces = _bundle_version(bundle)
        return cls(
            featurizer,
            coarse,
            fine,
            proxy_version=proxy_version,
            max_image_bytes=max_image_bytes,
            bundle=version,
            announces_version=announces,
            image_limits=image_limits,
        )

    @classmethod
    def from_settings(cls, settings, bundle: Artifact | None = None) -> ProxyService:
        """Real weights (SmolLM2 + Lite0 unless ``model.lm_path``/``model.vision`` say otherwise),
        or the tiny random encoder under the tiny profile (``model.encoder = "tiny"``); heads
        from ``bundle`` (the newest announced one, ``streams.model_feed``) when given."""
        m = settings.model
        if m.encoder == "tiny":  # the tiny profile: random weights, same interface
            return cls.tiny(
                id_dim=m.id_dim,
                coarse_hidden=m.coarse_hidden,
                adaptor_hidden=m.adaptor_hidden,
                bundle=bundle,
            )
        encoder = build_default_encoder(
            settings.cache_dir,
            lm_path=m.lm_path,
            vision=m.vision,
            n_visual_tokens=m.n_visual_tokens,
            max_text_tokens=m.max_text_tokens,
            image_size=m.image_size,
            device=m.device,
        )
        return cls.assemble(
            encoder,
            id_dim=m.id_dim,
            coarse_hidden=m.coarse_hidden,
            adaptor_hidden=m.adaptor_hidden,
            n_groups=m.n_layer_groups,
            bundle=bundle,
            max_image_bytes=settings.worker.max_image_bytes,
            image_limits=ImageLimits.from_settings(settings.worker),
        )

    @classmethod
    def tiny(
        cls,
        seed: int = 0,
        id_dim: int = TINY_MODEL["id_dim"],
        bundle: Artifact | None = None,
        coarse_hidden: int = TINY_MODEL["coarse_hidden"],
        adaptor_hidden: int = TINY_MODEL["adaptor_hidden"],
    ) -> ProxyService:
        """Tiny random model with the same interface, for tests (loads in well under 1 s);
        heads from ``bundle`` when given."""
        encoder = _tiny_encoder(seed=seed).to(pick_device("cpu"))
        return cls.assemble(
            encoder,
            id_dim=id_dim,
            coarse_hidden=coarse_hidden,
            adaptor_hidden=adaptor_hidden,
            n_groups=3,
            seed=seed,
            bundle=bundle,
        )


def _bundle_version(bundle: Artifact) -> tuple[str, bool]:
    """(proxy version the bundle's proxies are published under, whether workers announce it).

    A bundle saved by the trainer's re-proxy or by realign names the complete version its
    creator published (``proxy_version``, ``announced``); other bundles (``idproxy align``)
    are their own version, announced by the workers as items arrive.
    """
    manifest = bundle.manifest
    return manifest.get("proxy_version", bundle.id), not manifest.get("announced", False)
