"""Slice preprocessing of the GTV task, with its exact inverse.

The paper's recipe for 2D slices: a body mask (threshold, erosion, largest connected component),
crop every slice to the body's in-plane bounding box, resize to a fixed square size, normalise the
CT window. Volumes are first reordered to one canonical orientation (LPS, axis 0 axial) so the
networks always see axial slices the same way round. The inverse puts any slice-grid array back on
the input's voxel grid exactly (same shape and geometry): probabilities bilinearly, labels by nearest
neighbour, zero outside the body box.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from engine.io.image import Image
from engine.preprocessing.orientation import Reorientation, reorientation

log = logging.getLogger(__name__)

ORIENTATION = "LPS"
#: The paper's input size for full-resolution (≈1 mm, 512²) CT.
MAX_IMAGE_SIZE = 512
#: Never resize slices to more than this multiple of the body box's native size.
MAX_UPSAMPLING = 2.0
SIZE_MULTIPLE = 32
#: Voxels above this (HU) are body candidates: air and lung stay outside.
BODY_THRESHOLD_HU = -500.0
BODY_EROSION = 2
#: Pixels kept around the body box.
BOX_MARGIN = 2
#: CT window clipped before the z-score.
CT_CLIP = (-1000.0, 1000.0)


@dataclass
class GtvPlan:
    """What preprocessing and inference need to treat every volume alike; saved in the bundle."""

    image_size: int
    labels: dict[str, int]
    clip: list[float] = field(default_factory=lambda: list(CT_CLIP))
    mean: float = 0.0
    std: float = 1.0
    body_threshold_hu: float = BODY_THRESHOLD_HU
    body_erosion: int = BODY_EROSION
    threshold: float = 0.5
    orientation: str = ORIENTATION
    native_box_size: float | None = None
    inplane_spacing_mm: float | None = None
    task: str = "gtv"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GtvPlan:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class SliceRecord:
    """How one volume became slices: enough to put any slice-grid array back on the input grid."""

    reorientation: Reorientation
    canonical_shape: tuple[int, int, int]
    box: tuple[int, int, int, int]  # y0, y1, x0, x1 on the canonical grid (end exclusive)

    @property
    def slices(self) -> int:
        return self.canonical_shape[0]

    def input_slice_order(self) -> np.ndarray:
        """Canonical slice index of each input slice along the input axis that became axial (for
        reporting per-slice values in the input's own order)."""
        n = self.slices
        order = np.arange(n)
        return order[::-1].copy() if self.reorientation.flips[0] else order


def body_mask(volume: np.ndarray, threshold: float = BODY_THRESHOLD_HU, erosion: int = BODY_EROSION) -> np.ndarray:
    """The largest connected component of the eroded ``> threshold`` mask (the patient, not the table
    or noise); the un-eroded mask, then everything, when erosion leaves nothing."""
    mask = volume > threshold
    eroded = ndimage.binary_erosion(mask, iterations=erosion) if erosion else mask
    if not eroded.any():
        eroded = mask
    if not eroded.any():
        return np.ones(volume.shape, dtype=bool)
    components, n = ndimage.label(eroded)
    if n <= 1:
        return eroded
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def body_box(mask: np.ndarray, margin: int = BOX_MARGIN) -> tuple[int, int, int, int]:
    """In-plane bounding box (y0, y1, x0, x1) of the mask over all slices, with a margin."""
    plane = mask.any(axis=0)
    ys, xs = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    h, w = plane.shape
    if not ys.size:
        return 0, h, 0, w
    return (max(int(ys[0]) - margin, 0), min(int(ys[-1]) + 1 + margin, h),
            max(int(xs[0]) - margin, 0), min(int(xs[-1]) + 1 + margin, w))


def plan_image_size(box_sizes: Sequence[float], override: int | None = None) -> int:
    """The slice size: the median body box side rounded up to a multiple of 32 (so slices keep their
    native detail), at most 512 (the paper's size) and at most twice the native size (upsampling beyond
    that invents no detail and only costs memory)."""
    if override is not None:
        return int(override)
    native = float(np.median(box_sizes)) if len(box_sizes) else float(MAX_IMAGE_SIZE)
    size = max(SIZE_MULTIPLE, int(np.ceil(native / SIZE_MULTIPLE)) * SIZE_MULTIPLE)
    cap = max(SIZE_MULTIPLE, int(MAX_UPSAMPLING * native) // SIZE_MULTIPLE * SIZE_MULTIPLE)
    return int(min(size, MAX_IMAGE_SIZE, cap))


def resize_slices(array: np.ndarray, size: Sequence[int], mode: str) -> np.ndarray:
    """Resize the last two axes of ``[n, h, w]`` (or ``[c, n, h, w]``) to ``size``; ``mode`` is
    ``bilinear`` (antialiased when shrinking) or ``nearest``."""
    import torch
    import torch.nn.functional as F

    lead = array.shape[:-2]
    flat = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).reshape(-1, 1, *array.shape[-2:])
    out_size = (int(size[0]), int(size[1]))
    if tuple(flat.shape[-2:]) == out_size:
        return flat.numpy().reshape(*lead, *out_size)
    pieces = []
    for chunk in torch.split(flat, 64):
        if mode == "nearest":
            pieces.append(F.interpolate(chunk, size=out_size, mode="nearest-exact"))
        else:
            shrink = out_size[0] < chunk.shape[-2] or out_size[1] < chunk.shape[-1]
            pieces.append(F.interpolate(chunk, size=out_size, mode="bilinear", align_corners=False,
                                        antialias=shrink))
    return torch.cat(pieces).numpy().reshape(*lead, *out_size)


class SlicePreprocessor:
    """Volume → normalised ``[n, S, S]`` slices and back, as a :class:`GtvPlan` says."""

    def __init__(self, plan: GtvPlan):
        self.plan = plan

    def canonical(self, image: Image) -> tuple[np.ndarray, Reorientation]:
        reo = reorientation(image, self.plan.orientation)
        return reo.to_canonical(image.array), reo

    def locate(self, image: Image) -> tuple[np.ndarray, SliceRecord]:
        """The canonical volume and where the body is in it."""
        volume, reo = self.canonical(image)
        box = body_box(body_mask(volume, self.plan.body_threshold_hu, self.plan.body_erosion))
        return volume, SliceRecord(reo, tuple(int(s) for s in volume.shape), box)  # type: ignore[arg-type]

    def normalise(self, hu: np.ndarray) -> np.ndarray:
        lo, hi = self.plan.clip
        return ((np.clip(hu, lo, hi) - self.plan.mean) / max(self.plan.std, 1e-6)).astype(np.float32)

    def crop(self, volume: np.ndarray, record: SliceRecord) -> np.ndarray:
        y0, y1, x0, x1 = record.box
        return volume[..., y0:y1, x0:x1]

    def __call__(self, image: Image) -> tuple[np.ndarray, SliceRecord]:
        """Normalised slices ``[n, S, S]`` (float32) and the record to restore outputs."""
        volume, record = self.locate(image)
        return self.slices_of(volume, record), record

    def slices_of(self, volume: np.ndarray, record: SliceRecord) -> np.ndarray:
        size = (self.plan.image_size, self.plan.image_size)
        return resize_slices(self.normalise(self.crop(volume, record)), size, "bilinear")

    def label_slices(self, label: np.ndarray, record: SliceRecord, value: int = 1) -> np.ndarray:
        """A label map on the input grid as ``[n, S, S]`` binary slices of ``value`` (area-weighted, so a
        small GTV shrunk to few pixels is not lost by nearest-neighbour sampling)."""
        canonical = record.reorientation.to_canonical(label)
        mask = (self.crop(canonical, record) == value).astype(np.float32)
        size = (self.plan.image_size, self.plan.image_size)
        return (resize_slices(mask, size, "bilinear") >= 0.5).astype(np.uint8)

    def _uncrop(self, slices: np.ndarray, record: SliceRecord, mode: str, dtype: Any) -> np.ndarray:
        y0, y1, x0, x1 = record.box
        restored = resize_slices(slices, (y1 - y0, x1 - x0), mode)
        full = np.zeros((*slices.shape[:-3], *record.canonical_shape), dtype=dtype)
        full[..., y0:y1, x0:x1] = restored
        return record.reorientation.to_input(full)

    def restore_probabilities(self, slices: np.ndarray, record: SliceRecord) -> np.ndarray:
        """``[(c,) n, S, S]`` probabilities (or heat maps) → the input grid, bilinear; 0 outside the box."""
        return self._uncrop(slices, record, "bilinear", np.float32)

    def restore_labels(self, slices: np.ndarray, record: SliceRecord) -> np.ndarray:
        """``[n, S, S]`` labels → the input grid by nearest neighbour; 0 outside the box."""
        return np.rint(self._uncrop(slices, record, "nearest", np.float32)).astype(np.uint8)


def plan_from_cases(boxes: Sequence[tuple[int, int, int, int]], spacings: Sequence[float],
                    samples: Sequence[np.ndarray], labels: Mapping[str, int], image_size: int | None = None,
                    threshold: float = 0.5) -> GtvPlan:
    """A plan from the training volumes: slice size from the body boxes, z-score statistics of the
    clipped HU inside the bodies (``samples``: a subsample of body voxels per volume)."""
    sides = [max(y1 - y0, x1 - x0) for y0, y1, x0, x1 in boxes]
    values = np.clip(np.concatenate([np.asarray(s, dtype=np.float64).ravel() for s in samples]), *CT_CLIP) \
        if samples else np.zeros(1)
    size = plan_image_size(sides, image_size)
    plan = GtvPlan(image_size=size, labels=dict(labels), mean=float(values.mean()),
                   std=float(values.std()) or 1.0, threshold=float(threshold),
                   native_box_size=float(np.median(sides)) if sides else None,
                   inplane_spacing_mm=float(np.median(spacings)) if len(spacings) else None)
    log.info("GTV plan: slices %d² (median body box %s px), HU clip %s, mean %.1f, SD %.1f", size,
             plan.native_box_size, plan.clip, plan.mean, plan.std)
    return plan


def body_sample(volume: np.ndarray, mask: np.ndarray, rng: np.random.Generator, n: int = 20000) -> np.ndarray:
    """Up to ``n`` random body voxels (for the dataset's intensity statistics)."""
    values = volume[mask]
    if values.size > n:
        values = values[rng.choice(values.size, n, replace=False)]
    return values.astype(np.float32)
