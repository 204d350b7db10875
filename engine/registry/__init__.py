"""Model bundles (model.json + safetensors weights, sha256-verified) and the model registry (SPEC §5)."""

from engine.registry.archive import (
    MAX_UNPACKED_BYTES,
    export_bundle,
    extract_bundle_zip,
    import_bundle,
    safe_extract,
)
from engine.registry.bundle import (
    DEMO_INTENDED_USE,
    FORMAT_VERSION,
    MANIFEST_NAME,
    MODALITIES,
    MODEL_CARD_NAME,
    REQUIRED_KEYS,
    TASKS,
    Label,
    ModelBundle,
    WeightFile,
    load_bundle,
    save_bundle,
    semver_key,
    sha256_file,
)
from engine.registry.registry import (
    BUILTIN_DIR_ENV,
    MODEL_DIR_ENV,
    BundleInfo,
    builtin_dir,
    find_bundle,
    list_bundles,
    user_model_dir,
)

__all__ = [
    "BUILTIN_DIR_ENV", "DEMO_INTENDED_USE", "FORMAT_VERSION", "MANIFEST_NAME", "MAX_UNPACKED_BYTES",
    "MODALITIES", "MODEL_CARD_NAME", "MODEL_DIR_ENV", "REQUIRED_KEYS", "TASKS", "BundleInfo", "Label",
    "ModelBundle", "WeightFile", "builtin_dir", "export_bundle", "extract_bundle_zip", "find_bundle",
    "import_bundle", "list_bundles", "load_bundle", "safe_extract", "save_bundle", "semver_key",
    "sha256_file", "user_model_dir",
]
