"""Model bundles: a folder (or a zip of it) with ``model.json``, safetensors weights and a model card.

A bundle is what a user downloads, imports and runs, so everything the engine needs to rebuild
and trust the model is in ``model.json``, and every weights file carries a sha256 that is checked
on load: a tampered, truncated or half-copied bundle is refused instead of producing silently wrong
segmentations. Weights are safetensors only; nothing here ever unpickles (SPEC §5).

``model.json`` (format version 1)::

    format_version  int, 1
    id              slug: lower-case letters, digits, '-', '_', '.' (starts with a letter/digit)
    name            human-readable name
    version         semantic version "MAJOR.MINOR.PATCH[-pre][+build]"
    task            "esophagus" | "npc" | "gtv" | "pet"
    architecture    {"name": str, ...constructor kwargs}
    plan            dict, the planner's output (opaque here)
    labels          [{"name", "value" (int >= 0), "color" [r, g, b] 0-255,
                      "terminology" (optional): {"category": CODE, "type": CODE, ...}}]
                    where CODE = {"coding_scheme", "code", "meaning"}
    stages          ["T1", ...] or null
    modality        "CT" | "MR" | "PT"
    training        dict: data description, command, seed, hardware, date, epochs
    metrics         dict
    intended_use    str (demo bundles: "trained on synthetic phantoms, not for clinical use")
    weights         [{"file": "<name>.safetensors", "sha256": hex, "bytes": int}, ...] (one or more)
    created         ISO 8601 date or date-time
    engine_version  version of the engine that wrote the bundle
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import uuid
import zipfile
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

import engine
from engine.errors import BundleError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_NAME = "model.json"
MODEL_CARD_NAME = "MODEL_CARD.md"
WEIGHTS_SUFFIX = ".safetensors"
TASKS = ("esophagus", "npc", "gtv", "pet")
MODALITIES = ("CT", "MR", "PT")
#: ``weights_dtype`` of :func:`save_bundle` that halves the files: floating tensors are rounded to
#: float16 (relative error ≤ 2⁻¹¹) and widened back to float32 on loading.
HALF_PRECISION_STORAGE = "float16"

REQUIRED_KEYS = (
    "format_version", "id", "name", "version", "task", "architecture", "plan", "labels", "stages",
    "modality", "training", "metrics", "intended_use", "weights", "created", "engine_version",
)
DEMO_INTENDED_USE = "trained on synthetic phantoms, not for clinical use"

_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)
_CODE_KEYS = ("coding_scheme", "code", "meaning")
_HASH_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------- helpers

def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, streamed in 1 MiB chunks so multi-GB weights never sit in memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def semver_key(version: str) -> tuple:
    """Sort key with semantic-version precedence (0.10.0 > 0.9.0, 1.0.0-rc.1 < 1.0.0; build ignored)."""
    m = _SEMVER_RE.match(version.strip()) if isinstance(version, str) else None
    if m is None:
        raise BundleError(f"'{version}' is not a semantic version (MAJOR.MINOR.PATCH, e.g. 1.2.0).")
    major, minor, patch, pre, _build = m.groups()
    if pre is None:
        pre_key: tuple = (1,)
    else:
        ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
        pre_key = (0, ids)
    return (int(major), int(minor), int(patch), pre_key)


def weights_file_name(name: str) -> str:
    """``segmentation_lowres`` → ``segmentation_lowres.safetensors`` (a suffix already there is kept)."""
    file = name if name.endswith(WEIGHTS_SUFFIX) else name + WEIGHTS_SUFFIX
    if not _FILE_RE.match(file) or ".." in file:
        raise BundleError(f"Weights name '{name}' is not a plain file name; use letters, digits, '_', '-' "
                          "and '.' only, without folders.")
    return file


def _jsonable(value: Any, where: str) -> Any:
    """Plain JSON types only, so model.json is readable anywhere; NaN/inf become null (JSON has none)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            log.warning("%s is %s; stored as null because JSON has no NaN/inf.", where, value)
            return None
        return float(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if hasattr(value, "tolist"):  # NumPy scalars/arrays, 0-d tensors
        return _jsonable(value.tolist(), where)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value), where)
    raise BundleError(f"{where} holds a {type(value).__name__}, which cannot be written to model.json; "
                      "use numbers, strings, lists and dicts.")


# ------------------------------------------------------------------------------------------ dataclasses

