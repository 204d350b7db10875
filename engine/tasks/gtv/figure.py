"""The GTV task's overview figure: three planes through the predicted GTV (contour + Grad-CAM) and the
slice classifier's probability curve, which shows at a glance which slices the cascade segmented.

matplotlib's object API (``Figure`` + Agg canvas), never ``pyplot``: no window, safe in threads.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from engine.io.image import Image
from engine.preprocessing.orientation import reorientation
from engine.utils.atomic import atomic_write_bytes

CT_WINDOW = (-160.0, 240.0)
HEAT_MIN = 0.05


def _centre(labels: np.ndarray, probabilities: np.ndarray) -> tuple[int, int, int]:
    """The GTV's centre (the axial cut on its largest slice), else the most probable slice's centre."""
    if labels.any():
        z = int(np.argmax(labels.reshape(labels.shape[0], -1).sum(1)))
        ys, xs = np.nonzero(labels[z])
        return z, int(np.median(ys)), int(np.median(xs))
    z = int(np.argmax(probabilities)) if probabilities.size else labels.shape[0] // 2
    return z, labels.shape[1] // 2, labels.shape[2] // 2


def _plane(ax, image: np.ndarray, labels: np.ndarray, heat: np.ndarray | None, extent: tuple, title: str) -> None:
    style = {"origin": "lower", "extent": extent, "interpolation": "nearest"}
    ax.imshow(image, cmap="gray", vmin=CT_WINDOW[0], vmax=CT_WINDOW[1], **style)
    if heat is not None:
        masked = np.ma.masked_less_equal(heat, HEAT_MIN)
        if masked.count():
            ax.imshow(masked, cmap="jet", vmin=0.0, vmax=1.0, alpha=0.4, **style)
    if labels.any():
        ax.contour(labels.astype(float), levels=[0.5], colors=["#e62929"], linewidths=1.5, origin="lower",
                   extent=extent)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def _curve(ax, probabilities: Sequence[float], kept: Sequence[int], threshold: float, z: int | None) -> None:
    p = np.asarray(probabilities, dtype=float)
    idx = np.arange(p.size)
    ax.plot(idx, p, color="#1f77b4", lw=1.2)
    ax.axhline(threshold, color="#d62728", ls="--", lw=1.0, label=f"threshold {threshold:g}")
    if len(kept):
        ax.scatter(kept, p[list(kept)], s=8, color="#d62728", zorder=3, label="segmented")
    if z is not None:
        ax.axvline(z, color="0.5", lw=0.8)
    ax.set_xlim(-0.5, max(p.size - 0.5, 0.5))
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("slice (input order)")
    ax.set_ylabel("P(GTV on slice)")
    ax.set_title("Slice classifier", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")


def render_gtv_overview(image: Image, labels: Image, heatmap: Image | None, probabilities: Sequence[float],
                        kept: Sequence[int], threshold: float, path: str | Path, title: str = "") -> Path:
    """Write the overview PNG (atomically): axial, coronal and sagittal planes in LPS display order
    through the GTV, and the per-slice probability curve with the threshold and the segmented slices."""
    reo = reorientation(image, "LPS")
    vol, lab = reo.to_canonical(image.array), reo.to_canonical(labels.array)
    heat = reo.to_canonical(heatmap.array) if heatmap is not None else None
    sz, sy, sx = (image.spacing[a] for a in reo.axes)
    nz, ny, nx = vol.shape
    order = np.arange(nz)[::-1] if reo.flips[0] and reo.axes[0] == 0 else np.arange(nz)
    canonical_probs = np.asarray(probabilities, dtype=float)[np.argsort(order)] if len(probabilities) == nz \
        else np.zeros(nz)
    z, y, x = _centre(lab, canonical_probs)
    cut = lambda a, ix, flip: None if a is None else (a[ix][::-1] if flip else a[ix])
    fig = Figure(figsize=(17.0, 4.6), dpi=100)
    grid = fig.add_gridspec(1, 4, width_ratios=[1.0, 1.0, 1.0, 1.4])
    planes = [((z, slice(None), slice(None)), True, (0, nx * sx, 0, ny * sy), f"Axial (slice {int(order[z]) + 1}/{nz})"),
              ((slice(None), y, slice(None)), False, (0, nx * sx, 0, nz * sz), "Coronal"),
              ((slice(None), slice(None), x), False, (0, ny * sy, 0, nz * sz), "Sagittal")]
    for i, (ix, flip, extent, name) in enumerate(planes):
        _plane(fig.add_subplot(grid[0, i]), cut(vol, ix, flip), cut(lab, ix, flip), cut(heat, ix, flip), extent, name)
    _curve(fig.add_subplot(grid[0, 3]), probabilities, kept, threshold, int(order[z]) if nz else None)
    if title:
        fig.suptitle(title, fontsize=10)
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path
