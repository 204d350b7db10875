"""Resampling onto a new voxel spacing and back, keeping the physical frame.

The output grid keeps the input's origin and direction; only spacing and size change. Inverting
resamples onto the original grid itself, so shape, spacing, origin and direction come back
exactly (the voxel values of an image are interpolated twice, labels are nearest-neighbour).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk

from engine.io.image import Image

#: Image interpolation: 3rd-order B-spline (nnU-Net, nn-TransEC §4.1); labels: nearest neighbour.
IMAGE_INTERPOLATOR = sitk.sitkBSpline
LABEL_INTERPOLATOR = sitk.sitkNearestNeighbor


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]) -> list[int]:
    return [max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, new_spacing)]


def resample_to_grid(image: Image, shape: Sequence[int], spacing: Sequence[float],
                     is_label: bool = False, order: int | None = None) -> Image:
    """Resample onto the grid with the same origin/direction and the given (z, y, x) shape and spacing."""
    if tuple(shape) == image.shape and np.allclose(spacing, image.spacing, rtol=0, atol=1e-9):
        return Image(image.array.copy(), image.spacing, image.origin, image.direction, image.modality)
    src = image.to_sitk()
    if is_label:
        interp = LABEL_INTERPOLATOR
    elif order is None or order == 3:
        interp = IMAGE_INTERPOLATOR
    elif order == 1:
        interp = sitk.sitkLinear
    elif order == 0:
        interp = sitk.sitkNearestNeighbor
    else:
        raise ValueError(f"unsupported interpolation order {order}")
    f = sitk.ResampleImageFilter()
    f.SetOutputOrigin(image.origin)
    f.SetOutputDirection(tuple(image.direction.ravel().tolist()))
    f.SetOutputSpacing(tuple(float(s) for s in reversed(list(spacing))))
    f.SetSize([int(s) for s in reversed(list(shape))])
    f.SetInterpolator(interp)
    f.SetDefaultPixelValue(0)
    if not is_label:
        src = sitk.Cast(src, sitk.sitkFloat32)
        # Extrapolating at the border repeats edge values instead of dropping to 0 (air would be 0 HU).
        f.SetUseNearestNeighborExtrapolator(True)
    out = f.Execute(src)
    dtype = image.array.dtype if is_label else np.float32
    return Image.from_sitk(out, dtype=dtype, modality=image.modality)


def resample_to_spacing(image: Image, spacing: Sequence[float], is_label: bool = False) -> Image:
    shape = resampled_shape(image.shape, image.spacing, spacing)
    return resample_to_grid(image, shape, spacing, is_label=is_label)
