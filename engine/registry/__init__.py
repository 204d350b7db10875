"""Model bundles (model.json + safetensors weights, sha256-verified) and the model registry.

Modules, lowest first: :mod:`~engine.registry.manifest` (the model.json format, :class:`ModelBundle`,
validation), :mod:`~engine.registry.paths` (model folders), :mod:`~engine.registry.archive` (safe zip
extraction), :mod:`~engine.registry.bundle` (load and save), :mod:`~engine.registry.transfer` (zip export
and import) and :mod:`~engine.registry.registry` (listing, default model). Importing this package
imports neither torch nor MONAI.
"""

from engine.registry.archive import MAX_UNPACKED_BYTES, extract_bundle_zip, safe_extract
from engine.registry.bundle import (
    load_bundle,
    record_training_domain,
    save_bundle,
    seal_bundle,
    update_manifest,
)
from engine.registry.manifest import (
    DEMO_INTENDED_USE,
    FORMAT_VERSION,
    HALF_PRECISION_STORAGE,
    MANIFEST_NAME,
    MODALITIES,
    MODEL_CARD_NAME,
    REQUIRED_KEYS,
    Label,
    ModelBundle,
    WeightFile,
    semver_key,
    sha256_file,
)
from engine.registry.paths import BUILTIN_DIR_ENV, MODEL_DIR_ENV, builtin_dir, user_model_dir
from engine.registry.registry import BundleInfo, find_bundle, list_bundles
from engine.registry.transfer import export_bundle, import_bundle

__all__ = [
    "BUILTIN_DIR_ENV", "DEMO_INTENDED_USE", "FORMAT_VERSION", "HALF_PRECISION_STORAGE", "MANIFEST_NAME",
    "MAX_UNPACKED_BYTES", "MODALITIES", "MODEL_CARD_NAME", "MODEL_DIR_ENV", "REQUIRED_KEYS", "BundleInfo",
    "Label", "ModelBundle", "WeightFile", "builtin_dir", "export_bundle", "extract_bundle_zip", "find_bundle",
    "import_bundle", "list_bundles", "load_bundle", "safe_extract", "record_training_domain", "save_bundle",
    "seal_bundle", "semver_key", "sha256_file", "update_manifest", "user_model_dir",
]