@dataclass
class Label:
    """One segmentation label; colour and terminology let Slicer show it like a hand-made segment."""

    name: str
    value: int
    color: tuple[int, int, int]
    terminology: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "value": self.value, "color": list(self.color)}
        if self.terminology is not None:
            d["terminology"] = self.terminology
        return d


@dataclass
class WeightFile:
    """A weights file and the checksum that proves it is the one the bundle was made with."""

    file: str
    sha256: str
    bytes: int

    @property
    def name(self) -> str:
        return self.file[: -len(WEIGHTS_SUFFIX)] if self.file.endswith(WEIGHTS_SUFFIX) else self.file

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "bytes": self.bytes}


@dataclass
class ModelBundle:
    """A validated bundle on disk. Build it with :func:`load_bundle` or :func:`save_bundle`."""

    format_version: int
    id: str
    name: str
    version: str
    task: str
    architecture: dict[str, Any]
    plan: dict[str, Any]
    labels: list[Label]
    stages: list[str] | None
    modality: str
    training: dict[str, Any]
    metrics: dict[str, Any]
    intended_use: str
    weights: list[WeightFile]
    created: str
    engine_version: str
    path: Path
    #: Unknown top-level keys of model.json, kept so re-exporting a newer minor format loses nothing.
    extra: dict[str, Any] = field(default_factory=dict)
    #: Holds the temporary extraction folder of a bundle loaded straight from a zip alive.
    _tmpdir: Any = field(default=None, repr=False, compare=False)

    # -- identity
    @property
    def folder_name(self) -> str:
        """``<id>-<version>``: the folder name the registry installs the bundle under."""
        return f"{self.id}-{self.version}"

    @property
    def is_demo(self) -> bool:
        return "not for clinical use" in self.intended_use.lower()

    @property
    def weight_names(self) -> list[str]:
        return [w.name for w in self.weights]

    @property
    def label_names(self) -> dict[int, str]:
        return {lab.value: lab.name for lab in self.labels}

    @property
    def model_card_path(self) -> Path | None:
        p = self.path / MODEL_CARD_NAME
        return p if p.is_file() else None

    def read_model_card(self) -> str | None:
        p = self.model_card_path
        return p.read_text(encoding="utf-8") if p else None

    def to_manifest(self) -> dict[str, Any]:
        """The model.json content, in the documented key order."""
        d: dict[str, Any] = {
            "format_version": self.format_version, "id": self.id, "name": self.name,
            "version": self.version, "task": self.task, "architecture": self.architecture,
            "plan": self.plan, "labels": [lab.to_dict() for lab in self.labels], "stages": self.stages,
            "modality": self.modality, "training": self.training, "metrics": self.metrics,
            "intended_use": self.intended_use, "weights": [w.to_dict() for w in self.weights],
            "created": self.created, "engine_version": self.engine_version,
        }
        d.update(self.extra)
        return d

    # -- weights
    def weight_file(self, name: str) -> WeightFile:
        file = name if name.endswith(WEIGHTS_SUFFIX) else name + WEIGHTS_SUFFIX
        for w in self.weights:
            if w.file == file:
                return w
        raise BundleError(f"Model '{self.id}' {self.version} has no weights named '{name}'; "
                          f"it has: {', '.join(self.weight_names)}.")

    def weight_path(self, name: str) -> Path:
        return self.path / self.weight_file(name).file

    def verify(self) -> None:
        """Re-check presence, size and sha256 of every weights file (raises :class:`BundleError`)."""
        _check_weights(self.path, self.weights, self.id, hash_files=True)

    def load_state_dict(self, name: str, device: str | torch.device = "cpu",
                        verify: bool = False) -> dict[str, torch.Tensor]:
        """Tensors of one weights file via safetensors (no pickle). ``verify`` re-hashes it first.

        Dtypes come back as saved, except in a bundle saved with ``weights_dtype=``
        :data:`HALF_PRECISION_STORAGE`: its float16 tensors are widened to float32, the dtype they were
        trained in, so consumers do not see the storage format.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        w = self.weight_file(name)
        _check_weights(self.path, [w], self.id, hash_files=verify)
        try:
            state = load_file(self.path / w.file, device=str(device))
        except (SafetensorError, OSError, ValueError) as exc:
            raise BundleError(f"Weights file {self.path / w.file} of model '{self.id}' cannot be read "
                              f"({exc}); the bundle is corrupt: import it again.") from exc
        if self.extra.get("weights_dtype") != HALF_PRECISION_STORAGE:
            return state
        return {k: v.float() if v.dtype == torch.float16 else v for k, v in state.items()}


# ------------------------------------------------------------------------------------------- validation

def _err(where: Path | str, problem: str, fix: str) -> BundleError:
    return BundleError(f"Model bundle {where}: {problem} {fix}")


_REINSTALL = "Re-export or re-download the bundle and import it again."


def _check_code(code: Any, where: str, bpath: Path) -> None:
    if not isinstance(code, Mapping) or not all(isinstance(code.get(k), str) and code.get(k)
                                                for k in _CODE_KEYS):
        raise _err(bpath, f"{where} must be an object with non-empty strings "
                   f"{', '.join(_CODE_KEYS)}.", "Fix model.json.")


def _parse_labels(raw: Any, bpath: Path) -> list[Label]:
    if not isinstance(raw, list) or not raw:
        raise _err(bpath, "'labels' must be a non-empty list.", "Fix model.json.")
    labels: list[Label] = []
    for i, item in enumerate(raw):
        where = f"labels[{i}]"
        if not isinstance(item, Mapping):
            raise _err(bpath, f"{where} is not an object.", "Fix model.json.")
        missing = [k for k in ("name", "value", "color") if k not in item]
        if missing:
            raise _err(bpath, f"{where} lacks {', '.join(missing)}.", "Fix model.json.")
        name, value, color = item["name"], item["value"], item["color"]
        if not isinstance(name, str) or not name:
            raise _err(bpath, f"{where}.name must be a non-empty string.", "Fix model.json.")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _err(bpath, f"{where}.value must be an integer >= 0, not {value!r}.", "Fix model.json.")
        if (not isinstance(color, (list, tuple)) or len(color) != 3
                or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in color)):
            raise _err(bpath, f"{where}.color must be [r, g, b] integers 0-255, not {color!r}.",
                       "Fix model.json.")
        term = item.get("terminology")
        if term is not None:
            if not isinstance(term, Mapping):
                raise _err(bpath, f"{where}.terminology must be an object.", "Fix model.json.")
            for key in ("category", "type"):
                if key not in term:
                    raise _err(bpath, f"{where}.terminology lacks '{key}'.", "Fix model.json.")
            for key, code in term.items():
                _check_code(code, f"{where}.terminology.{key}", bpath)
            term = dict(term)
        labels.append(Label(name=name, value=value, color=(color[0], color[1], color[2]), terminology=term))
    for attr in ("name", "value"):
        seen = [getattr(lab, attr) for lab in labels]
        dups = sorted({str(v) for v in seen if seen.count(v) > 1})
        if dups:
            raise _err(bpath, f"label {attr}s must be unique; repeated: {', '.join(dups)}.",
                       "Fix model.json.")
    return labels


def _parse_weights(raw: Any, bpath: Path) -> list[WeightFile]:
    if not isinstance(raw, list) or not raw:
        raise _err(bpath, "'weights' must list at least one safetensors file.", _REINSTALL)
    out: list[WeightFile] = []
    for i, item in enumerate(raw):
        where = f"weights[{i}]"
        if not isinstance(item, Mapping) or not all(k in item for k in ("file", "sha256", "bytes")):
            raise _err(bpath, f"{where} must be an object with file, sha256 and bytes.", _REINSTALL)
        file, sha, size = item["file"], item["sha256"], item["bytes"]
        # A manifest naming '../x' or '/etc/x' must never make us read outside the bundle.
        if (not isinstance(file, str) or not _FILE_RE.match(file) or ".." in file
                or not file.endswith(WEIGHTS_SUFFIX)):
            raise _err(bpath, f"{where}.file {file!r} must be a plain '*.safetensors' file name inside "
                       "the bundle folder (only safetensors weights are accepted).", _REINSTALL)
        if not isinstance(sha, str) or not _SHA_RE.match(sha.lower()):
            raise _err(bpath, f"{where}.sha256 is not a 64-digit hex sha256.", _REINSTALL)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise _err(bpath, f"{where}.bytes must be a non-negative integer.", _REINSTALL)
        out.append(WeightFile(file=file, sha256=sha.lower(), bytes=size))
    files = [w.file for w in out]
    if len(set(files)) != len(files):
        raise _err(bpath, "'weights' lists the same file twice.", _REINSTALL)
    return out


def _check_weights(folder: Path, weights: Sequence[WeightFile], model_id: str, hash_files: bool) -> None:
    """Presence and size always (cheap); sha256 when ``hash_files`` (proves nothing was altered)."""
    for w in weights:
        p = folder / w.file
        if not p.is_file() or p.is_symlink():
            raise BundleError(
                f"Model bundle {folder} ('{model_id}') is incomplete: weights file '{w.file}' is missing. "
                f"{_REINSTALL}")
        size = p.stat().st_size
        if size != w.bytes:
            raise BundleError(
                f"Model bundle {folder} ('{model_id}'): weights file '{w.file}' has {size} bytes but "
                f"model.json records {w.bytes}; it is truncated or was tampered with (sha256 not checked "
                f"further). {_REINSTALL}")
        if hash_files:
            digest = sha256_file(p)
            if digest != w.sha256:
                raise BundleError(
                    f"Model bundle {folder} ('{model_id}'): sha256 of weights file '{w.file}' is {digest} "
                    f"but model.json records {w.sha256}; the file was tampered with or corrupted, so the "
                    f"model is refused. {_REINSTALL}")


def read_manifest(folder: Path) -> dict[str, Any]:
    """The raw model.json of a bundle folder, or a :class:`BundleError` saying why it is unusable."""
    mpath = folder / MANIFEST_NAME
    if not mpath.is_file():
        raise _err(folder, f"no {MANIFEST_NAME} found, so this is not a model bundle (or it is incomplete).",
                   "Point to the folder or .zip that holds model.json.")
    try:
        raw = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _err(folder, f"{MANIFEST_NAME} is not valid JSON ({exc}); it is truncated or corrupt.",
                   _REINSTALL) from exc
    if not isinstance(raw, dict):
        raise _err(folder, f"{MANIFEST_NAME} must hold a JSON object.", _REINSTALL)
    return raw


def manifest_to_bundle(raw: Mapping[str, Any], folder: Path,
                       expected_task: str | None = None) -> ModelBundle:
    """Validate a parsed model.json (types, ids, task, labels, weights list) into a :class:`ModelBundle`."""
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise _err(folder, f"model.json is incomplete: missing required key(s) {', '.join(missing)}.",
                   _REINSTALL)
    fv = raw["format_version"]
    if isinstance(fv, bool) or not isinstance(fv, int) or fv < 1:
        raise _err(folder, f"format_version must be a positive integer, not {fv!r}.", _REINSTALL)
    if fv > FORMAT_VERSION:
        raise _err(folder, f"format_version {fv} is newer than this engine reads ({FORMAT_VERSION}).",
                   f"Update OncoStaging (engine {engine.__version__}) to use this model.")
    mid = raw["id"]
    if not isinstance(mid, str) or not _ID_RE.match(mid):
        raise _err(folder, f"id {mid!r} is not a slug (lower-case letters, digits, '-', '_', '.').",
                   "Fix model.json.")
    version = raw["version"]
    if not isinstance(version, str) or not _SEMVER_RE.match(version):
        raise _err(folder, f"version {version!r} is not a semantic version such as 1.0.0.", "Fix model.json.")
    task = raw["task"]
    if task not in TASKS:
        raise _err(folder, f"unknown task {task!r}; known tasks are {', '.join(TASKS)}.",
                   "This bundle is not an OncoStaging model, or needs a newer engine.")
    if expected_task is not None and task != expected_task:
        raise _err(folder, f"model '{mid}' {version} is for task '{task}', not '{expected_task}'.",
                   f"Pick or import a model trained for '{expected_task}'.")
    modality = raw["modality"]
    if modality not in MODALITIES:
        raise _err(folder, f"modality {modality!r} is not one of {', '.join(MODALITIES)}.", "Fix model.json.")
    arch = raw["architecture"]
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str) or not arch["name"]:
        raise _err(folder, "'architecture' must be an object with a 'name'.", "Fix model.json.")
    for key in ("plan", "training", "metrics"):
        if not isinstance(raw[key], dict):
            raise _err(folder, f"'{key}' must be a JSON object.", "Fix model.json.")
    for key in ("name", "intended_use", "created", "engine_version"):
        if not isinstance(raw[key], str) or not raw[key].strip():
            raise _err(folder, f"'{key}' must be a non-empty string.", "Fix model.json.")
    try:
        datetime.fromisoformat(raw["created"].replace("Z", "+00:00"))
    except ValueError as exc:
        raise _err(folder, f"created {raw['created']!r} is not an ISO 8601 date.", "Fix model.json.") from exc
    stages = raw["stages"]
    if stages is not None and (not isinstance(stages, list) or not stages
                               or not all(isinstance(s, str) and s for s in stages)
                               or len(set(stages)) != len(stages)):
        raise _err(folder, "'stages' must be null or a list of distinct stage names.", "Fix model.json.")
    labels = _parse_labels(raw["labels"], folder)
    weights = _parse_weights(raw["weights"], folder)
    extra = {k: v for k, v in raw.items() if k not in REQUIRED_KEYS}
    return ModelBundle(
        format_version=fv, id=mid, name=raw["name"], version=version, task=task,
        architecture=dict(arch), plan=dict(raw["plan"]), labels=labels,
        stages=list(stages) if stages is not None else None, modality=modality,
        training=dict(raw["training"]), metrics=dict(raw["metrics"]), intended_use=raw["intended_use"],
        weights=weights, created=raw["created"], engine_version=raw["engine_version"],
        path=folder, extra=extra,
    )


# ------------------------------------------------------------------------------------------------- load

def load_bundle(path: str | os.PathLike, expected_task: str | None = None,
                verify: bool = True) -> ModelBundle:
    """Open and validate a bundle folder, its model.json, or a ``.zip``; refuse anything untrustworthy.

    ``verify=False`` skips only the sha256 (files must still exist with the recorded size): listing
    many large models in a GUI should not re-hash gigabytes each time.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise BundleError(f"Model bundle {p} does not exist; check the path, or list installed models.")
    if p.is_file() and p.name == MANIFEST_NAME:
        p = p.parent
    if p.is_file():
        if not zipfile.is_zipfile(p):
            raise _err(p, "is neither a bundle folder nor a zip archive.",
                       "Point to the folder that holds model.json, or to the exported .zip.")
        from engine.registry.archive import extract_bundle_zip

        tmp = tempfile.TemporaryDirectory(prefix="oncostaging-bundle-")
        try:
            root = extract_bundle_zip(p, Path(tmp.name))
            bundle = load_bundle(root, expected_task=expected_task, verify=verify)
        except BaseException:
            tmp.cleanup()
            raise
        bundle._tmpdir = tmp
        return bundle
    if expected_task is not None and expected_task not in TASKS:
        raise BundleError(f"Unknown task '{expected_task}'; known tasks are {', '.join(TASKS)}.")
    raw = read_manifest(p)
    bundle = manifest_to_bundle(raw, p, expected_task=expected_task)
    _check_weights(p, bundle.weights, bundle.id, hash_files=verify)
    if verify:
        log.debug("Verified sha256 of %d weights file(s) of %s %s", len(bundle.weights), bundle.id,
                  bundle.version)
    return bundle


