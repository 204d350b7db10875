"""Model bundles: a folder (or a zip of it) with ``model.json``, safetensors weights and a model card.

:func:`load_bundle` opens and verifies a bundle (folder, its model.json, or a zip); :func:`save_bundle`
writes one atomically. The format and its validation are in :mod:`engine.registry.manifest` (the
names callers need with these functions are re-exported here); zip safety is in
:mod:`engine.registry.archive`.

Importing this module does not import torch: saving and reading weights import it when called.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import engine
from engine.errors import BundleError
from engine.registry.archive import extract_bundle_zip
from engine.registry.manifest import (
    CARD_KEY,
    CHECKSUM_KEY,
    DEMO_INTENDED_USE,
    FORMAT_VERSION,
    HALF_PRECISION_STORAGE,
    MANIFEST_NAME,
    MODEL_CARD_NAME,
    REQUIRED_KEYS,
    Label,
    ModelBundle,
    check_integrity,
    check_task,
    check_weights,
    file_record,
    manifest_checksum,
    manifest_to_bundle,
    read_manifest,
    sha256_file,
    weights_file_name,
)
from engine.utils.atomic import apply_umask, check_target, replace_dir

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

__all__ = [
    "DEMO_INTENDED_USE", "HALF_PRECISION_STORAGE", "Label", "ModelBundle", "check_bundle_target",
    "half_precision", "load_bundle", "save_bundle", "seal_bundle",
]

log = logging.getLogger(__name__)


def check_bundle_target(out_dir: Path, overwrite: bool, what: str) -> None:
    """A :class:`BundleError` when ``what`` would replace the non-empty ``out_dir`` without ``overwrite``."""
    check_target(out_dir, overwrite, what, BundleError)


# ------------------------------------------------------------------------------------------------- load

def load_bundle(path: str | os.PathLike, expected_task: str | None = None,
                verify: bool = True) -> ModelBundle:
    """Open and validate a bundle folder, its model.json, or a ``.zip``; refuse anything untrustworthy.

    ``verify=False`` skips only the weights' sha256 (they must still exist with the recorded size):
    listing many large models in a GUI should not re-hash gigabytes each time. model.json and the model
    card are checked against their checksums always.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise BundleError(f"Model bundle {p} does not exist; check the path, or list installed models.")
    if p.is_file() and p.name == MANIFEST_NAME:
        p = p.parent
    if p.is_file():
        return _load_zip(p, expected_task, verify)
    if expected_task is not None:
        check_task(expected_task)
    raw = read_manifest(p)
    bundle = manifest_to_bundle(raw, p, expected_task=expected_task)
    check_integrity(p, raw, bundle.id)  # model.json and model card: small, so always
    check_weights(p, bundle.weights, bundle.id, hash_files=verify)
    if verify:
        log.debug("Verified sha256 of %d weights file(s) of %s %s", len(bundle.weights), bundle.id,
                  bundle.version)
    return bundle


def _load_zip(path: Path, expected_task: str | None, verify: bool) -> ModelBundle:
    """A bundle read straight from a zip, extracted (safely) to a temporary folder that lives with it."""
    if not zipfile.is_zipfile(path):
        raise BundleError(f"Model bundle {path}: is neither a bundle folder nor a zip archive. "
                          "Point to the folder that holds model.json, or to the exported .zip.")
    tmp = tempfile.TemporaryDirectory(prefix="oncostaging-bundle-")
    try:
        root = extract_bundle_zip(path, Path(tmp.name))
        bundle = load_bundle(root, expected_task=expected_task, verify=verify)
    except BaseException:
        tmp.cleanup()
        raise
    bundle.extraction_dir = tmp
    return bundle


# ------------------------------------------------------------------------------------------------- save

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



