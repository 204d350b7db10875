"""Cropping to the region that holds the patient, and padding up to a minimum size.

Both are recorded as plain index boxes so the inverse is exact: what was cut is put back as
background, what was padded is removed.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

#: HU threshold that separates the patient (and table) from air in CT.
CT_BODY_THRESHOLD_HU = -500.0


def foreground_box(array: np.ndarray, modality: str | None, margin: int = 2) -> list[list[int]]:
    """Index box [[z0, z1), [y0, y1), [x0, x1)] of the largest connected region above background.

    CT: voxels above -500 HU; other modalities: voxels above the volume minimum (nnU-Net's
    "crop to non-zero"). The full volume is kept when nothing stands out.
    """
    threshold = CT_BODY_THRESHOLD_HU if (modality or "").upper() == "CT" else float(array.min())
    mask = array > threshold
    if not mask.any():
        return [[0, n] for n in array.shape]
    labels, count = ndimage.label(mask)
    if count > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    box = []
    for axis, n in enumerate(array.shape):
        other = tuple(a for a in range(array.ndim) if a != axis)
        idx = np.nonzero(mask.any(axis=other))[0]
        box.append([max(0, int(idx[0]) - margin), min(n, int(idx[-1]) + 1 + margin)])
    return box


def crop(array: np.ndarray, box: Sequence[Sequence[int]]) -> np.ndarray:
    return array[tuple(slice(a, b) for a, b in box)]


def uncrop(array: np.ndarray, box: Sequence[Sequence[int]], full_shape: Sequence[int],
           fill: float = 0) -> np.ndarray:
    """Put a cropped array (trailing dims = box) back into a volume of ``full_shape``."""
    lead = array.shape[: array.ndim - len(box)]
    out = np.full(tuple(lead) + tuple(full_shape), fill, dtype=array.dtype)
    out[(Ellipsis,) + tuple(slice(a, b) for a, b in box)] = array
    return out


def pad_amounts(shape: Sequence[int], minimum: Sequence[int]) -> list[list[int]]:
    """Symmetric padding (before, after) per axis so each axis reaches ``minimum``."""
    pads = []
    for n, m in zip(shape, minimum):
        extra = max(0, int(m) - int(n))
        pads.append([extra // 2, extra - extra // 2])
    return pads


def pad(array: np.ndarray, pads: Sequence[Sequence[int]], value: float = 0) -> np.ndarray:
    if not any(b or a for b, a in pads):
        return array
    width = [(0, 0)] * (array.ndim - len(pads)) + [tuple(p) for p in pads]
    return np.pad(array, width, mode="constant", constant_values=value)


def unpad(array: np.ndarray, pads: Sequence[Sequence[int]]) -> np.ndarray:
    sl = tuple(slice(b, array.shape[array.ndim - len(pads) + i] - a) for i, (b, a) in enumerate(pads))
    return array[(Ellipsis,) + sl]
