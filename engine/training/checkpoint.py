"""Atomic, pickle-free training checkpoints.

A checkpoint is a folder holding

* ``model-<tag>.safetensors`` – the model weights;
* ``state-<tag>.safetensors`` – every other tensor (optimizer moments, RNG states, …);
* ``state-<tag>.json`` – the structure around those tensors plus scalars (epoch, counters,
  scheduler, config), with tensors replaced by references into the state file;
* ``checkpoint.json`` – the manifest, naming the three files with their sha256.

Each file is written to a temporary name, fsynced and renamed; the manifest is renamed last.
Data files carry a fresh tag, so a crash at any moment leaves either the previous manifest with
its (untouched) files, or the new one: never a half checkpoint that looks valid. No pickle and no
``torch.save`` is involved, so loading a checkpoint cannot execute code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save_file as st_save_file

from engine.errors import TrainingError
from engine.utils.atomic import atomic_write_text, fsync_file, temporary_path
from engine.utils.hashing import sha256_file

log = logging.getLogger(__name__)

MANIFEST = "checkpoint.json"
FORMAT = "oncostaging-training-checkpoint"
FORMAT_VERSION = 1
_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"


# --------------------------------------------------------------------------- tensor/structure split

def _tensor_copy(t: torch.Tensor) -> torch.Tensor:
    """A detached, contiguous CPU tensor with its own storage (safetensors refuses shared/strided ones)."""
    t = t.detach()
    t = t.to("cpu", copy=True) if t.device.type != "cpu" else t.clone()
    return t.contiguous()


def flatten_state(obj: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    """Replace every tensor in a nested structure by a reference, collecting tensors in ``tensors``.

    Tuples and dicts with non-string keys (optimizer states are keyed by int) are encoded
    explicitly so :func:`unflatten_state` gives back exactly the original structure.
    """
    if isinstance(obj, torch.Tensor):
        key = prefix or "tensor"
        if key in tensors:
            key = f"{key}#{len(tensors)}"
        tensors[key] = _tensor_copy(obj)
        return {_TENSOR: key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not ({_TENSOR, _TUPLE, _ITEMS, "__ndarray__"} & set(obj)):
            return {k: flatten_state(v, tensors, f"{prefix}.{k}" if prefix else k) for k, v in obj.items()}
        return {_ITEMS: [[flatten_state(k, tensors, f"{prefix}.key"),
                          flatten_state(v, tensors, f"{prefix}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {_TUPLE: [flatten_state(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [flatten_state(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TrainingError(f"Cannot store a value of type {type(obj).__name__} at '{prefix}' in a checkpoint "
                        "(only tensors, numbers, strings, lists, tuples and dicts are supported).")


def unflatten_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(obj, dict):
        if _TENSOR in obj:
            try:
                return tensors[obj[_TENSOR]]
            except KeyError as exc:
                raise TrainingError(f"Checkpoint state refers to a missing tensor '{obj[_TENSOR]}'.") from exc
        if _TUPLE in obj:
            return tuple(unflatten_state(v, tensors) for v in obj[_TUPLE])
        if _ITEMS in obj:
            return {unflatten_state(k, tensors): unflatten_state(v, tensors) for k, v in obj[_ITEMS]}
        if "__ndarray__" in obj:
            return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
        return {k: unflatten_state(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unflatten_state(v, tensors) for v in obj]
    return obj


# --------------------------------------------------------------------------- RNG states

def capture_rng_state() -> dict[str, Any]:
    """Every generator a training step may draw from (dropout, augmentation, sampling)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), *np_state[2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = list(state["cuda"])
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            log.warning("Checkpoint has CUDA RNG states for %d device(s) but %d are visible; "
                        "CUDA RNG not restored.", len(cuda_states), torch.cuda.device_count())


# --------------------------------------------------------------------------- save / load

def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module inside DDP/DataParallel/``torch.compile`` wrappers, so checkpoint keys never change."""
    while True:
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Own-storage CPU copies of the state dict; tied weights are stored once per name (duplicated)."""
    out: dict[str, torch.Tensor] = {}
    for name, value in unwrap_model(model).state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise TrainingError(f"Model state entry '{name}' is a {type(value).__name__}, not a tensor; "
                                "only tensor state can be checkpointed.")
        out[name] = _tensor_copy(value)
    return out


@dataclass
class Checkpoint:
    """A loaded checkpoint: tensors on CPU, ready for ``load_state_dict``."""

    path: Path
    model_state: dict[str, torch.Tensor]
    state: dict[str, Any]
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def epoch(self) -> int:
        return int(self.state.get("epoch", 0))

    @property
    def global_step(self) -> int:
        return int(self.state.get("global_step", 0))


def _save_tensors(tensors: dict[str, torch.Tensor], final: Path) -> None:
    tmp = temporary_path(final)
    try:
        st_save_file(tensors, str(tmp), metadata={"format": "pt"})
        fsync_file(tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(directory: str | Path, model: torch.nn.Module | dict[str, torch.Tensor],
                    state: dict[str, Any]) -> Path:
    """Write a complete checkpoint atomically into ``directory``; returns the manifest path.

    ``state`` is any nested structure of tensors/numbers/strings (optimizer and scheduler state
    dicts, RNG states, counters, config). Files of the previous checkpoint in the folder are
    removed only after the new manifest is in place.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tag = f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    if isinstance(model, dict):
        weights = {k: _tensor_copy(v) for k, v in model.items()}
    else:
        weights = model_tensors(model)
    extra_tensors: dict[str, torch.Tensor] = {}
    structure = flatten_state(state, extra_tensors, "")
    files = {"model": directory / f"model-{tag}.safetensors",
             "state_tensors": directory / f"state-{tag}.safetensors",
             "state": directory / f"state-{tag}.json"}
    try:
        _save_tensors(weights, files["model"])
        _save_tensors(extra_tensors, files["state_tensors"])
        atomic_write_text(files["state"], json.dumps(structure))
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "epoch": state.get("epoch"),
            "global_step": state.get("global_step"),
            "files": {role: {"name": p.name, "sha256": sha256_file(p), "bytes": p.stat().st_size}
                      for role, p in files.items()},
        }
        atomic_write_text(directory / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    except BaseException:
        for p in files.values():
            p.unlink(missing_ok=True)
        raise
    _remove_stale(directory, keep={p.name for p in files.values()})
    log.debug("Checkpoint written to %s (epoch %s)", directory, state.get("epoch"))
    return directory / MANIFEST


def _remove_stale(directory: Path, keep: set[str]) -> None:
    for p in directory.iterdir():
        stale_data = p.name.startswith(("model-", "state-")) and p.suffix in (".safetensors", ".json")
        stale_tmp = p.name.startswith(".") and p.name.endswith(".tmp")
        if (stale_data or stale_tmp) and p.name not in keep and p.is_file():
            try:
                p.unlink()
            except OSError as exc:  # pragma: no cover - e.g. Windows file lock
                log.warning("Could not remove stale checkpoint file %s: %s", p, exc)


def _read_verified(directory: Path, entry: dict[str, Any], role: str) -> bytes:
    try:
        name = entry["name"]
        expected = entry["sha256"]
    except (KeyError, TypeError) as exc:
        raise TrainingError(f"Checkpoint manifest in {directory} has no valid '{role}' entry.") from exc
    path = directory / name
    if Path(name).name != name or not path.is_file():
        raise TrainingError(f"Checkpoint in {directory} is incomplete: '{name}' is missing. "
                            "Delete the folder or resume from another checkpoint.")
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise TrainingError(f"Checkpoint file {path} is corrupt or was modified (sha256 {actual[:12]}… "
                            f"≠ manifest {str(expected)[:12]}…); it cannot be used.")
    return data


def load_checkpoint(directory: str | Path) -> Checkpoint:
    """Load and verify a checkpoint folder; any missing/altered file raises :class:`TrainingError`."""
    directory = Path(directory)
    if directory.name == MANIFEST:
        directory = directory.parent
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise TrainingError(f"No complete checkpoint in {directory}: '{MANIFEST}' is missing "
                            "(the run may have stopped while the first checkpoint was being written).")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TrainingError(f"Checkpoint manifest {manifest_path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise TrainingError(f"{manifest_path} is not an OncoStaging training checkpoint manifest.")
    if manifest.get("version") != FORMAT_VERSION:
        raise TrainingError(f"Checkpoint format version {manifest.get('version')} is not supported "
                            f"(this engine reads version {FORMAT_VERSION}).")
    files = manifest.get("files") or {}
    try:
        weights = st_load(_read_verified(directory, files.get("model"), "model"))
        tensors = st_load(_read_verified(directory, files.get("state_tensors"), "state_tensors"))
        structure = json.loads(_read_verified(directory, files.get("state"), "state").decode("utf-8"))
    except TrainingError:
        raise
    except Exception as exc:  # safetensors/json parse errors despite a matching hash: still unusable
        raise TrainingError(f"Checkpoint in {directory} cannot be read: {exc}") from exc
    return Checkpoint(path=directory, model_state=weights, state=unflatten_state(structure, tensors),
                      manifest=manifest)


def has_checkpoint(directory: str | Path) -> bool:
    return (Path(directory) / MANIFEST).is_file()


def load_model_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """Only the verified model weights, e.g. for export of the best checkpoint to a bundle."""
    return load_checkpoint(directory).model_state


__all__ = [
    "Checkpoint", "MANIFEST", "capture_rng_state",
    "flatten_state", "has_checkpoint", "load_checkpoint", "load_model_weights", "model_tensors",
    "restore_rng_state", "save_checkpoint", "sha256_file", "unflatten_state", "unwrap_model",
]
