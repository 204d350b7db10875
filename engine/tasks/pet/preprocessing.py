"""PET geometry for the outcome network: canonical orientation, 2 mm isotropic grid, fixed-size crops
around the tumour, and the exact way back to the input's own voxel grid.

Linear interpolation keeps SUV values within the range of their neighbours (a cubic spline would
overshoot SUVmax at a hot rim); the uptake figures of the report are measured on the input grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.io.image import Image
from engine.preprocessing.orientation import Reorientation, reorientation
from engine.preprocessing.resample import resample_to_grid, resampled_shape

#: Orientation every volume is brought to before resampling (the engine's canonical LPS).
ORIENTATION = "LPS"
TARGET_SPACING = (2.0, 2.0, 2.0)


@dataclass
class PreparedVolume:
    """A PET on the network's grid, and what maps that grid back to the input."""

    suv: np.ndarray                    # float32 (z, y, x), canonical orientation, 2 mm
    reorientation: Reorientation
    canonical_shape: tuple[int, int, int]
    canonical_spacing: tuple[float, float, float]
    canonical_origin: tuple[float, float, float]
    canonical_direction: np.ndarray

    def grid_image(self, array: np.ndarray) -> Image:
        """An array on the 2 mm grid as an image (same origin and direction as the canonical input)."""
        return Image(array.astype(np.float32), TARGET_SPACING, self.canonical_origin, self.canonical_direction)

    def to_input(self, array: np.ndarray, is_label: bool = False) -> np.ndarray:
        """A 2 mm-grid array on the input's voxel grid (linear; nearest for labels)."""
        canonical = resample_to_grid(self.grid_image(array), self.canonical_shape, self.canonical_spacing,
                                     order=0 if is_label else 1).array
        return self.reorientation.to_input(canonical)

    def label_to_grid(self, label: np.ndarray) -> np.ndarray:
        """An input-grid label map on the 2 mm grid (nearest neighbour), for training and evaluation."""
        canonical = self.reorientation.to_canonical(label)
        image = Image(canonical.astype(np.float32), self.canonical_spacing, self.canonical_origin,
                      self.canonical_direction)
        return resample_to_grid(image, self.suv.shape, TARGET_SPACING, order=0).array.astype(np.uint8)


def prepare(image: Image) -> PreparedVolume:
    """Canonical orientation, then linear resampling to 2 mm isotropic."""
    reo = reorientation(image, ORIENTATION)
    canonical = reo.canonical_image(image)
    shape = resampled_shape(canonical.shape, canonical.spacing, TARGET_SPACING)
    suv = resample_to_grid(canonical, shape, TARGET_SPACING, order=1).array
    return PreparedVolume(np.maximum(suv, 0.0).astype(np.float32), reo, canonical.shape, canonical.spacing,
                          canonical.origin, canonical.direction)


def box_start(centre: Sequence[float], size: Sequence[int]) -> tuple[int, int, int]:
    """First voxel of a box of ``size`` centred on ``centre`` (may lie outside the volume)."""
    return tuple(round(float(c) - s / 2.0) for c, s in zip(centre, size))  # type: ignore[return-value]


def crop(array: np.ndarray, start: Sequence[int], size: Sequence[int], fill: float = 0.0) -> np.ndarray:
    """The box ``[start, start + size)`` of ``array``; parts outside the volume are ``fill``."""
    out = np.full(tuple(size), fill, dtype=array.dtype)
    src, dst = [], []
    for s, n, dim in zip(start, size, array.shape):
        lo, hi = max(s, 0), min(s + n, dim)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = array[tuple(src)]
    return out


def mask_centre(mask: np.ndarray) -> np.ndarray | None:
    """Centre of mass (voxel index) of a mask, None when it is empty."""
    idx = np.argwhere(mask)
    return idx.mean(axis=0) if len(idx) else None
