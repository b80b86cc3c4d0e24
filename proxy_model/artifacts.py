"""Versioned model artefacts: safetensors weights plus a JSON manifest. Never pickle.

Layout: ``<root>/<version>/weights.safetensors`` and ``<root>/<version>/manifest.json``;
``<root>/LATEST`` names the newest version (written last, atomically, so a reader never
sees a half-written bundle). The version is a content hash of the weights and manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn


def save_bundle(root: Path, modules: dict[str, nn.Module], manifest: dict[str, Any]) -> str:
    """Saves the modules' state dicts (keys ``<module>.<param>``); returns the version."""
    tensors = {
        f"{name}.{key}": value.detach().cpu().contiguous()
        for name, module in modules.items()
        for key, value in module.state_dict().items()
    }
    h = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode())
    for key in sorted(tensors):
        h.update(key.encode())
        h.update(tensors[key].float().numpy().tobytes())
    version = manifest.get("kind", "bundle") + "-" + h.hexdigest()[:12]
    folder = root / version
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "weights.safetensors"))
    full = {**manifest, "version": version, "created_at": time.time(), "modules": list(modules)}
    (folder / "manifest.json").write_text(json.dumps(full, indent=2, sort_keys=True))
    tmp = root / "LATEST.tmp"
    tmp.write_text(version)
    os.replace(tmp, root / "LATEST")
    return version


def latest_version(root: Path) -> str | None:
    pointer = root / "LATEST"
    return pointer.read_text().strip() if pointer.is_file() else None


def load_bundle(root: Path, version: str) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """Returns ({module: state_dict}, manifest) of one saved version."""
    folder = root / version
    manifest = json.loads((folder / "manifest.json").read_text())
    states: dict[str, dict[str, torch.Tensor]] = {name: {} for name in manifest["modules"]}
    for key, value in load_file(str(folder / "weights.safetensors")).items():
        name, param = key.split(".", 1)
        states[name][param] = value
    return states, manifest
