"""A coarse-to-fine cascade's region of interest: where the full-resolution stage runs.

The low-resolution stage already says where the structures are. The full-resolution stage (and its
resampling) then needs only the box around that foreground, grown by a margin the plan takes from
the training data (:func:`engine.planning.planner.roi_margin_mm`); everything outside is
background. On a whole thoracic CT this is a small part of the volume, so most of the cost of the
full-resolution stage goes away, and nothing far from the anatomy can be mislabelled.

Grids: the low-resolution and full-resolution arrays both resample the same crop box, so a
full-resolution voxel ``j`` sits at low-resolution coordinate ``(j + 0.5) · n_low / n_full − 0.5``
(the convention of ``torch.nn.functional.interpolate``, which the cascade prior uses).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)


@dataclass
class CascadeRegion:
    """The full-resolution region: ``box`` ([start, stop) per z, y, x axis of the full-resolution
    grid), and what share of that grid's voxels it holds."""

    box: list[list[int]]
    grid_shape: list[int]

    @property
    def fraction(self) -> float:
        inside = np.prod([b - a for a, b in self.box], dtype=np.float64)
        return float(inside / np.prod(self.grid_shape, dtype=np.float64))

    @property
    def is_whole_grid(self) -> bool:
        return all(a == 0 and b == n for (a, b), n in zip(self.box, self.grid_shape))


def foreground_bounds(labels: np.ndarray) -> list[list[int]] | None:
    """[start, stop) per axis of the voxels with a label > 0, or None when there are none."""
    found = labels > 0
    if not found.any():
        return None
    bounds = []
    for axis in range(labels.ndim):
        other = tuple(a for a in range(labels.ndim) if a != axis)
        idx = np.nonzero(found.any(axis=other))[0]
        bounds.append([int(idx[0]), int(idx[-1]) + 1])
    return bounds


def cascade_region(low_labels: np.ndarray, full_shape: Sequence[int], full_spacing: Sequence[float],
                   margin_mm: Sequence[float], patch_size: Sequence[int], overlap: float = 0.5) -> CascadeRegion:
    """The full-resolution box the cascade's second stage runs on (``low_labels``: the unpadded
    low-resolution labels; no foreground there: the whole grid).

    The box is made of the windows a whole-volume sliding window (``patch_size``, ``overlap``) would
    use: every window that overlaps the low-resolution foreground, and enough more to reach
    ``margin_mm`` beyond it. Each voxel of the foreground is then covered by the same windows, seeing
    the same input, as on the whole volume, so its prediction is the same; only voxels in the margin
    can differ, where fewer windows are blended."""
    bounds = foreground_bounds(low_labels)
    shape = [int(n) for n in full_shape]
    if bounds is None:
        return CascadeRegion([[0, n] for n in shape], shape)
    box = []
    for (lo, hi), n_low, n_full, spacing, margin, patch in zip(bounds, low_labels.shape, shape,
                                                                full_spacing, margin_mm, patch_size):
        scale = n_full / n_low
        core = [max(0, math.floor(lo * scale)), min(n_full, math.ceil(hi * scale))]
        grow = math.ceil(margin / spacing)
        reach = [max(0, core[0] - grow), min(n_full, core[1] + grow)]
        box.append(_window_span(core, reach, n_full, int(patch), overlap))
    return CascadeRegion(box, shape)


def window_starts(n: int, patch: int, overlap: float) -> list[int]:
    """Where MONAI's sliding window starts its windows along an axis of ``n`` voxels: every ``step``
    voxels from 0, the last one moved back to end at ``n``."""
    if patch >= n:
        return [0]
    step = max(1, int(patch * (1 - overlap)))
    count = next(i for i in range(n) if i * step + patch >= n) + 1
    return [min(i * step, n - patch) for i in range(count)]


def _window_span(core: Sequence[int], reach: Sequence[int], n: int, patch: int, overlap: float) -> list[int]:
    """[start, stop) of the windows overlapping ``core``, and of those overlapping ``reach`` where
    these do not already span it."""
    if patch >= n:
        return [0, n]
    starts = window_starts(n, patch, overlap)

    def span(lo: int, hi: int) -> tuple[int, int]:
        hits = [s for s in starts if s < hi and s + patch > lo]
        return min(hits), max(hits) + patch

    first, stop = span(*core)
    if first > reach[0]:
        first = span(reach[0], reach[0] + 1)[0]
    if stop < reach[1]:
        stop = span(reach[1] - 1, reach[1])[1]
    return [first, stop]


def resize_region_linear(values: torch.Tensor, full_shape: Sequence[int],
                         box: Sequence[Sequence[int]]) -> torch.Tensor:
    """``values`` (C, z, y, x) resized to ``full_shape`` by trilinear interpolation — the same samples
    as ``F.interpolate(..., size=full_shape, mode="trilinear", align_corners=False)`` — but computed
    only inside ``box`` (separable: one axis at a time)."""
    out = values
    for axis, (n_out, (start, stop)) in enumerate(zip(full_shape, box)):
        n_in = values.shape[axis + 1]
        scale = n_in / n_out
        source = ((torch.arange(start, stop, dtype=torch.float64) + 0.5) * scale - 0.5).clamp(min=0.0)
        first = source.floor().long().clamp(max=n_in - 1)
        second = (first + 1).clamp(max=n_in - 1)
        weight = (source - first.double()).float()
        shape = [1] * out.ndim
        shape[axis + 1] = -1
        weight = weight.reshape(shape)
        out = out.index_select(axis + 1, first) * (1 - weight) + out.index_select(axis + 1, second) * weight
    return out
