"""The artefact store: model state as single safetensors files, addressed by URI + sha256.

One artefact is one file ``<root>/<id>.safetensors``; its JSON manifest rides in the
safetensors header metadata (key ``manifest``), so weights and manifest travel and are
checked together. Never pickle. The root is any fsspec URL: a local folder by default
(``model.artifacts_dir``), ``s3://…``/``gs://…``/``memory://…`` with the matching fsspec
backend installed.

* ``save`` writes the file under a temporary name, then moves it into place, and returns an
  :class:`ArtifactRef` (id, uri, sha256 of the file's bytes). The id is ``<name>-<12 hex>``
  (name: the writer's, by default the manifest's kind; hex: a content hash), so saving the
  same state twice is the same artefact. With ``keep`` > 0 it then deletes all but the
  ``keep`` newest artefacts of that name: readers only load the newest announced one.
* ``load(ref)`` reads the file and raises :class:`ArtifactIntegrityError` when its bytes do
  not hash to ``ref.sha256``: a reader never runs weights that are not the announced ones.

Who is told about an artefact is not this module's job: writers announce refs on the
compacted ``models`` topic (``streams/model_feed.py``).

>>> import torch, tempfile
>>> store = ArtifactStore(tempfile.mkdtemp())
>>> ref = store.save({"head": {"w": torch.ones(2)}}, {"kind": "bundle"})
>>> artifact = store.load(ref)
>>> artifact.states["head"]["w"].tolist(), artifact.manifest["id"] == ref.id
([1.0, 1.0], True)
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import time
import uuid
from dataclasses import dataclass
from typing import Any

import fsspec
import torch
from pydantic import BaseModel
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

MAX_ARTIFACT_BYTES = 1 << 30  # a reader refuses a larger file before hashing it


class ArtifactIntegrityError(ValueError):
    """The bytes at an artefact's URI are not the announced ones (checksum or format)."""


class ArtifactRef(BaseModel):
    """Where an artefact is and what its bytes hash to."""

    id: str
    uri: str
    sha256: str


States = dict[str, dict[str, torch.Tensor]]  # {module: state_dict}


@dataclass(frozen=True)
class Artifact:
    """A loaded artefact: its id, {module: state_dict} and manifest."""

    id: str
    states: States
    manifest: dict[str, Any]


def module_states(modules: dict[str, nn.Module]) -> States:
    """{name: module} -> {name: detached CPU state dict}."""
    return {
        name: {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        for name, module in modules.items()
    }


class ArtifactStore:
    """Saves and loads artefacts under one fsspec root URL (a local folder by default)."""

    def __init__(self, root: str, keep: int = 0) -> None:
        self.root = str(root).rstrip("/")
        self.keep = keep
        self.fs, self.path = fsspec.core.url_to_fs(self.root)

    @classmethod
    def from_settings(cls, settings) -> ArtifactStore:
        """``model.artifacts_dir``, keeping ``model.artifacts_keep`` per name."""
        return cls(settings.model.artifacts_dir, settings.model.artifacts_keep)

    def save(
        self, states: States, manifest: dict[str, Any], name: str | None = None
    ) -> ArtifactRef:
        """Writes ``states`` + ``manifest`` as one file; returns its ref (id, uri, sha256)."""
        tensors = {f"{name}.{key}": value for name, s in states.items() for key, value in s.items()}
        h = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode())
        for key in sorted(tensors):
            h.update(key.encode())
            h.update(tensors[key].float().numpy().tobytes())
        name = name or manifest.get("kind", "bundle")
        artefact_id = f"{name}-{h.hexdigest()[:12]}"
        full = {**manifest, "id": artefact_id, "created_at": time.time(), "modules": list(states)}
        data = save_safetensors(tensors, metadata={"manifest": json.dumps(full, sort_keys=True)})
        path = f"{self.path}/{artefact_id}.safetensors"
        self.fs.makedirs(self.path, exist_ok=True)
        tmp = f"{self.path}/.tmp-{uuid.uuid4().hex}"
        self.fs.pipe_file(tmp, data)
        self.fs.mv(tmp, path)
        if self.keep:
            self._prune(name)
        return ArtifactRef(
            id=artefact_id,
            uri=self.fs.unstrip_protocol(path),
            sha256=hashlib.sha256(data).hexdigest(),
        )

    def _prune(self, name: str) -> None:
        """Deletes all but the ``keep`` newest files ``<name>-<12 hex>.safetensors``."""
        pattern = re.compile(rf"{re.escape(name)}-[0-9a-f]{{12}}\.safetensors")
        infos = [
            i for i in self.fs.ls(self.path, detail=True)
            if pattern.fullmatch(i["name"].rsplit("/", 1)[-1])
        ]  # fmt: skip
        infos.sort(key=lambda i: i.get("mtime") or i.get("LastModified") or 0, reverse=True)
        for old in infos[self.keep :]:
            self.fs.rm_file(old["name"])

    @staticmethod
    def load(ref: ArtifactRef) -> Artifact:
        """The artefact ``ref`` names, after checking its sha256."""
        fs, path = fsspec.core.url_to_fs(ref.uri)
        size = fs.size(path)
        if size is None or size > MAX_ARTIFACT_BYTES:
            raise ArtifactIntegrityError(f"{ref.uri}: {size} bytes, limit {MAX_ARTIFACT_BYTES}")
        data = fs.cat_file(path)
        digest = hashlib.sha256(data).hexdigest()
        if digest != ref.sha256:
            raise ArtifactIntegrityError(
                f"{ref.uri}: sha256 {digest[:12]}… is not the announced {ref.sha256[:12]}…"
            )
        try:
            manifest = json.loads(_metadata(data)["manifest"])
            tensors = load_safetensors(data)
        except Exception as exc:  # a well-hashed file that is not ours
            raise ArtifactIntegrityError(f"{ref.uri}: not an artefact ({exc})") from exc
        states: States = {name: {} for name in manifest["modules"]}
        for key, value in tensors.items():
            name, param = key.split(".", 1)
            states[name][param] = value
        return Artifact(ref.id, states, manifest)


def _metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file: 8-byte little-endian header size + JSON."""
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + size]).get("__metadata__") or {}
