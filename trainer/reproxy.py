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
