"""Overlap and surface-distance metrics for binary masks and label maps, in physical units.

All functions take arrays in the engine's axis order (``[z, y, x]`` for 3D, any 2D/3D works) and
``spacing`` in the *same* axis order, in millimetres — exactly :attr:`engine.io.image.Image.spacing`.
The numbers come from MONAI's implementations (``compute_dice``, ``compute_iou``,
``compute_hausdorff_distance(percentile=95)``, ``compute_average_surface_distance(symmetric=True)``) so
they match what is reported in the literature that uses MONAI; this module only fixes the edge cases
and the units.

Edge cases (chosen once, used everywhere, and what ``to_dict()`` writes to JSON):

==========================  ======  ======  =======================
case                        dice    iou     hd95 / assd
==========================  ======  ======  =======================
both masks empty            1.0     1.0     0.0 (perfect agreement)
exactly one mask empty      0.0     0.0     NaN → JSON ``null``
==========================  ======  ======  =======================

A distance to an empty mask is undefined, so it is NaN rather than ``inf`` (which JSON cannot hold) or a
made-up penalty (e.g. the image diagonal) that would depend on the field of view. Aggregators must
therefore report how many cases were NaN instead of silently ``nanmean``-ing them away.

Surfaces are MONAI's: the mask voxels removed by a binary erosion with the face-connected (cross)
structuring element, zeros assumed outside the array — so a mask touching the array edge keeps its edge
voxels as surface — and distances are Euclidean, in mm, between the centres of surface voxels. HD95 is
the larger of the two directed 95th percentiles (``torch.quantile``, linear interpolation); ASSD is the
mean of the pooled distances of both surfaces. MONAI computes in ``float32``, so values carry ~1e-7
relative rounding (e.g. IoU 3/5 reads 0.6000000238).

Masks are cropped to the bounding box of ``pred | ref`` before MONAI sees them: every metric here
depends only on that box (and on zeros around it), so the result is unchanged while memory and time no
longer scale with the field of view.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
)

from engine.metrics.common import JsonResult, MetricInputError, as_binary, is_whole_number

__all__ = ["dice", "iou", "hd95", "assd", "StructureScores", "segmentation_scores"]

ArrayLike = np.ndarray | Sequence


def _pair(pred: ArrayLike, ref: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p = as_binary(pred, "pred")
    r = as_binary(ref, "ref")
    if p.shape != r.shape:
        raise MetricInputError(f"pred and ref masks differ in shape: {p.shape} vs {r.shape}.")
    if p.ndim not in (2, 3):
        raise MetricInputError(f"Masks must be 2D or 3D, got {p.ndim} dimensions (shape {p.shape}).")
    return p, r


def _spacing(spacing: Sequence[float] | float | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        raise MetricInputError("spacing (mm, in the array's axis order) is required for distance metrics.")
    sp = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    if sp.size == 1:
        sp = np.repeat(sp, ndim)
    if sp.shape != (ndim,):
        raise MetricInputError(f"spacing must have one value per array axis ({ndim}), got {[float(v) for v in sp]}.")
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise MetricInputError(f"spacing values must be positive and finite, got {[float(v) for v in sp]}.")
    return tuple(float(s) for s in sp)


def _crop_to_union(p: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C-contiguous, writable copies of both masks cropped to the bounding box of ``p | r``.

    Copying also makes flipped (negative-stride) and read-only arrays safe for ``torch.from_numpy``.
    An empty union gives two 1-voxel empty masks (MONAI still sees the "both empty" case).
    """
    union = p | r
    if not union.any():
        empty = np.zeros((1,) * p.ndim, dtype=bool)
        return empty, empty.copy()
    box = []
    for axis in range(p.ndim):
        hit = np.flatnonzero(union.any(axis=tuple(a for a in range(p.ndim) if a != axis)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    sl = tuple(box)
    return np.array(p[sl], dtype=bool, order="C"), np.array(r[sl], dtype=bool, order="C")


def _batch(mask: np.ndarray) -> torch.Tensor:
    """MONAI wants ``[batch, channel, *spatial]``; one image, one foreground channel."""
    return torch.from_numpy(mask[None, None])


def dice(pred: ArrayLike, ref: ArrayLike) -> float:
    """Dice similarity coefficient 2|P∩R|/(|P|+|R|); 1.0 when both masks are empty."""
    p, r = _crop_to_union(*_pair(pred, ref))
    # ignore_empty=False: MONAI then scores "both empty" as 1 and "reference empty, prediction not" as 0.
    value = compute_dice(_batch(p), _batch(r), include_background=True, ignore_empty=False)
    return float(value.item())


def iou(pred: ArrayLike, ref: ArrayLike) -> float:
    """Intersection over union (Jaccard) |P∩R|/|P∪R|; 1.0 when both masks are empty."""
    p, r = _crop_to_union(*_pair(pred, ref))
    value = compute_iou(_batch(p), _batch(r), include_background=True, ignore_empty=False)
    return float(value.item())


def _distance(p: np.ndarray, r: np.ndarray, spacing: tuple[float, ...], kind: str) -> float:
    p_any, r_any = bool(p.any()), bool(r.any())
    if not p_any and not r_any:
        return 0.0
    if p_any != r_any:
        return math.nan
    p, r = _crop_to_union(p, r)
    with warnings.catch_warnings():
        # MONAI's own internals trigger a FutureWarning about a deprecated argument; not ours to act on.
        warnings.simplefilter("ignore", FutureWarning)
        if kind == "hd95":
            value = compute_hausdorff_distance(_batch(p), _batch(r), include_background=True,
                                               percentile=95, spacing=spacing)
        else:
            value = compute_average_surface_distance(_batch(p), _batch(r), include_background=True,
                                                     symmetric=True, spacing=spacing)
    return float(value.item())


def hd95(pred: ArrayLike, ref: ArrayLike, spacing: Sequence[float] | float) -> float:
    """Symmetric 95th-percentile Hausdorff distance in mm (robust to a few stray voxels, unlike HD100).

    It is the larger of the two directed 95th percentiles of boundary-to-boundary distances.
    0.0 when both masks are empty, NaN when exactly one is.
    """
    p, r = _pair(pred, ref)
    return _distance(p, r, _spacing(spacing, p.ndim), "hd95")


def assd(pred: ArrayLike, ref: ArrayLike, spacing: Sequence[float] | float) -> float:
    """Average symmetric surface distance in mm: the mean over the boundary voxels of *both* masks of
    the distance to the other mask's boundary. 0.0 when both masks are empty, NaN when exactly one is."""
    p, r = _pair(pred, ref)
    return _distance(p, r, _spacing(spacing, p.ndim), "assd")


@dataclass
class StructureScores(JsonResult):
    """Agreement between prediction and reference for one labelled structure."""

    name: str
    label: int
    dice: float
    iou: float
    hd95_mm: float
    assd_mm: float
    pred_volume_cm3: float
    ref_volume_cm3: float

    @property
    def volume_difference_cm3(self) -> float:
        """Predicted minus reference volume (positive: over-segmentation)."""
        return self.pred_volume_cm3 - self.ref_volume_cm3


def _labelmap(values: object, name: str) -> tuple[np.ndarray, tuple[float, ...] | None]:
    # Accept an engine Image (duck-typed to keep this module free of I/O imports) or a plain array.
    spacing: tuple[float, ...] | None = None
    if hasattr(values, "array") and hasattr(values, "spacing"):
        spacing = tuple(float(s) for s in values.spacing)  # type: ignore[attr-defined]
        values = values.array  # type: ignore[attr-defined]
    arr = np.asarray(values)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.number):
        raise MetricInputError(f"{name} must be a numeric label map, got dtype {arr.dtype}.")
    if not np.issubdtype(arr.dtype, np.integer) and not np.array_equal(arr, np.round(arr)):
        raise MetricInputError(f"{name} must hold integer labels; found non-integer values.")
    return arr, spacing


def segmentation_scores(
    pred_labelmap: np.ndarray | object,
    ref_labelmap: np.ndarray | object,
    labels: Mapping[str, int],
    spacing: Sequence[float] | None = None,
) -> dict[str, StructureScores]:
    """Dice, IoU, HD95, ASSD and volumes per structure ``name → label value`` of two label maps.

    ``pred_labelmap``/``ref_labelmap`` are arrays (then ``spacing`` is required, mm, array axis order) or
    :class:`engine.io.image.Image` objects (then their spacing is used unless ``spacing`` is given).
    Label values present in the maps but absent from ``labels`` are ignored.
    """
    pred, pred_sp = _labelmap(pred_labelmap, "pred_labelmap")
    ref, ref_sp = _labelmap(ref_labelmap, "ref_labelmap")
    if pred.shape != ref.shape:
        raise MetricInputError(f"Label maps differ in shape: prediction {pred.shape} vs reference "
                               f"{ref.shape}; resample the prediction onto the reference grid first.")
    if spacing is None:
        if pred_sp is not None and ref_sp is not None and not np.allclose(pred_sp, ref_sp, rtol=1e-4):
            raise MetricInputError(f"Label maps have different spacings: {pred_sp} vs {ref_sp}.")
        spacing = ref_sp or pred_sp
    sp = _spacing(spacing, pred.ndim)
    if not labels:
        raise MetricInputError("labels must name at least one structure, e.g. {'tumour': 1}.")
    voxel_cm3 = float(np.prod(sp)) / 1000.0
    scores: dict[str, StructureScores] = {}
    for name, value in labels.items():
        if not is_whole_number(value):
            raise MetricInputError(f"Label value for '{name}' must be an integer, got {value!r}.")
        p, r = pred == value, ref == value
        scores[name] = StructureScores(
            name=str(name),
            label=int(value),
            dice=dice(p, r),
            iou=iou(p, r),
            hd95_mm=_distance(p, r, sp, "hd95"),
            assd_mm=_distance(p, r, sp, "assd"),
            pred_volume_cm3=float(p.sum()) * voxel_cm3,
            ref_volume_cm3=float(r.sum()) * voxel_cm3,
        )
    return scores