def half_precision(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """float32/float64 tensors rounded to float16; integer buffers (e.g. batch counts) unchanged."""
    import torch

    return {k: v.half() if v.dtype in (torch.float32, torch.float64) else v for k, v in state.items()}


def _prepare_state_dict(state: Mapping[str, Any], name: str) -> dict[str, torch.Tensor]:
    """CPU, dense, contiguous, unshared copies: safetensors refuses views and tensors sharing storage."""
    import torch

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


def _manifest(fields: Mapping[str, Any], extra: Mapping[str, Any] | None,
              weights_dtype: str | None) -> dict[str, Any]:
    """The model.json content of :func:`save_bundle`'s arguments, weights list still empty."""
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION, "id": fields["id"], "name": fields["name"],
        "version": fields["version"], "task": fields["task"],
        "architecture": _jsonable(dict(fields["architecture"]), "architecture"),
        "plan": _jsonable(dict(fields["plan"]), "plan"),
        "labels": [lab.to_dict() if isinstance(lab, Label) else _jsonable(dict(lab), "labels")
                   for lab in fields["labels"]],
        "stages": list(fields["stages"]) if fields["stages"] is not None else None,
        "modality": fields["modality"],
        "training": _jsonable(dict(fields["training"]), "training"),
        "metrics": _jsonable(dict(fields["metrics"]), "metrics"),
        "intended_use": fields["intended_use"], "weights": [],
        "created": fields["created"] or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "engine_version": fields["engine_version"] or engine.__version__,
    }
    if weights_dtype == HALF_PRECISION_STORAGE:
        extra = {**(extra or {}), "weights_dtype": HALF_PRECISION_STORAGE}
    for k, v in (extra or {}).items():
        if k in REQUIRED_KEYS:
            raise BundleError(f"extra key '{k}' clashes with a model.json field; pass it as an argument.")
        manifest[k] = _jsonable(v, k)
    return manifest


