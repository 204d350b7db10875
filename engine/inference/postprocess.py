"""Post-processing (nn-TransEC §3.3): most thoracic organs are one object, so smaller connected
components of those labels are spurious and become background."""

from __future__ import annotations

from typing import Iterable

import numpy as np
from scipy import ndimage


def keep_largest_component(labels: np.ndarray, single_object_labels: Iterable[int]) -> np.ndarray:
    """For each label in ``single_object_labels`` keep only its largest 26-connected component."""
    out = labels.copy()
    structure = np.ones((3,) * labels.ndim, dtype=bool)
    for value in single_object_labels:
        mask = labels == value
        if not mask.any():
            continue
        comps, count = ndimage.label(mask, structure=structure)
        if count <= 1:
            continue
        sizes = np.bincount(comps.ravel())
        sizes[0] = 0
        out[mask & (comps != int(np.argmax(sizes)))] = 0
    return out
