"""Task networks built from a plan.

The GTV networks are exported lazily (PEP 562), so ``import engine.models.nn_mtnet`` does not also
load MONAI's Swin Transformer.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "BasicBlock": "engine.models.resnet2d", "ResNetEncoder2d": "engine.models.resnet2d",
    "PyramidPooling": "engine.models.sanet", "SpatialAlignment": "engine.models.sanet",
    "SANet": "engine.models.sanet", "SliceClassifier": "engine.models.sanet",
    "DFE": "engine.models.resformer", "ResFormer": "engine.models.resformer",
}

__all__ = [
    "DFE",
    "BasicBlock",
    "PyramidPooling",
    "ResFormer",
    "ResNetEncoder2d",
    "SANet",
    "SliceClassifier",
    "SpatialAlignment",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'engine.models' has no attribute '{name}'")
