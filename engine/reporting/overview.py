"""One-page PNG overview of a result: three orthogonal planes with segment contours and the Grad-CAM
overlay, a legend with segment volumes, and the stage probabilities.

Meant for reports, CLI runs and quick review outside Slicer; it uses matplotlib's object API
(``Figure`` + Agg canvas), never ``pyplot``, so it opens no window and is safe in worker threads.
"""

from __future__ import annotations

import logging
import os
import tempfile
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from engine.utils.atomic import apply_umask
from engine.io.image import Image
from engine.io.segmentation_nrrd import SegmentInfo

log = logging.getLogger(__name__)

#: Soft-tissue window for CT (level, width) in HU.
CT_WINDOW = (40.0, 400.0)
#: Percentiles that set the display range of non-CT images.
PERCENTILE_WINDOW = (1.0, 99.0)
HEATMAP_CMAP = "jet"
HEATMAP_ALPHA = 0.45
#: Heat-map values at or below this are not drawn, so the anatomy stays visible.
HEATMAP_THRESHOLD = 0.05
CONTOUR_WIDTH = 2.0
BAR_COLOR = "#9e9e9e"
PREDICTED_BAR_COLOR = "#d62728"
WARNING_COLOR = "#d62728"
WARNING_FONTSIZE = 10
#: Height of one line of warning text, inches; the figure grows by that much per line.
WARNING_LINE_IN = 0.2
DPI = 100


@dataclass
class _Plane:
    """A 2D cut shown with row 0 at the bottom, with its physical size for an undistorted aspect."""

    title: str
    image: np.ndarray
    labels: np.ndarray
    heatmap: np.ndarray | None
    width_mm: float
    height_mm: float


