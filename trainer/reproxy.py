"""What a re-proxy publishes: a complete ``proxies`` version of the cached items (the same
frames and keys as the proxy worker's, then its ``VersionCommit``), and the model bundle
with the trainer's fine head, which the workers load for items uploaded after it.

Used by the online trainer's re-proxy and by ``idproxy realign``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from trainer.item_cache import ItemCache

log = logging.getLogger(__name__)


def publish_proxies(
    producer, topics, version: str, ids: list[str], cache: ItemCache, p_coarse, p_fine
) -> None:
    """Same frames and keys as streams/worker.py, then VersionCommit(expected_items=len(ids))."""
    from streams.events import ProxyRecordEvent, VersionCommit, encode_frame, to_json

    now = time.time()
    pc, pf = p_coarse.numpy(), p_fine.numpy()
    for k, item_id in enumerate(ids):
        c = cache.items[item_id]
        header = ProxyRecordEvent(
            item_id=item_id,
            proxy_version=version,
            encoder_version=c.encoder_version,
            uploaded_at=c.uploaded_at,
            produced_at=now,
        )
        producer.send(
            topics.proxies,
            key=f"{version}/{item_id}".encode(),
            value=encode_frame(header, {"p_coarse": pc[k], "p_fine": pf[k]}),
        )
    producer.flush()  # every record before the marker
    commit = VersionCommit(version=version, expected_items=len(ids))
    producer.send(topics.control, key=version.encode(), value=to_json(commit))
    producer.flush()


class ChurnGate:
    """Publishes a re-proxy only when the proxies moved enough to matter.

    ``change`` is the mean over items of ‖p_new − p_old‖ / ‖p_old‖, against the last
    *published* version (so slow drift adds up until it crosses ``min_change``); items not
    in that version are left out (the workers append new uploads to the active version with
    the same bundle). The first re-proxy of a process is always published. ``min_change``
    0 publishes every re-proxy.

    >>> gate = ChurnGate(min_change=0.1)
    >>> a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    >>> gate.decide(["x", "y"], a)  # nothing published yet
    (True, None)
    >>> gate.published(["x", "y"], a)
    >>> gate.decide(["x", "y", "z"], torch.tensor([[1.0, 0.05], [0.0, 2.0], [5.0, 5.0]]))
    (False, 0.025)
    >>> gate.decide(["x"], torch.tensor([[0.0, 1.0]]))[0]
    True
    """

    def __init__(self, min_change: float) -> None:
        self.min_change = min_change
        self.index: dict[str, int] = {}
        self.fine: torch.Tensor | None = None
        self.skipped = 0
        self.versions = 0

    def decide(self, ids: list[str], fine: torch.Tensor) -> tuple[bool, float | None]:
        """(publish?, change) for the p_fine [N, d] of ``ids``."""
        if self.fine is None:
            return True, None
        both = [(k, self.index[i]) for k, i in enumerate(ids) if i in self.index]
        if not both:
            return True, None
        new_rows, old_rows = (torch.tensor(x) for x in zip(*both, strict=True))
        old = self.fine[old_rows]
        moved = (fine[new_rows] - old).norm(dim=-1) / old.norm(dim=-1).clamp_min(1e-12)
        change = round(float(moved.mean()), 6)
        publish = change >= self.min_change
        self.skipped += not publish
        return publish, change

    def published(self, ids: list[str], fine: torch.Tensor) -> None:
        self.index = {item: k for k, item in enumerate(ids)}
        self.fine = fine.clone()
        self.versions += 1


def bundle_fine(root: Path, hidden: int, groups: int, dim: int) -> dict | None:
    """The fine-head state of the LATEST bundle when its shapes fit, else None."""
    from proxy_model.artifacts import latest_version, load_bundle

    version = latest_version(root)
    if version is None:
        return None
    states, _ = load_bundle(root, version)
    fine = states.get("fine")
    if fine is None:
        return None
    w_in, w_out = fine["adaptor.0.weight"], fine["adaptor.2.weight"]
    if w_in.shape[1] != hidden * groups or w_out.shape[0] != dim:
        log.warning(
            "bundle %s fine head does not fit (D=%d, G=%d, d=%d): not used",
            version,
            hidden,
            groups,
            dim,
        )
        return None
    return fine


class _State(torch.nn.Module):
    """A saved state dict posing as a module, to re-save bundle parts unchanged."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self._saved = state

    def state_dict(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        return dict(self._saved)


def save_fine_bundle(
    root: Path, fine: torch.nn.Module, note: dict, coarse: torch.nn.Module | None = None
) -> str | None:
    """Re-saves the LATEST bundle with ``fine`` (and ``coarse`` if given) replaced.

    Keeps pooling, projector, layer groups and encoder name; None when no bundle exists
    (e.g. workers on the tiny model or untrained heads: nothing to update).
    """
    from proxy_model.artifacts import latest_version, load_bundle, save_bundle

    version = latest_version(root)
    if version is None:
        return None
    states, manifest = load_bundle(root, version)
    modules: dict[str, torch.nn.Module] = {name: _State(s) for name, s in states.items()}
    modules["fine"] = fine
    if coarse is not None:
        modules["coarse"] = coarse
    keep = {k: v for k, v in manifest.items() if k not in ("version", "created_at", "modules")}
    return save_bundle(root, modules, {**keep, **note, "parent": version})
