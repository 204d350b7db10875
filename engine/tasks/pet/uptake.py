"""The uptake figures a PET report gives for a segmented tumour: SUVmax, SUVmean, SUVpeak, MTV, TLG.

SUVpeak follows the PERCIST definition: the highest mean SUV in a 1 cm³ sphere (radius 6.2 mm)
centred on a tumour voxel. MTV is the segmented volume in ml and TLG = SUVmean × MTV.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

#: Radius of a 1 cm³ sphere, in mm.
PEAK_SPHERE_RADIUS_MM = (3.0 / (4.0 * math.pi) * 1000.0) ** (1.0 / 3.0)


@dataclass(frozen=True)
class UptakeFigures:
    """Uptake of one segmented tumour (SUV in g/ml, volumes in ml)."""

    suv_max: float
    suv_mean: float
    suv_peak: float
    mtv_ml: float
    tlg: float

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in asdict(self).items()}


def sphere_kernel(spacing: Sequence[float], radius_mm: float = PEAK_SPHERE_RADIUS_MM) -> np.ndarray:
    """Normalised spherical averaging kernel on a grid of ``spacing`` (z, y, x) mm (at least the centre voxel)."""
    half = [max(math.floor(radius_mm / s), 0) for s in spacing]
    axes = [np.arange(-h, h + 1) * s for h, s in zip(half, spacing)]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    kernel = ((zz ** 2 + yy ** 2 + xx ** 2) <= radius_mm ** 2).astype(np.float64)
    return kernel / kernel.sum()


def uptake_figures(suv: np.ndarray, mask: np.ndarray, spacing: Sequence[float]) -> UptakeFigures | None:
    """The figures of the tumour ``mask`` on the ``suv`` volume (same grid); None when the mask is empty."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return None
    values = suv[mask].astype(np.float64)
    kernel = sphere_kernel(spacing)
    pad = [k // 2 for k in kernel.shape]
    idx = np.argwhere(mask)
    lo = [max(int(i) - p, 0) for i, p in zip(idx.min(axis=0), pad)]
    hi = [min(int(i) + p + 1, n) for i, p, n in zip(idx.max(axis=0), pad, suv.shape)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    local_mean = ndimage.convolve(suv[box].astype(np.float64), kernel, mode="nearest")
    mtv_ml = float(mask.sum()) * float(np.prod(spacing)) / 1000.0
    mean = float(values.mean())
    return UptakeFigures(suv_max=float(values.max()), suv_mean=mean, suv_peak=float(local_mean[mask[box]].max()),
                         mtv_ml=mtv_ml, tlg=mean * mtv_ml)
