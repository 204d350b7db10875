"""Plan-driven preprocessing with a recorded, exact inverse.

Forward: reorder the voxels into the plan's orientation → crop to the patient → resample to the
plan's spacing (image B-spline, label nearest) → normalise → pad up to the patch size. Every step
is recorded in a :class:`PreprocessRecord`, so
:meth:`Preprocessor.restore_labels` / :meth:`Preprocessor.restore_probabilities` put a prediction
back on the original voxel grid: same shape, spacing, origin and direction as the input.

Everything between the reordering and its inverse happens on the canonical grid, so the network's
input, and hence every output, is the same whichever way the file stored its voxels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import SimpleITK as sitk

from engine.io.image import Image
from engine.planning.planner import Configuration, Plan
from engine.preprocessing import crop as cropping
from engine.preprocessing.normalize import normalize
from engine.preprocessing.orientation import Reorientation, reorientation
from engine.preprocessing.torch_resample import resample_array
from engine.preprocessing.resample import (grid_origin, is_on_grid, resample_to_grid, resampled_shape,
                                          spline_coefficients)


#: How images can be resampled (see :class:`Preprocessor`).
RESAMPLERS = ("sitk", "torch")
#: Cubic B-spline along every axis: the interpolation of SimpleITK's path, so both give the same input.
IMAGE_ORDERS = (3, 3, 3)


@dataclass
class PreprocessRecord:
    """What was done to one image, enough to undo it.

    ``original_*``, ``origin`` and ``direction`` describe the uncropped image *in the canonical
    orientation*, the grid every other field refers to; ``reorientation`` holds the input's own grid
    and how its voxels were reordered (None: the input was already canonical, or an older record).
    """

    original_shape: list[int]
    original_spacing: list[float]
    origin: list[float]
    direction: list[float]
    crop_box: list[list[int]]
    target_spacing: list[float]
    resampled_shape: list[int]
    pads: list[list[int]]
    reorientation: Reorientation | None = None
    #: the sub-box [[z0, z1), [y0, y1), [x0, x1)] of the resampled grid the arrays cover (a cascade's
    #: region of interest); None: all of it
    roi: list[list[int]] | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def cropped_shape(self) -> list[int]:
        return [b - a for a, b in self.crop_box]

    @property
    def grid_shape(self) -> list[int]:
        """Shape of the arrays before padding: the resampled crop, or its region of interest."""
        return self.resampled_shape if self.roi is None else [b - a for a, b in self.roi]

    def grid_origin(self) -> tuple[float, float, float]:
        """Physical position of the first (unpadded) voxel of the arrays."""
        origin = self.cropped_origin()
        if self.roi is None:
            return origin
        start_xyz = np.array([a for a, _ in self.roi], dtype=np.float64)[::-1]
        direction = np.asarray(self.direction).reshape(3, 3)
        offset = direction @ (start_xyz * np.asarray(self.target_spacing)[::-1])
        return tuple(float(v) for v in np.asarray(origin) + offset)  # type: ignore[return-value]

    def restored_box(self) -> list[list[int]]:
        """The box of the input's (canonical) voxels a restored prediction covers: the crop box, or
        the voxels whose nearest resampled voxel lies in the region of interest."""
        if self.roi is None:
            return [list(b) for b in self.crop_box]
        box = []
        for (c0, c1), (a, b), s, t in zip(self.crop_box, self.roi, self.original_spacing, self.target_spacing):
            first = max(0, int(np.ceil((a - 0.5) * t / s - 1e-9)))
            last = min(c1 - c0, int(np.ceil((b - 0.5) * t / s - 1e-9)))
            box.append([c0 + first, c0 + max(first, last)])
        return box

    def cropped_origin(self) -> tuple[float, float, float]:
        """Physical position of the first voxel of the crop box."""
        direction = np.asarray(self.direction).reshape(3, 3)
        start_xyz = np.array([a for a, _ in self.crop_box], dtype=np.float64)[::-1]
        spacing_xyz = np.asarray(self.original_spacing)[::-1]
        return tuple(np.asarray(self.origin) + direction @ (start_xyz * spacing_xyz))  # type: ignore[return-value]


@dataclass
class GridIndependentWork:
    """What preprocessing computes from the input alone — the foreground box and each channel's B-spline
    coefficients (by channel and crop box) — kept so that a second configuration of the same image
    does not repeat it."""

    foreground_box: list[list[int]] | None = None
    #: the channels and label in the canonical orientation, and how they were reordered
    canonical: tuple[list[Image], Image | None, Reorientation] | None = None
    coefficients: dict[tuple, sitk.Image] = field(default_factory=dict)


@dataclass
class PreprocessedCase:
    """Network-ready arrays: ``image`` is (C, z, y, x) float32, ``label`` (z, y, x) uint8 or None."""

    image: np.ndarray
    label: np.ndarray | None
    record: PreprocessRecord


class Preprocessor:
    """Applies one configuration of a plan; ``crop_to_foreground`` can be turned off for patches
    that must keep the full field of view."""

    def __init__(self, plan: Plan, configuration: str | Configuration | None = None,
                 crop_to_foreground: bool = True, pad_to_patch: bool = True, resampler: str = "sitk",
                 device: str | None = None):
        """``resampler``: "sitk" (SimpleITK) or "torch" (:mod:`engine.preprocessing.torch_resample`, the
        same interpolation, on ``device``: the GPU when the model runs there)."""
        if resampler not in RESAMPLERS:
            raise ValueError(f"resampler must be one of {RESAMPLERS}, not {resampler!r}")
        self.plan = plan
        self.config = configuration if isinstance(configuration, Configuration) else \
            plan.configuration(configuration)
        self.crop_to_foreground = crop_to_foreground
        self.pad_to_patch = pad_to_patch
        self.resampler, self.device = resampler, device or "cpu"

    def __call__(self, image: Image | list[Image], label: Image | None = None, *,
                 shared: GridIndependentWork | None = None,
                 roi: Sequence[Sequence[int]] | None = None) -> PreprocessedCase:
        """``shared``: the work of an earlier configuration of the same image, reused; ``roi``: only this
        sub-box (z, y, x, of the resampled crop) is resampled and returned, the rest is background."""
        return self._run(image, label, shared if shared is not None else GridIndependentWork(), roi)

    def resampled_shape(self, record: PreprocessRecord) -> list[int]:
        """The shape this configuration resamples ``record``'s crop box to (what a region is a box of)."""
        return resampled_shape(record.cropped_shape, record.original_spacing, self.config.spacing)

    def _run(self, image: Image | list[Image], label: Image | None,
             shared: GridIndependentWork, roi: Sequence[Sequence[int]] | None = None) -> PreprocessedCase:
        if self.config.dims != 3:
            raise ValueError("Preprocessor handles 3D configurations; 2D pipelines slice the volume "
                             "after 3D preprocessing at their in-plane spacing.")
        channels, label, reoriented = self._canonical(image, label, shared)
        ref = channels[0]
        if not self.crop_to_foreground:
            box = [[0, n] for n in ref.shape]
        elif shared.foreground_box is None:
            box = shared.foreground_box = cropping.foreground_box(ref.array,
                                                                  ref.modality or self.plan.modality)
        else:
            box = shared.foreground_box
        target = list(self.config.spacing)
        new_shape = resampled_shape(cropping.crop(ref.array, box).shape, ref.spacing, target)
        roi = _checked_roi(roi, new_shape)
        grid = new_shape if roi is None else [b - a for a, b in roi]
        pads = cropping.pad_amounts(grid, self.config.patch_size if self.pad_to_patch else grid)
        record = PreprocessRecord(list(ref.shape), list(ref.spacing), list(ref.origin),
                                  ref.direction.ravel().tolist(), box, target, new_shape, pads,
                                  None if reoriented.is_identity else reoriented, roi)
        arrays = []
        for index, ch in enumerate(channels):
            cropped = self._cropped_image(ch, record)
            start = [0, 0, 0] if roi is None else [a for a, _ in roi]
            if self.resampler == "torch":
                resampled = resample_array(cropped.array, cropped.spacing, grid, target, IMAGE_ORDERS, start,
                                           self.device).cpu().numpy()
            else:
                origin = None if roi is None else grid_origin(cropped, start, target)
                resampled = self._resampled(cropped, grid, target, shared.coefficients,
                                            (index, tuple(map(tuple, box))), origin).array
            mask = resampled > cropping.CT_BODY_THRESHOLD_HU if self.plan.normalization.scheme == "ct" \
                else resampled > resampled.min()
            normed = normalize(resampled, self.plan.normalization, mask)
            arrays.append(cropping.pad(normed, pads, value=float(normed.min())))
        lab = None
        if label is not None:
            cropped_label = self._cropped_image(label, record)
            origin = None if roi is None else grid_origin(cropped_label, [a for a, _ in roi], target)
            lab = resample_to_grid(cropped_label, grid, target, is_label=True, origin=origin).array
            lab = cropping.pad(lab.astype(np.uint8), pads, value=0)
        return PreprocessedCase(np.stack(arrays).astype(np.float32), lab, record)

    def _canonical(self, image: Image | list[Image], label: Image | None, shared: GridIndependentWork
                   ) -> tuple[list[Image], Image | None, Reorientation]:
        """The channels and label with their voxels in the plan's orientation (an exact reordering,
        decided by the first channel's direction), computed once per image."""
        if shared.canonical is None or shared.canonical[2].orientation != self.plan.orientation.upper():
            channels = image if isinstance(image, list) else [image]
            reoriented = reorientation(channels[0], self.plan.orientation)
            shared.canonical = ([reoriented.canonical_image(ch) for ch in channels],
                                None if label is None else reoriented.canonical_image(label), reoriented)
        return shared.canonical

    @staticmethod
    def _resampled(cropped: Image, shape: list[int], spacing: list[float],
                   coefficients: dict[tuple, sitk.Image], key: tuple,
                   origin: Sequence[float] | None = None) -> Image:
        if origin is None and is_on_grid(cropped, shape, spacing):  # a copy: no coefficients needed
            return resample_to_grid(cropped, shape, spacing)
        if key not in coefficients:
            coefficients[key] = spline_coefficients(cropped)
        return resample_to_grid(cropped, shape, spacing, coefficients=coefficients[key], origin=origin)

    @staticmethod
    def _cropped_image(image: Image, record: PreprocessRecord) -> Image:
        return Image(cropping.crop(image.array, record.crop_box), image.spacing, record.cropped_origin(),
                     image.direction, image.modality)

    # --- inverse --------------------------------------------------------------------------------
    @staticmethod
    def restore_labels(labels: np.ndarray, record: PreprocessRecord, device: str | None = None) -> np.ndarray:
        """(z, y, x) labels on the preprocessed grid → labels on the input's grid (nearest); with a
        ``device``, resampled there by torch (the same voxels)."""
        restored = Preprocessor._restore(labels[None].astype(np.uint8), record, is_label=True, device=device)[0]
        return _to_input(restored, record)

    @staticmethod
    def restore_probabilities(probs: np.ndarray, record: PreprocessRecord, background_channel: bool = True
                              ) -> np.ndarray:
        """(C, z, y, x) class probabilities → (C, Z, Y, X) on the input's grid (linear), outside the
        crop box the background channel is 1 and the others 0."""
        out = Preprocessor._restore(probs.astype(np.float32), record, is_label=False)
        if background_channel:
            inside = np.zeros(record.original_shape, dtype=bool)
            inside[tuple(slice(a, b) for a, b in record.restored_box())] = True
            out[0][~inside] = 1.0
        return _to_input(out, record)

    @staticmethod
    def restore_map(values: np.ndarray, record: PreprocessRecord, device: str | None = None) -> np.ndarray:
        """(z, y, x) values on the preprocessed grid (a heat map) → the input's grid (linear)."""
        return _to_input(Preprocessor._restore(values[None], record, is_label=False, device=device)[0], record)

    @staticmethod
    def _restore(arrays: np.ndarray, record: PreprocessRecord, is_label: bool,
                 device: str | None = None) -> np.ndarray:
        """Undo padding, resampling and cropping: arrays on the canonical uncropped grid."""
        if list(arrays.shape[1:]) != [r + b + a for r, (b, a) in zip(record.grid_shape, record.pads)]:
            raise ValueError(f"prediction shape {arrays.shape[1:]} does not match the preprocessed shape "
                             f"{record.grid_shape} + padding {record.pads}")
        unpadded = cropping.unpad(arrays, record.pads)
        direction = np.asarray(record.direction).reshape(3, 3)
        box = record.restored_box()
        start_xyz = np.array([a for a, _ in box], dtype=np.float64)[::-1]
        target_origin = np.asarray(record.origin) + direction @ (start_xyz * np.asarray(record.original_spacing)[::-1])
        restored = []
        if device is not None:
            start = [a - c for (a, _), (c, _) in zip(box, record.crop_box)]
            first = [0, 0, 0] if record.roi is None else [a for a, _ in record.roi]
            for channel in unpadded:
                back = resample_array(channel, record.target_spacing, [b - a for a, b in box], record.original_spacing,
                                      (0, 0, 0) if is_label else (1, 1, 1), start, device, first)
                restored.append(back.cpu().numpy())
            return cropping.uncrop(np.stack(restored).astype(arrays.dtype), box, record.original_shape, fill=0)
        for channel in unpadded:
            img = Image(np.ascontiguousarray(channel), record.target_spacing, record.grid_origin(), direction)
            back = resample_to_grid(img, [b - a for a, b in box], record.original_spacing, is_label=is_label,
                                    order=None if is_label else 1,
                                    origin=None if record.roi is None else tuple(target_origin))
            restored.append(back.array)
        stacked = np.stack(restored).astype(arrays.dtype)
        return cropping.uncrop(stacked, box, record.original_shape, fill=0)

    @staticmethod
    def to_image(array: np.ndarray, record: PreprocessRecord, modality: str | None = None) -> Image:
        """Wrap a restored array (already on the input's grid) in the input's geometry."""
        if record.reorientation is not None:
            r = record.reorientation
            return Image(array, r.input_spacing, r.input_origin, np.asarray(r.input_direction).reshape(3, 3),
                         modality)
        return Image(array, record.original_spacing, record.origin,
                     np.asarray(record.direction).reshape(3, 3), modality)


def _checked_roi(roi: Sequence[Sequence[int]] | None, shape: Sequence[int]) -> list[list[int]] | None:
    """A region of interest as a list of [start, stop) within ``shape``; None when it is all of it."""
    if roi is None:
        return None
    box = [[int(a), int(b)] for a, b in roi]
    if len(box) != len(shape) or any(not 0 <= a < b <= n for (a, b), n in zip(box, shape)):
        raise ValueError(f"region of interest {box} is not a non-empty box inside the grid {list(shape)}")
    return None if all(a == 0 and b == n for (a, b), n in zip(box, shape)) else box


def _to_input(array: np.ndarray, record: PreprocessRecord) -> np.ndarray:
    """A canonical-grid array (last three axes) in the input's voxel order."""
    return array if record.reorientation is None else record.reorientation.to_input(array)


def preprocess_configurations(preprocessors: Sequence[Preprocessor], image: Image | list[Image],
                              label: Image | None = None) -> list[PreprocessedCase]:
    """One image through several preprocessors (a cascade's resolutions), computing each channel's
    foreground box and B-spline coefficients once: the same arrays as calling each preprocessor, in
    about half the time."""
    shared = GridIndependentWork()
    return [pre(image, label, shared=shared) for pre in preprocessors]
