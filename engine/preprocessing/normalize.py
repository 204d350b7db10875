"""Intensity normalisation schemes recorded in the plan (see :class:`engine.planning.Normalization`)."""

from __future__ import annotations

import numpy as np

from engine.planning.planner import Normalization


def normalize(array: np.ndarray, scheme: Normalization, mask: np.ndarray | None = None) -> np.ndarray:
    """CT/SUV: clip to the dataset's foreground percentiles, z-score with dataset statistics.
    MR: per-volume z-score (over ``mask`` when given), since MR units differ between scans."""
    x = array.astype(np.float32, copy=True)
    if scheme.scheme in ("ct", "suv"):
        lo, hi = scheme.clip  # type: ignore[misc]
        np.clip(x, lo, hi, out=x)
        x -= np.float32(scheme.mean)
        x /= np.float32(scheme.std)
        return x
    if scheme.scheme == "zscore":
        values = x[mask] if mask is not None and mask.any() else x
        mean, std = float(values.mean()), float(values.std())
        x -= np.float32(mean)
        x /= np.float32(max(std, 1e-8))
        return x
    raise ValueError(f"unknown normalisation scheme '{scheme.scheme}'")
