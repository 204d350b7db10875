"""Structure volumes in cm³ from a label map: voxel count × voxel volume."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def structure_volumes_cm3(labels: np.ndarray, spacing_mm: Sequence[float],
                          names: Mapping[int, str]) -> dict[str, float]:
    """Volume of every named label (background excluded), 0.0 for labels that are absent."""
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=max(names) + 1)
    voxel_cm3 = float(np.prod(spacing_mm)) / 1000.0
    return {name: float(counts[value]) * voxel_cm3 for value, name in sorted(names.items()) if value != 0}
