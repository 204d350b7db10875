"""The model bundle format: ``model.json``, the :class:`ModelBundle` it describes, and its validation.

A bundle is what a user downloads, imports and runs, so everything the engine needs to rebuild
and trust the model is in ``model.json``, and every weights file carries a sha256 that is checked
on load: a tampered, truncated or half-copied bundle is refused instead of producing silently wrong
segmentations. Weights are safetensors only; nothing here ever unpickles.

``model.json`` (format version 1)::

    format_version  int, 1
    id              slug: lower-case letters, digits, '-', '_', '.' (starts with a letter/digit)
    name            human-readable name
    version         semantic version "MAJOR.MINOR.PATCH[-pre][+build]"
    task            a name of :func:`engine.tasks.task_names` ("esophagus", "npc", "gtv", "pet", plug-ins)
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
    model_card      {"file": "MODEL_CARD.md", "sha256": hex, "bytes": int}, or null for a bundle without one
    manifest_sha256 sha256 of model.json itself: of the UTF-8 canonical JSON (keys sorted, no spaces,
                    ``json.dumps(..., sort_keys=True, separators=(",", ":"), ensure_ascii=False)``) of
                    every key except ``manifest_sha256``

Integrity: every file of a bundle is covered by a checksum. The weights and the model card have their
sha256 in model.json, and ``manifest_sha256`` covers model.json (and so those checksums too), so an
edited intensity normalisation, label, model card or weights file is refused, naming the file, on
every load (the manifest and card on every load, the weights' sha256 unless a fast listing asks not
to) and by ``engine models verify``. Formatting model.json differently (indentation, key order)
changes nothing. This detects accidents and edits, not a forger who recomputes the checksums: only
use bundles from sources you trust. Bundles saved before ``manifest_sha256`` existed are refused
with advice: ``python -m engine models seal FOLDER`` checks their weights against model.json and
then records the checksums (:func:`engine.registry.bundle.seal_bundle`). Files a bundle folder holds
beyond these (say, a ``.DS_Store``) are never read, so they are ignored.

This module imports neither torch nor MONAI (the Slicer module lists models and reads model cards
with it); reading weights imports torch inside :meth:`ModelBundle.load_state_dict`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import engine
from engine.errors import BundleError
from engine.tasks import UnknownTaskError, get_task, task_names
from engine.tasks.base import Label
from engine.utils.hashing import sha256_file

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

FORMAT_VERSION = 1
MANIFEST_NAME = "model.json"
MODEL_CARD_NAME = "MODEL_CARD.md"
WEIGHTS_SUFFIX = ".safetensors"
MODALITIES = ("CT", "MR", "PT")
#: ``weights_dtype`` of :func:`~engine.registry.bundle.save_bundle` that halves the files: floating
#: tensors are rounded to float16 (relative error ≤ 2⁻¹¹) and widened back to float32 on loading.
HALF_PRECISION_STORAGE = "float16"

#: model.json keys of the integrity checksums (see the module docstring); written by save_bundle.
CARD_KEY = "model_card"
CHECKSUM_KEY = "manifest_sha256"
SEAL_HINT = "python -m engine models seal"

REQUIRED_KEYS = (
    "format_version", "id", "name", "version", "task", "architecture", "plan", "labels", "stages",
    "modality", "training", "metrics", "intended_use", "weights", "created", "engine_version",
)
DEMO_INTENDED_USE = "trained on synthetic phantoms, not for clinical use"
#: The advice of most validation errors: the bundle itself is broken, so get a good copy.
REINSTALL_HINT = "Re-export or re-download the bundle and import it again."

_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)
_CODE_KEYS = ("coding_scheme", "code", "meaning")


# --------------------------------------------------------------------------------------------- helpers

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



# ------------------------------------------------------------------------------------------ dataclasses

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
    #: The model card's checksum record (None: the bundle has no model card).
    model_card_file: WeightFile | None = None
    #: sha256 of model.json's canonical JSON (see the module docstring).
    manifest_sha256: str | None = None
    #: Unknown top-level keys of model.json, kept so re-exporting a newer minor format loses nothing.
    extra: dict[str, Any] = field(default_factory=dict)
    #: The temporary extraction folder of a bundle loaded straight from a zip, kept alive with it.
    extraction_dir: Any = field(default=None, repr=False, compare=False)

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
        d[CARD_KEY] = self.model_card_file.to_dict() if self.model_card_file else None
        if self.manifest_sha256 is not None:
            d[CHECKSUM_KEY] = self.manifest_sha256
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
        """Re-check model.json, the model card and every weights file (raises :class:`BundleError`)."""
        raw = read_manifest(self.path)
        check_integrity(self.path, raw, self.id)
        if raw.get(CHECKSUM_KEY) != self.manifest_sha256:
            raise _err(self.path, f"{MANIFEST_NAME} was replaced after the model was loaded.", REINSTALL_HINT)
        check_weights(self.path, self.weights, self.id, hash_files=True)

    def load_state_dict(self, name: str, device: str | torch.device = "cpu",
                        verify: bool = False) -> dict[str, torch.Tensor]:
        """Tensors of one weights file via safetensors (no pickle). ``verify`` re-hashes it first.

        Dtypes come back as saved, except in a bundle saved with ``weights_dtype=``
        :data:`HALF_PRECISION_STORAGE`: its float16 tensors are widened to float32, the dtype they were
        trained in, so consumers do not see the storage format.
        """
        import torch
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        w = self.weight_file(name)
        check_weights(self.path, [w], self.id, hash_files=verify)
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
        raise _err(bpath, "'weights' must list at least one safetensors file.", REINSTALL_HINT)
    out: list[WeightFile] = []
    for i, item in enumerate(raw):
        where = f"weights[{i}]"
        if not isinstance(item, Mapping) or not all(k in item for k in ("file", "sha256", "bytes")):
            raise _err(bpath, f"{where} must be an object with file, sha256 and bytes.", REINSTALL_HINT)
        file, sha, size = item["file"], item["sha256"], item["bytes"]
        # A manifest naming '../x' or '/etc/x' must never make us read outside the bundle.
        if (not isinstance(file, str) or not _FILE_RE.match(file) or ".." in file
                or not file.endswith(WEIGHTS_SUFFIX)):
            raise _err(bpath, f"{where}.file {file!r} must be a plain '*.safetensors' file name inside "
                       "the bundle folder (only safetensors weights are accepted).", REINSTALL_HINT)
        if not isinstance(sha, str) or not _SHA_RE.match(sha.lower()):
            raise _err(bpath, f"{where}.sha256 is not a 64-digit hex sha256.", REINSTALL_HINT)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise _err(bpath, f"{where}.bytes must be a non-negative integer.", REINSTALL_HINT)
        out.append(WeightFile(file=file, sha256=sha.lower(), bytes=size))
    files = [w.file for w in out]
    if len(set(files)) != len(files):
        raise _err(bpath, "'weights' lists the same file twice.", REINSTALL_HINT)
    return out


def check_weights(folder: Path, weights: Sequence[WeightFile], model_id: str, hash_files: bool) -> None:
    """Presence and size always (cheap); sha256 when ``hash_files`` (proves nothing was altered)."""
    for w in weights:
        p = folder / w.file
        if not p.is_file() or p.is_symlink():
            raise BundleError(
                f"Model bundle {folder} ('{model_id}') is incomplete: weights file '{w.file}' is missing. "
                f"{REINSTALL_HINT}")
        size = p.stat().st_size
        if size != w.bytes:
            raise BundleError(
                f"Model bundle {folder} ('{model_id}'): weights file '{w.file}' has {size} bytes but "
                f"model.json records {w.bytes}; it is truncated or was tampered with (sha256 not checked "
                f"further). {REINSTALL_HINT}")
        if hash_files:
            digest = sha256_file(p)
            if digest != w.sha256:
                raise BundleError(
                    f"Model bundle {folder} ('{model_id}'): sha256 of weights file '{w.file}' is {digest} "
                    f"but model.json records {w.sha256}; the file was tampered with or corrupted, so the "
                    f"model is refused. {REINSTALL_HINT}")


def manifest_checksum(raw: Mapping[str, Any]) -> str:
    """sha256 of model.json's canonical JSON without :data:`CHECKSUM_KEY` (independent of formatting)."""
    body = {k: v for k, v in raw.items() if k != CHECKSUM_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_record(path: Path) -> dict[str, Any]:
    """The ``{"file", "sha256", "bytes"}`` checksum record of a file of the bundle."""
    return {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def unsealed_message(folder: Path) -> str:
    """Why a bundle without ``manifest_sha256`` is refused, and the command that fixes it."""
    return (f"Model bundle {folder}: {MANIFEST_NAME} has no checksum of itself and of {MODEL_CARD_NAME} "
            f"(the bundle was saved by an older engine), so edits to them could not be detected and the "
            f"model is refused. If you trust this copy, record the checksums with `{SEAL_HINT} {folder}` "
            f"(it first checks the weights against {MANIFEST_NAME}); otherwise get a fresh copy.")


def check_integrity(folder: Path, raw: Mapping[str, Any], model_id: str) -> None:
    """model.json against its ``manifest_sha256``, MODEL_CARD.md against its record (small files: cheap)."""
    # what the (possibly edited) model.json claims, so the user knows which model is refused
    model_id = f"{model_id}' {raw.get('version')} for task '{raw.get('task')}"
    recorded = raw.get(CHECKSUM_KEY)
    if recorded is None:
        raise BundleError(unsealed_message(folder))
    if not isinstance(recorded, str) or recorded.lower() != manifest_checksum(raw):
        raise BundleError(
            f"Model bundle {folder} ('{model_id}'): {MANIFEST_NAME} was edited after the bundle was saved "
            f"(its content no longer matches its {CHECKSUM_KEY}), so the model is refused: a changed "
            f"setting such as the intensity normalisation would silently change every result. Restore the "
            f"original {MANIFEST_NAME} or {REINSTALL_HINT[0].lower()}{REINSTALL_HINT[1:]}")
    card = raw.get(CARD_KEY)
    card_path = folder / MODEL_CARD_NAME
    if card is None:
        if card_path.exists():
            raise BundleError(
                f"Model bundle {folder} ('{model_id}'): {MODEL_CARD_NAME} was added after the bundle was "
                f"saved ({MANIFEST_NAME} records no model card), so it is refused. Remove it or "
                f"{REINSTALL_HINT[0].lower()}{REINSTALL_HINT[1:]}")
        return
    if (not isinstance(card, Mapping) or card.get("file") != MODEL_CARD_NAME
            or not isinstance(card.get("sha256"), str) or not isinstance(card.get("bytes"), int)):
        raise _err(folder, f"'{CARD_KEY}' must be {{\"file\": \"{MODEL_CARD_NAME}\", \"sha256\", \"bytes\"}} "
                   "or null.", REINSTALL_HINT)
    if not card_path.is_file() or card_path.is_symlink():
        raise BundleError(f"Model bundle {folder} ('{model_id}') is incomplete: {MODEL_CARD_NAME} is "
                          f"missing. {REINSTALL_HINT}")
    if card_path.stat().st_size != card["bytes"] or sha256_file(card_path) != card["sha256"].lower():
        raise BundleError(
            f"Model bundle {folder} ('{model_id}'): {MODEL_CARD_NAME} was edited after the bundle was saved "
            f"(it no longer matches the sha256 in {MANIFEST_NAME}), so the model is refused. Restore the "
            f"original {MODEL_CARD_NAME} or {REINSTALL_HINT[0].lower()}{REINSTALL_HINT[1:]}")


def check_task(task: str) -> None:
    """A :class:`BundleError` naming the known tasks when no built-in or plug-in task is called ``task``."""
    try:
        get_task(task)
    except UnknownTaskError as exc:
        raise BundleError(str(exc)) from exc


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
                   REINSTALL_HINT) from exc
    if not isinstance(raw, dict):
        raise _err(folder, f"{MANIFEST_NAME} must hold a JSON object.", REINSTALL_HINT)
    return raw


def manifest_to_bundle(raw: Mapping[str, Any], folder: Path,
                       expected_task: str | None = None) -> ModelBundle:
    """Validate a parsed model.json (types, ids, task, labels, weights list) into a :class:`ModelBundle`."""
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise _err(folder, f"model.json is incomplete: missing required key(s) {', '.join(missing)}.",
                   REINSTALL_HINT)
    fv = raw["format_version"]
    if isinstance(fv, bool) or not isinstance(fv, int) or fv < 1:
        raise _err(folder, f"format_version must be a positive integer, not {fv!r}.", REINSTALL_HINT)
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
    known = task_names()
    if task not in known:
        raise _err(folder, f"unknown task {task!r}; known tasks are {', '.join(known)}.",
                   "This bundle is not an OncoStaging model, or needs a newer engine or its task's plug-in.")
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
    extra = {k: v for k, v in raw.items() if k not in REQUIRED_KEYS and k not in (CARD_KEY, CHECKSUM_KEY)}
    card = raw.get(CARD_KEY)
    card_file = None
    if isinstance(card, Mapping) and all(k in card for k in ("file", "sha256", "bytes")):
        card_file = WeightFile(file=str(card["file"]), sha256=str(card["sha256"]).lower(),
                               bytes=card["bytes"])
    checksum = raw.get(CHECKSUM_KEY)
    return ModelBundle(
        format_version=fv, id=mid, name=raw["name"], version=version, task=task,
        architecture=dict(arch), plan=dict(raw["plan"]), labels=labels,
        stages=list(stages) if stages is not None else None, modality=modality,
        training=dict(raw["training"]), metrics=dict(raw["metrics"]), intended_use=raw["intended_use"],
        weights=weights, created=raw["created"], engine_version=raw["engine_version"],
        path=folder, model_card_file=card_file,
        manifest_sha256=checksum if isinstance(checksum, str) else None, extra=extra,
    )

