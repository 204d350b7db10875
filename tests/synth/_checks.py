"""Independent helpers for the phantom tests (deliberately not the generators' own code)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def dilate6(mask: np.ndarray) -> np.ndarray:
    """``mask`` grown by one voxel along each axis (6-neighbourhood), by plain slicing."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    out[:, :, 1:] |= mask[:, :, :-1]
    out[:, :, :-1] |= mask[:, :, 1:]
    return out


def erode6(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` whose 6 neighbours are all in ``mask`` (the volume border counts as outside)."""
    return ~dilate6(~np.pad(mask, 1))[1:-1, 1:-1, 1:-1]


def touches6(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.any(dilate6(a) & b))


def separability_auc(values_pos: np.ndarray, values_neg: np.ndarray) -> float:
    """ROC AUC of the intensity alone, in the better direction (0.5 = useless, 1 = one threshold separates)."""
    y = np.r_[np.ones(values_pos.size), np.zeros(values_neg.size)]
    auc = float(roc_auc_score(y, np.r_[values_pos, values_neg]))
    return max(auc, 1.0 - auc)


def best_threshold_dice(image: np.ndarray, target: np.ndarray, n: int = 101) -> float:
    """Best Dice of a one-threshold segmentation (``image >= t`` or ``image <= t``) of ``target``.

    Thresholds are taken at the quantiles of the target's own values (an oracle choice per scan),
    so this is an upper bound on what thresholding the intensity alone can do.
    """
    allv = np.sort(image.ravel())
    tv = np.sort(image[target])
    n_t = tv.size
    best = 0.0
    for t in np.quantile(tv, np.linspace(0.0, 1.0, n)):
        above_all = allv.size - np.searchsorted(allv, t, "left")
        above_t = n_t - np.searchsorted(tv, t, "left")
        below_all = np.searchsorted(allv, t, "right")
        below_t = np.searchsorted(tv, t, "right")
        best = max(best, 2.0 * above_t / (above_all + n_t), 2.0 * below_t / (below_all + n_t))
    return best
