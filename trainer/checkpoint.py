"""Versioned, atomic trainer checkpoints: safetensors + JSON manifest + predictions. No pickle.

Layout under ``<state_dir>/checkpoints``::

    <version>/weights.safetensors   model.<param|buffer> and opt.<param index>.<state key>
    <version>/manifest.json         offsets per partition, samples, id -> row lists,
                                    optimiser param groups, shape, recent sample ids, ...
    <version>/predictions.npz       the prequential stream so far (see ``Predictions``)
    LATEST                          the newest complete version (written last)

A checkpoint is written into ``.tmp-<version>``, fsynced, renamed, and only then does
``LATEST`` move (tmp file + ``os.replace``), so a SIGKILL at any point leaves the previous
checkpoint whole. The optimiser (Adam) state is saved as tensors — exp_avg, exp_avg_sq and
step per parameter — and its param groups as JSON, so ``torch.load`` is never needed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn


class Predictions:
    """The prequential stream: score (probability), label, is_new, ts (sample time, s).

    Kept as per-batch numpy chunks (no per-sample Python objects); ``arrays()`` joins them.

    >>> p = Predictions([0.5], [1], [True], [1.0])
    >>> p.extend(np.array([0.25]), np.array([0.0]), np.array([False]), np.array([2.0]))
    >>> p.arrays()["label"].tolist()
    [1, 0]
    """

    DTYPES = {"score": np.float32, "label": np.int8, "is_new": np.bool_, "ts": np.float64}

    def __init__(self, score=(), label=(), is_new=(), ts=()) -> None:
        self._chunks: dict[str, list[np.ndarray]] = {name: [] for name in self.DTYPES}
        self.extend(score, label, is_new, ts)

    def extend(self, score, label, is_new, ts) -> None:
        """Appends one batch: four array-likes of the same length n."""
        columns = dict(zip(self.DTYPES, (score, label, is_new, ts), strict=True))
        arrays = {k: np.array(v, self.DTYPES[k]).ravel() for k, v in columns.items()}
        lengths = {name: len(a) for name, a in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"prediction columns of different lengths: {lengths}")
        for name, a in arrays.items():
            self._chunks[name].append(a)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for name, chunks in self._chunks.items():
            if len(chunks) != 1:  # join once; later calls reuse the joined array
                chunks[:] = [np.concatenate(chunks) if chunks else np.zeros(0, self.DTYPES[name])]
            out[name] = chunks[0]
        return out

    def save(self, path: Path) -> None:
        """np.savez (plain numeric arrays, no object arrays), written atomically."""
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, **self.arrays())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Predictions:
        with np.load(path, allow_pickle=False) as data:
            return cls(*(data[name] for name in cls.DTYPES))


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    """Adam state -> ({"opt.<i>.<key>": tensor}, JSON-able param groups)."""
    state = optimizer.state_dict()
    tensors = {
        f"opt.{index}.{key}": torch.as_tensor(value).detach().cpu().contiguous()
        for index, entry in state["state"].items()
        for key, value in entry.items()
    }
    return tensors, state["param_groups"]


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, groups: list) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointDir:
    """Writes, lists and loads the checkpoints under ``<state_dir>/checkpoints``."""

    def __init__(self, state_dir: Path, keep: int = 3) -> None:
        self.root = Path(state_dir) / "checkpoints"
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = keep

    def latest(self) -> str | None:
        pointer = self.root / "LATEST"
        return pointer.read_text().strip() if pointer.is_file() else None

    def save(
        self,
        version: str,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        manifest: dict,
        predictions: Predictions,
    ) -> Path:
        """Writes one checkpoint atomically and moves LATEST to it; returns its folder."""
        tmp = self.root / f".tmp-{version}"
        final = self.root / version
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        tensors = {
            f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()
        }
        opt_tensors, groups = optimizer_tensors(optimizer)
        save_file({**tensors, **opt_tensors}, str(tmp / "weights.safetensors"))
        full = {**manifest, "version": version, "created_at": time.time(), "opt_groups": groups}
        (tmp / "manifest.json").write_text(json.dumps(full))
        predictions.save(tmp / "predictions.npz")
        for name in ("weights.safetensors", "manifest.json"):
            with open(tmp / name, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if final.exists():  # a complete but never-pointed-to folder from a killed run
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(self.root)
        pointer = self.root / "LATEST.tmp"
        pointer.write_text(version)
        os.replace(pointer, self.root / "LATEST")
        _fsync_dir(self.root)
        self._prune(version)
        return final

    def _prune(self, current: str) -> None:
        folders = sorted(
            (p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")),
            key=lambda p: p.stat().st_mtime,
        )
        for old in folders[: max(0, len(folders) - self.keep)]:
            if old.name != current:
                shutil.rmtree(old, ignore_errors=True)

    def load(self, version: str | None = None) -> tuple[dict[str, torch.Tensor], dict, Path]:
        """(tensors, manifest, folder) of ``version`` (default LATEST)."""
        version = version or self.latest()
        if version is None:
            raise FileNotFoundError(f"no checkpoint under {self.root}")
        folder = self.root / version
        manifest = json.loads((folder / "manifest.json").read_text())
        return load_file(str(folder / "weights.safetensors")), manifest, folder


def model_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``model.`` entries of a checkpoint, without the prefix."""
    return {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
