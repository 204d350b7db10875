"""Zip export and offline import of model bundles.

An imported bundle is extracted with the checks of :mod:`engine.registry.archive`, verified (sha256)
before it is placed in the registry, and placed with one rename, so a failed import leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from engine.errors import BundleError
from engine.registry.archive import extract_bundle_zip, find_bundle_root
from engine.registry.bundle import check_bundle_target, load_bundle
from engine.registry.manifest import MANIFEST_NAME, MODEL_CARD_NAME, ModelBundle
from engine.registry.paths import user_model_dir
from engine.utils.atomic import replace_dir

log = logging.getLogger(__name__)


def export_bundle(bundle: ModelBundle | str | os.PathLike, zip_path: str | os.PathLike,
                  overwrite: bool = False) -> Path:
    """Zip a verified bundle as ``<id>-<version>/...`` (written to a temp file, then renamed)."""
    if not isinstance(bundle, ModelBundle):
        bundle = load_bundle(bundle, verify=True)
    else:
        bundle.verify()  # never hand on a bundle that was altered since it was loaded
    out = Path(zip_path).expanduser().absolute()
    if out.exists() and not overwrite:
        raise BundleError(f"{out} already exists; choose another file name or pass --overwrite.")
    out.parent.mkdir(parents=True, exist_ok=True)
    top = bundle.folder_name
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with zipfile.ZipFile(tmp, "w") as zf:
            # Weights are stored uncompressed: float tensors barely compress, and it keeps export fast.
            for w in bundle.weights:
                zf.write(bundle.path / w.file, f"{top}/{w.file}", compress_type=zipfile.ZIP_STORED)
            card = bundle.model_card_path
            if card is not None:
                zf.write(card, f"{top}/{MODEL_CARD_NAME}", compress_type=zipfile.ZIP_DEFLATED)
            zf.write(bundle.path / MANIFEST_NAME, f"{top}/{MANIFEST_NAME}",
                     compress_type=zipfile.ZIP_DEFLATED)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("Exported model %s %s to %s", bundle.id, bundle.version, out)
    return out


def import_bundle(zip_path: str | os.PathLike, registry_dir: str | os.PathLike | None = None,
                  overwrite: bool = False) -> ModelBundle:
    """Install a bundle zip (or folder) as ``<registry>/<id>-<version>/`` after full verification.

    The zip is unpacked into a hidden folder inside the registry (same file system, so the final
    move is one atomic rename); an installed bundle with the same id and version is kept unless
    ``overwrite``.
    """
    src = Path(zip_path).expanduser()
    if not src.exists():
        raise BundleError(f"{src} does not exist; give the path of an exported model .zip.")
    reg = Path(registry_dir).expanduser() if registry_dir is not None else user_model_dir()
    reg.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".import-", dir=reg))
    try:
        if src.is_dir():
            root = find_bundle_root(src)
            shutil.copytree(root, staging / "bundle", symlinks=True)
            root = staging / "bundle"
        else:
            extract_bundle_zip(src, staging)
            root = find_bundle_root(staging, src)
        bundle = load_bundle(root, verify=True)
        target = reg / bundle.folder_name
        if target.exists() and not overwrite:
            raise BundleError(f"Model '{bundle.id}' {bundle.version} is already installed at {target}; "
                              "nothing was changed. Pass --overwrite to replace it, or give the new "
                              "model another version.")
        if root == staging:
            # Content was at the zip's top level: move it into its own folder before renaming.
            inner = staging / f".{bundle.folder_name}"
            inner.mkdir()
            for entry in list(staging.iterdir()):
                if entry != inner:
                    os.replace(entry, inner / entry.name)
            root = inner
        os.chmod(root, 0o755)
        check_bundle_target(target, overwrite, "importing the model")
        replace_dir(root, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("Imported model %s %s (%s) into %s", bundle.id, bundle.version, bundle.task, target)
    return load_bundle(target, verify=False)