# ------------------------------------------------------------------------------------------------- save

def half_precision(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """float32/float64 tensors rounded to float16; integer buffers (e.g. batch counts) unchanged."""
    return {k: v.half() if v.dtype in (torch.float32, torch.float64) else v for k, v in state.items()}


def _prepare_state_dict(state: Mapping[str, Any], name: str) -> dict[str, torch.Tensor]:
    """CPU, dense, contiguous, unshared copies: safetensors refuses views and tensors sharing storage."""
    if not isinstance(state, Mapping) or not state:
        raise BundleError(f"Weights '{name}' must be a non-empty dict of tensors.")
    out: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        if not isinstance(key, str):
            raise BundleError(f"Weights '{name}': tensor names must be strings, not {key!r}.")
        if not isinstance(t, torch.Tensor):
            raise BundleError(f"Weights '{name}': '{key}' is a {type(t).__name__}, not a tensor.")
        t = t.detach()
        if t.layout != torch.strided:
            t = t.to_dense()
        out[key] = t.to("cpu").contiguous().clone()
    return out


def _replace_dir(tmp: Path, target: Path) -> None:
    """Move a finished folder into place; an existing target is swapped out and only then removed."""
    backup: Path | None = None
    if target.exists() or target.is_symlink():
        if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
            target.rmdir()
        else:
            backup = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(target, backup)
    try:
        os.replace(tmp, target)
    except BaseException:
        if backup is not None:
            os.replace(backup, target)
        raise
    if backup is not None:
        if backup.is_dir() and not backup.is_symlink():
            shutil.rmtree(backup, ignore_errors=True)
        else:
            backup.unlink(missing_ok=True)


def _check_target(out_dir: Path, overwrite: bool, what: str) -> None:
    if out_dir.exists() and not overwrite:
        if not out_dir.is_dir() or any(out_dir.iterdir()):
            raise BundleError(f"{out_dir} already exists and is not empty; {what} would replace it. "
                              "Choose another folder, remove it, or pass overwrite=True.")


def save_bundle(
    out_dir: str | os.PathLike,
    *,
    id: str,
    name: str,
    version: str,
    task: str,
    architecture: Mapping[str, Any],
    plan: Mapping[str, Any],
    labels: Sequence[Label | Mapping[str, Any]],
    stages: Sequence[str] | None,
    modality: str,
    training: Mapping[str, Any],
    metrics: Mapping[str, Any],
    intended_use: str,
    weights: Mapping[str, Mapping[str, torch.Tensor]],
    model_card: str | None = None,
    created: str | None = None,
    engine_version: str | None = None,
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    weights_dtype: str | None = None,
) -> ModelBundle:
    """Write a bundle atomically: everything goes to a hidden sibling folder that is renamed at the end.

    ``weights`` maps a name (``"segmentation_lowres"``) to a state dict; each becomes
    ``<name>.safetensors`` with its sha256 and size in model.json, which is written last. An existing
    non-empty ``out_dir`` is refused unless ``overwrite``. The result is validated exactly as
    :func:`load_bundle` would, so a bundle that saves is a bundle that loads. ``weights_dtype``
    :data:`HALF_PRECISION_STORAGE` stores floating weights in float16 (half the size; recorded in
    model.json as ``weights_dtype``).
    """
    from safetensors.torch import save_file

    if weights_dtype not in (None, "float32", HALF_PRECISION_STORAGE):
        raise BundleError(f"weights_dtype must be float32 or {HALF_PRECISION_STORAGE}, "
                          f"not {weights_dtype!r}.")

    out = Path(out_dir).expanduser().absolute()
    _check_target(out, overwrite, "saving the model")
    if not weights:
        raise BundleError("A bundle needs at least one weights file; pass weights={'name': state_dict}.")
    files = {weights_file_name(n): n for n in weights}
    if len(files) != len(weights):
        raise BundleError("Two weights names map to the same file; give them distinct names.")
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION, "id": id, "name": name, "version": version, "task": task,
        "architecture": _jsonable(dict(architecture), "architecture"), "plan": _jsonable(dict(plan), "plan"),
        "labels": [lab.to_dict() if isinstance(lab, Label) else _jsonable(dict(lab), "labels")
                   for lab in labels],
        "stages": list(stages) if stages is not None else None, "modality": modality,
        "training": _jsonable(dict(training), "training"), "metrics": _jsonable(dict(metrics), "metrics"),
        "intended_use": intended_use, "weights": [],
        "created": created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "engine_version": engine_version or engine.__version__,
    }
    if weights_dtype == HALF_PRECISION_STORAGE:
        extra = {**(extra or {}), "weights_dtype": HALF_PRECISION_STORAGE}
    for k, v in (extra or {}).items():
        if k in REQUIRED_KEYS:
            raise BundleError(f"extra key '{k}' clashes with a model.json field; pass it as an argument.")
        manifest[k] = _jsonable(v, k)
    # Validate the metadata before writing gigabytes (weights list checked with a placeholder).
    placeholder = [{"file": f, "sha256": "0" * 64, "bytes": 0} for f in files]
    manifest_to_bundle({**manifest, "weights": placeholder}, out)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        records = []
        for file, wname in files.items():
            fpath = tmp / file
            state = _prepare_state_dict(weights[wname], wname)
            if weights_dtype == HALF_PRECISION_STORAGE:
                state = half_precision(state)
            save_file(state, fpath, metadata={"format": "pt"})
            records.append({"file": file, "sha256": sha256_file(fpath), "bytes": fpath.stat().st_size})
        manifest["weights"] = records
        if model_card is not None:
            (tmp / MODEL_CARD_NAME).write_text(model_card, encoding="utf-8")
        text = json.dumps(manifest, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
        mtmp = tmp / (MANIFEST_NAME + ".part")
        mtmp.write_text(text, encoding="utf-8")
        os.replace(mtmp, tmp / MANIFEST_NAME)
        os.chmod(tmp, 0o755)  # mkdtemp makes 0o700; a shipped/shared model folder should be readable
        _check_target(out, overwrite, "saving the model")  # re-check: someone may have written meanwhile
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("Saved model bundle %s %s (%s) to %s", id, version, task, out)
    return load_bundle(out, verify=False)