def render_overview(
    image: Image,
    labels: Image,
    heatmap: np.ndarray | None,
    segments: Sequence[SegmentInfo],
    probabilities: Mapping[str, float] | None,
    path: str | os.PathLike,
    focus_label: int | None = 1,
    title: str = "",
    warnings: Sequence[str] = (),
) -> Path:
    """Write a PNG with axial, coronal and sagittal planes through the focus structure.

    Planes pass through the centre of mass of ``focus_label`` (else of all labels, else the volume
    centre). ``heatmap`` (0..1, the image's shape) is drawn where it exceeds
    :data:`HEATMAP_THRESHOLD`. ``probabilities`` maps stage name → probability; the most likely stage
    is highlighted. ``warnings`` are printed in red under the title, so that a figure looked at on
    its own still says when its result is unreliable. The file is written atomically.
    """
    path = Path(path)
    if labels.shape != image.shape:
        raise ValueError(f"labels shape {labels.shape} differs from image shape {image.shape}")
    if heatmap is not None and tuple(np.shape(heatmap)) != image.shape:
        raise ValueError(f"heat map shape {np.shape(heatmap)} differs from image shape {image.shape}")

    volume, label_map, heat = _orient_lps(image, labels, heatmap)
    centre = _plane_centre(label_map.array, focus_label)
    planes = _cut_planes(volume, label_map.array, heat, centre)
    window = _display_range(volume)

    n_panels = 3 + (probabilities is not None)
    width_in = 4.2 * n_panels
    lines = _warning_lines(warnings, width_in)
    extra_in = len(lines) * WARNING_LINE_IN + 0.1 * bool(lines)
    height_in = 5.0 + extra_in
    title_in = 0.7 if title else 0.4  # space above the planes for the title
    fig = Figure(figsize=(width_in, height_in), dpi=DPI)
    grid = fig.add_gridspec(1, n_panels, width_ratios=[1.0] * 3 + [0.8] * (probabilities is not None),
                            left=0.03, right=0.98, top=1.0 - (title_in + extra_in) / height_in,
                            bottom=1.0 / height_in, wspace=0.18)
    for column, plane in enumerate(planes):
        _draw_plane(fig.add_subplot(grid[0, column]), plane, segments, window)
    if probabilities is not None:
        _draw_probabilities(fig.add_subplot(grid[0, 3]), probabilities)
    _draw_legend(fig, label_map, segments)
    if title:
        fig.suptitle(title, fontsize=13)
    if lines:
        fig.text(0.5, 1.0 - (title_in - 0.25) / height_in, "\n".join(lines), color=WARNING_COLOR, ha="center",
                 va="top", fontsize=WARNING_FONTSIZE, linespacing=1.3)

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=DPI)
        apply_umask(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info("wrote overview %s (planes through voxel z=%d y=%d x=%d)", path, *centre)
    return path


def _warning_lines(warnings: Sequence[str], width_in: float) -> list[str]:
    """Each warning as "Warning: ..." wrapped to the figure's width (about 12 characters an inch at
    :data:`WARNING_FONTSIZE`)."""
    width = max(40, int(width_in * 12))
    return [line for w in warnings for line in textwrap.wrap(f"Warning: {w}", width)]


def _orient_lps(image: Image, labels: Image, heatmap: np.ndarray | None) -> tuple[Image, Image, np.ndarray | None]:
    """Reorder/flip axes so that x → patient left, y → posterior, z → superior (DICOMOrient "LPS"),
    whatever the scan's storage order; then every view can be drawn the same way. A volume stored in
    that order already (identity direction, most CTs) is kept as it is: reorienting three whole volumes
    only to copy them took a quarter of the figure's time."""

    def orient(volume: Image, dtype) -> Image:
        if np.array_equal(np.asarray(volume.direction, float).reshape(3, 3), np.eye(3)):
            return volume.with_array(np.asarray(volume.array, dtype or volume.array.dtype))
        oriented = sitk.DICOMOrient(volume.to_sitk(), "LPS")
        return Image.from_sitk(oriented, dtype=dtype, modality=volume.modality)

    heat = None
    if heatmap is not None:
        heat_image = image.with_array(np.clip(np.asarray(heatmap, np.float32), 0.0, 1.0))
        heat = orient(heat_image, np.float32).array
    return orient(image, np.float32), orient(labels, None), heat


def _plane_centre(label_array: np.ndarray, focus_label: int | None) -> tuple[int, int, int]:
    if focus_label is not None and np.any(label_array == focus_label):
        where = np.argwhere(label_array == focus_label)
    elif np.any(label_array > 0):
        if focus_label is not None:
            log.info("label %s is absent; centring the overview on all labelled voxels", focus_label)
        where = np.argwhere(label_array > 0)
    else:
        return tuple(s // 2 for s in label_array.shape)  # type: ignore[return-value]
    return tuple(int(np.rint(c)) for c in where.mean(axis=0))  # type: ignore[return-value]


def _cut_planes(volume: Image, labels: np.ndarray, heat: np.ndarray | None,
                centre: tuple[int, int, int]) -> list[_Plane]:
    z, y, x = centre
    sz, sy, sx = volume.spacing
    nz, ny, nx = volume.shape
    a = volume.array

    def cut(index: tuple, flip_rows: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        parts = (a[index], labels[index], None if heat is None else heat[index])
        return tuple(p if p is None or not flip_rows else p[::-1] for p in parts)  # type: ignore[return-value]

    # axial rows run anterior→posterior: flip so anterior is at the top with row 0 drawn at the bottom
    axial = cut((z, slice(None), slice(None)), flip_rows=True)
    coronal = cut((slice(None), y, slice(None)), flip_rows=False)
    sagittal = cut((slice(None), slice(None), x), flip_rows=False)
    return [
        _Plane(f"Axial (slice {z + 1}/{nz})", *axial, nx * sx, ny * sy),
        _Plane(f"Coronal (row {y + 1}/{ny})", *coronal, nx * sx, nz * sz),
        _Plane(f"Sagittal (column {x + 1}/{nx})", *sagittal, ny * sy, nz * sz),
    ]


def _display_range(volume: Image) -> tuple[float, float]:
    if (volume.modality or "").upper() == "CT":
        level, width = CT_WINDOW
        return level - width / 2, level + width / 2
    low, high = np.percentile(volume.array, PERCENTILE_WINDOW)
    return float(low), float(max(high, low + 1e-6))


def _draw_plane(ax, plane: _Plane, segments: Sequence[SegmentInfo], window: tuple[float, float]) -> None:
    extent = (0.0, plane.width_mm, 0.0, plane.height_mm)  # mm, so the aspect ratio is physical
    style = {"origin": "lower", "extent": extent, "interpolation": "nearest"}
    ax.imshow(plane.image, cmap="gray", vmin=window[0], vmax=window[1], **style)
    if plane.heatmap is not None:
        heat = np.ma.masked_less_equal(plane.heatmap, HEATMAP_THRESHOLD)
        if heat.count():
            ax.imshow(heat, cmap=HEATMAP_CMAP, vmin=0.0, vmax=1.0, alpha=HEATMAP_ALPHA, **style)
    for segment in segments:
        mask = plane.labels == segment.value
        if mask.any():
            ax.contour(mask.astype(np.float32), levels=[0.5], colors=[segment.color], linewidths=CONTOUR_WIDTH,
                       origin="lower", extent=extent)
    ax.set_aspect("equal")
    ax.set_title(plane.title, fontsize=10)
    ax.set_axis_off()


def _draw_probabilities(ax, probabilities: Mapping[str, float]) -> None:
    names = list(probabilities)
    values = np.asarray([float(probabilities[n]) for n in names])
    predicted = int(np.argmax(values)) if len(values) else -1
    colors = [PREDICTED_BAR_COLOR if i == predicted else BAR_COLOR for i in range(len(names))]
    positions = np.arange(len(names))  # numeric positions: names like "T1" must not be parsed as dates
    bars = ax.bar(positions, values, color=colors)
    ax.set_xticks(positions, names)
    for bar, value in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, value + 0.02, f"{value:.0%}", ha="center", fontsize=9)
    ax.set_ylim(0.0, 1.1)
    ax.set_ylabel("probability")
    heading = f"Predicted {names[predicted]}" if predicted >= 0 else "Stage probabilities"
    ax.set_title(heading, fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)


def _draw_legend(fig: Figure, labels: Image, segments: Sequence[SegmentInfo]) -> None:
    if not segments:
        return
    voxel_cm3 = labels.voxel_volume_mm3 / 1000.0
    handles = [
        Line2D([0], [0], color=s.color, linewidth=CONTOUR_WIDTH + 1,
               label=f"{s.name}: {np.count_nonzero(labels.array == s.value) * voxel_cm3:.1f} cm³")
        for s in segments
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False, fontsize=10)