def _write_folder(tmp: Path, manifest: dict[str, Any], files: Mapping[str, str],
                  weights: Mapping[str, Mapping[str, torch.Tensor]], weights_dtype: str | None,
                  model_card: str | None) -> None:
    """Weights, model card, then model.json (last, so a folder with one is complete) into ``tmp``."""
    from safetensors.torch import save_file

    records = []
    for file, wname in files.items():
        fpath = tmp / file
        state = _prepare_state_dict(weights[wname], wname)
        if weights_dtype == HALF_PRECISION_STORAGE:
            state = half_precision(state)
        save_file(state, fpath, metadata={"format": "pt"})
        records.append({"file": file, "sha256": sha256_file(fpath), "bytes": fpath.stat().st_size})
    manifest["weights"] = records
    manifest[CARD_KEY] = None
    if model_card is not None:
        (tmp / MODEL_CARD_NAME).write_text(model_card, encoding="utf-8")
        manifest[CARD_KEY] = file_record(tmp / MODEL_CARD_NAME)
    _write_manifest(tmp, manifest)
    # mkdtemp makes 0o700 and safetensors may write 0o600: a shared model folder follows the umask
    for path in tmp.iterdir():
        apply_umask(path, directory=False)
    apply_umask(tmp, directory=True)


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """model.json with its ``manifest_sha256``, written atomically (temp file, then rename)."""
    manifest = json.loads(json.dumps(manifest, allow_nan=False))  # the checksum is of what is read back
    manifest.pop(CHECKSUM_KEY, None)
    manifest[CHECKSUM_KEY] = manifest_checksum(manifest)
    text = json.dumps(manifest, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    mtmp = folder / (MANIFEST_NAME + ".part")
    mtmp.write_text(text, encoding="utf-8")
    os.replace(mtmp, folder / MANIFEST_NAME)


def update_manifest(path: str | os.PathLike, edit: Callable[[dict[str, Any]], None]) -> ModelBundle:
    """Edit an intact bundle's model.json in place (``edit`` changes the parsed manifest) and record its
    new checksum, so the bundle stays sealed; weights are checked first and never changed."""
    bundle = load_bundle(path, verify=True)  # only an intact bundle is edited
    raw = read_manifest(bundle.path)
    edit(raw)
    _write_manifest(bundle.path, raw)
    return load_bundle(bundle.path, verify=False)


def record_training_domain(path: str | os.PathLike, profile: dict[str, Any]) -> ModelBundle:
    """Write a profile of the model's training data (:mod:`engine.domain`) into an intact bundle's
    ``training.domain``."""
    from engine.domain.profile import MANIFEST_KEY

    def add_profile(raw: dict[str, Any]) -> None:
        raw["training"] = {**dict(raw["training"]), MANIFEST_KEY: profile}

    bundle = update_manifest(path, add_profile)
    log.info("Recorded the training-data profile in %s.", bundle.path / MANIFEST_NAME)
    return bundle


def seal_bundle(path: str | os.PathLike, force: bool = False) -> ModelBundle:
    """Record the checksums of model.json and MODEL_CARD.md in a bundle saved by an older engine.

    Safe only for a copy the user trusts, and checked as far as possible: model.json must be valid
    and every weights file must match the sha256 model.json already records, so corrupt weights are
    never blessed. A bundle whose existing checksums do not match (model.json or the card edited
    after sealing) is refused unless ``force``: whoever edited it on purpose says so explicitly.
    """
    p = Path(path).expanduser()
    if p.is_file() and p.name == MANIFEST_NAME:
        p = p.parent
    if not p.is_dir():
        raise BundleError(f"{p} is not a bundle folder; seal works on a folder holding {MANIFEST_NAME} "
                          "(import or unzip a .zip first).")
    raw = read_manifest(p)
    bundle = manifest_to_bundle(raw, p)
    check_weights(p, bundle.weights, bundle.id, hash_files=True)
    if raw.get(CHECKSUM_KEY) is not None:
        try:
            check_integrity(p, raw, bundle.id)
            log.info("Model bundle %s is already sealed and intact; nothing changed.", p)
            return load_bundle(p, verify=False)
        except BundleError as exc:
            if not force:
                raise BundleError(f"{exc} Sealing would record the edited files as the reference, so it is "
                                  "refused; if you made this change yourself and trust it, seal with "
                                  "--force.") from None
    card = p / MODEL_CARD_NAME
    manifest = dict(raw)
    manifest[CARD_KEY] = file_record(card) if card.is_file() and not card.is_symlink() else None
    _write_manifest(p, manifest)
    log.info("Sealed model bundle %s: checksums of %s and %s recorded.", p, MANIFEST_NAME, MODEL_CARD_NAME)
    return load_bundle(p, verify=False)


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
    if weights_dtype not in (None, "float32", HALF_PRECISION_STORAGE):
        raise BundleError(f"weights_dtype must be float32 or {HALF_PRECISION_STORAGE}, "
                          f"not {weights_dtype!r}.")
    out = Path(out_dir).expanduser().absolute()
    check_bundle_target(out, overwrite, "saving the model")
    if not weights:
        raise BundleError("A bundle needs at least one weights file; pass weights={'name': state_dict}.")
    files = {weights_file_name(n): n for n in weights}
    if len(files) != len(weights):
        raise BundleError("Two weights names map to the same file; give them distinct names.")
    manifest = _manifest(dict(id=id, name=name, version=version, task=task, architecture=architecture,
                              plan=plan, labels=labels, stages=stages, modality=modality, training=training,
                              metrics=metrics, intended_use=intended_use, created=created,
                              engine_version=engine_version), extra, weights_dtype)
    # Validate the metadata before writing gigabytes (weights list checked with a placeholder).
    placeholder = [{"file": f, "sha256": "0" * 64, "bytes": 0} for f in files]
    manifest_to_bundle({**manifest, "weights": placeholder}, out)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _write_folder(tmp, manifest, files, weights, weights_dtype, model_card)
        # Check again: someone may have written there meanwhile.
        check_bundle_target(out, overwrite, "saving the model")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("Saved model bundle %s %s (%s) to %s", id, version, task, out)
    return load_bundle(out, verify=False)
