"""Knowledge-embedded ROI tokenization (nn-TransEC §3.4): a fixed-size box centred on the tumour.

The box size comes from the plan (it covers every training tumour); the centre is the geometric
centre of the tumour's bounding box in the (predicted) segmentation. Boxes may stick out of the
volume: :func:`crop_box` pads, so the crop always has the plan's size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

#: Where the box centre came from, best first.
CENTRE_SOURCES = ("tumour", "esophagus", "volume")


@dataclass(frozen=True)
class KrtBox:
    """Index box on a (z, y, x) grid: ``start`` (may be negative) and ``size``; ``source`` says what
    it was centred on."""

    start: tuple[int, int, int]
    size: tuple[int, int, int]
    centre: tuple[float, float, float]
    source: str

    @property
    def stop(self) -> tuple[int, int, int]:
        return tuple(s + n for s, n in zip(self.start, self.size))  # type: ignore[return-value]

    def contains(self, index: Sequence[float]) -> bool:
        return all(a <= i < b for a, i, b in zip(self.start, index, self.stop))


def bbox_centre(mask: np.ndarray) -> tuple[float, float, float] | None:
    """Geometric centre of the mask's bounding box (paper: "centre of the EC's bounding box")."""
    if not mask.any():
        return None
    centre = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.nonzero(mask.any(axis=other))[0]
        centre.append((idx[0] + idx[-1]) / 2.0)
    return tuple(centre)  # type: ignore[return-value]


def box_around(centre: Sequence[float], size: Sequence[int], source: str) -> KrtBox:
    start = tuple(int(np.floor(c + 0.5 - n / 2.0)) for c, n in zip(centre, size))
    return KrtBox(start, tuple(int(n) for n in size), tuple(float(c) for c in centre), source)  # type: ignore[arg-type]


def krt_box(labels: np.ndarray, size: Sequence[int], tumour_label: int = 1,
            fallback_label: int | None = None) -> KrtBox:
    """Box of ``size`` centred on the tumour; without tumour on ``fallback_label`` (the organ it grows
    in), else on the volume centre. The caller reports the fallback (``box.source``)."""
    centre = bbox_centre(labels == tumour_label)
    if centre is not None:
        return box_around(centre, size, "tumour")
    if fallback_label is not None:
        centre = bbox_centre(labels == fallback_label)
        if centre is not None:
            return box_around(centre, size, "esophagus")
    return box_around([(n - 1) / 2.0 for n in labels.shape], size, "volume")


def crop_box(array: np.ndarray, box: KrtBox, pad_value: float | Sequence[float] = 0.0) -> np.ndarray:
    """Crop the trailing three axes to ``box``, padding outside the volume with ``pad_value`` (one per
    leading channel, or one for all)."""
    lead = array.shape[:-3]
    out = np.empty(lead + tuple(box.size), dtype=array.dtype)
    values = np.broadcast_to(np.asarray(pad_value, dtype=array.dtype), lead if lead else ())
    if lead:
        out[...] = values.reshape(lead + (1, 1, 1))
    else:
        out[...] = values
    src, dst = [], []
    for start, n, full in zip(box.start, box.size, array.shape[-3:]):
        a, b = max(start, 0), min(start + n, full)
        if b <= a:
            return out
        src.append(slice(a, b))
        dst.append(slice(a - start, b - start))
    out[(Ellipsis, *dst)] = array[(Ellipsis, *src)]
    return out

