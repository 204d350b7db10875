"""Where models live and which one a task uses by default.

Two places are scanned (see :mod:`engine.registry.paths`): the user model directory and the builtin
directory of demo bundles. A broken bundle in either is listed as invalid with its reason instead of
breaking the model list for everyone else.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from engine.errors import BundleError
from engine.registry.bundle import load_bundle
from engine.registry.manifest import ModelBundle, check_task, read_manifest, semver_key
from engine.registry.paths import BUILTIN_DIR_ENV, MODEL_DIR_ENV, builtin_dir, user_model_dir
from engine.tasks import task_names

__all__ = ["BUILTIN_DIR_ENV", "MODEL_DIR_ENV", "BundleInfo", "builtin_dir", "find_bundle", "list_bundles",
           "user_model_dir"]

log = logging.getLogger(__name__)

@dataclass
class BundleInfo:
    """One entry of the model list: a valid bundle, or a folder that failed validation and why."""

    path: Path
    source: str  # "user" or "builtin"
    valid: bool
    error: str | None = None
    bundle: ModelBundle | None = None
    #: Read from model.json even for invalid bundles when possible, so filters and messages can use them.
    id: str | None = None
    version: str | None = None
    task: str | None = None
    name: str | None = None

    @property
    def display_name(self) -> str:
        """What a model list shows: name, version, origin, and a warning for demo/invalid bundles."""
        if not self.valid:
            return f"{self.path.name} (invalid: {self.error})"
        assert self.bundle is not None
        demo = " — demo, not for clinical use" if self.bundle.is_demo else ""
        return f"{self.name} {self.version} [{self.source}]{demo}"


def _scan(folder: Path, source: str, task: str | None) -> list[BundleInfo]:
    infos: list[BundleInfo] = []
    known = task_names()
    try:
        entries = sorted(folder.iterdir())
    except FileNotFoundError:
        return infos
    except OSError as exc:
        log.warning("Cannot read model directory %s: %s", folder, exc)
        return infos
    for entry in entries:
        if entry.name.startswith("."):  # staging folders of saves/imports in progress, hidden files
            continue
        if entry.is_file() and entry.suffix.lower() == ".zip":
            info = BundleInfo(path=entry, source=source, valid=False,
                              error="a zip archive; import it with `python -m engine models import` to use it")
        elif not entry.is_dir():
            continue
        else:
            try:
                b = load_bundle(entry, verify=False)
                info = BundleInfo(path=entry, source=source, valid=True, bundle=b, id=b.id,
                                  version=b.version, task=b.task, name=b.name)
            except BundleError as exc:
                info = BundleInfo(path=entry, source=source, valid=False, error=str(exc))
                try:
                    raw = read_manifest(entry)
                    info.id, info.version = raw.get("id"), raw.get("version")
                    info.task, info.name = raw.get("task"), raw.get("name")
                except BundleError:
                    pass
                log.warning("Skipping invalid model bundle %s: %s", entry, exc)
            except OSError as exc:
                info = BundleInfo(path=entry, source=source, valid=False, error=f"unreadable: {exc}")
                log.warning("Skipping unreadable model bundle %s: %s", entry, exc)
        # Invalid entries of unknown task stay in every filtered list, so the user sees the problem.
        if task is None or info.task == task or (not info.valid and info.task not in known):
            infos.append(info)
    return infos


def _version_order(info: BundleInfo) -> tuple:
    try:
        return semver_key(info.version or "")
    except BundleError:
        return (-1,)


def list_bundles(task: str | None = None, include_builtin: bool = True) -> list[BundleInfo]:
    """Every bundle in the user (and builtin) directory, invalid ones included with their reason.

    Validation checks model.json and the presence and size of each weights file, but not the sha256:
    that is checked when a model is actually loaded (:func:`find_bundle`), so listing stays fast.
    """
    if task is not None:
        check_task(task)
    infos = _scan(user_model_dir(), "user", task)
    bdir = builtin_dir() if include_builtin else None
    if bdir is not None and bdir.resolve() != user_model_dir().resolve():
        infos += _scan(bdir, "builtin", task)
    # Stable sorts, last key first: valid before invalid, by task and id, newest version first,
    # user before builtin for the same version.
    infos.sort(key=lambda i: i.source != "user")
    infos.sort(key=_version_order, reverse=True)
    infos.sort(key=lambda i: (not i.valid, i.task or "", i.id or i.path.name))
    return infos


def _no_model_message(task: str) -> str:
    return (f"No model is installed for task '{task}'. Import a model bundle (.zip) with "
            f"`python -m engine models import BUNDLE.zip` (or the module's 'Import model' button), or place a bundle "
            f"folder in {user_model_dir()} (set {MODEL_DIR_ENV} to use another folder).")


def find_bundle(task: str, model_id: str | None = None, include_builtin: bool = True,
                verify: bool = True) -> ModelBundle:
    """The bundle to run for ``task``: by default the newest valid one, user before builtin on a tie.

    ``model_id`` selects an id (newest version), an ``<id>-<version>`` folder name, or a path to a
    bundle folder/zip. The chosen bundle is loaded with sha256 verification unless ``verify=False``.
    """
    check_task(task)
    if model_id is not None and (os.sep in model_id or "/" in model_id or model_id.endswith(".zip")):
        return load_bundle(model_id, expected_task=task, verify=verify)
    infos = list_bundles(task=None, include_builtin=include_builtin)
    if model_id is None:
        candidates = [i for i in infos if i.valid and i.task == task]
        if not candidates:
            broken = [i for i in infos if not i.valid and i.task in (task, None)]
            hint = "".join(f"\n  - {i.path}: {i.error}" for i in broken)
            skipped = f" Invalid bundles were skipped:{hint}" if broken else ""
            raise BundleError(_no_model_message(task) + skipped)
    else:
        matches = [i for i in infos if i.id == model_id or
                   (i.id is not None and f"{i.id}-{i.version}" == model_id) or i.path.name == model_id]
        candidates = [i for i in matches if i.valid and i.task == task]
        if not candidates:
            other = [i for i in matches if i.valid]
            if other:
                raise BundleError(f"Model '{model_id}' is for task '{other[0].task}', not '{task}'; pick a "
                                  f"model trained for '{task}'.")
            broken = [i for i in matches if not i.valid]
            if broken:
                raise BundleError(f"Model '{model_id}' is installed but invalid: {broken[0].error}")
            raise BundleError(f"No model '{model_id}' is installed for task '{task}'. "
                              + _no_model_message(task).split(". ", 1)[1])
    best = max(candidates, key=lambda i: (_version_order(i), i.source == "user"))
    log.info("Using model %s %s (%s) from %s", best.id, best.version, best.source, best.path)
    return load_bundle(best.path, expected_task=task, verify=verify)
