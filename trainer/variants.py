"""Table-1 variants and cold-start peers as configurations of the one ranker.

Adding a variant is one ``VariantConfig`` entry in ``VARIANTS``; the ranker and the
benchmark read everything else from it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class VariantConfig(BaseModel):
    """Which content inputs the ranker uses and where.

    slot_*: the signal enters the ID slot (target and history items: attention + cross)
    through ``trainer.fusion.ProxyFusion``: slot = e_id + has·w(n)·Σ_k A_k ρ p̂_k with one
    proxy per flag set, in the order coarse, fine, base_id. ``slot_base_id`` is the
    distillation control: the "proxy" is Base's own trained, ℓ2-normalised, frozen ID row
    (no content), so it gets what Stage 1 is fitted to and nothing else.
    feat_*: an extra target-item feature entering the cross block.
    mlp_proxies: p_coarse, p_fine are plain inputs to the final MLP only (target item).
    slot_content: DropoutNet's slot Linear([e_id, Linear(content)]).
    id_dropout / id_replacement: DropoutNet (zeros) or a CVAR-style generator replaces
    the ID embedding with this probability in training, and always for untrained items.
    On a fusion variant (``v5 + cold simulation``) a replaced item is presented as new:
    e_id = 0 and n = 0, so the content path trains in the regime it serves.
    """

    name: str
    slot_coarse: bool = False
    slot_fine: bool = False
    slot_base_id: bool = False
    feat_frozen: bool = False
    feat_cb2cf: bool = False
    mlp_proxies: bool = False
    slot_content: bool = False
    id_dropout: float = 0.0
    id_replacement: Literal["none", "zeros", "generator"] = "none"

    @property
    def needs_stage1(self) -> bool:
        return self.slot_coarse or self.slot_fine or self.mlp_proxies

    @property
    def uses_fine(self) -> bool:
        return self.slot_fine or self.mlp_proxies

    @property
    def n_slot_proxies(self) -> int:
        """K of the fusion (0: no fusion, the slot is e_id or DropoutNet's Linear)."""
        return int(self.slot_coarse) + int(self.slot_fine) + int(self.slot_base_id)


VARIANTS: tuple[VariantConfig, ...] = (
    VariantConfig(name="Base"),
    VariantConfig(name="v1 frozen content", feat_frozen=True),
    VariantConfig(name="v2 CB2CF", feat_cb2cf=True),
    VariantConfig(name="v3 coarse in slot", slot_coarse=True),
    VariantConfig(name="v4 no reuse", mlp_proxies=True),
    VariantConfig(name="v5 IDProxy", slot_coarse=True, slot_fine=True),
    VariantConfig(
        name="v5 + cold simulation",
        slot_coarse=True,
        slot_fine=True,
        id_dropout=0.5,
        id_replacement="zeros",
    ),
    VariantConfig(name="DropoutNet", slot_content=True, id_dropout=0.5, id_replacement="zeros"),
    VariantConfig(name="CVAR-style generator", id_dropout=0.5, id_replacement="generator"),
    VariantConfig(name="control: Base ID in slot", slot_base_id=True),
)
