"""The cascade's region of interest: its box is made of the whole-volume sliding windows, and the
prior computed on it equals the whole-grid prior cut to it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data.utils import dense_patch_slices

from engine.inference.roi import cascade_region, foreground_bounds, resize_region_linear, window_starts


@pytest.mark.parametrize("n, patch", [(134, 56), (188, 80), (96, 96), (50, 80), (213, 96), (57, 56)])
def test_window_starts_are_monai_sliding_window_starts(n, patch):
    slices = dense_patch_slices((max(n, patch),), (patch,), (max(1, patch // 2) if patch < n else patch,))
    assert window_starts(n, patch, 0.5) == sorted({s[0].start for s in slices})


@pytest.mark.parametrize("box", [[[0, 20], [5, 33], [7, 40]], [[13, 40], [0, 9], [30, 41]]])
def test_region_prior_equals_the_whole_grid_prior_cut_to_the_region(box):
    low = torch.rand(3, 9, 12, 15)
    shape = (40, 33, 41)
    whole = F.interpolate(low[None], size=shape, mode="trilinear", align_corners=False)[0]
    part = resize_region_linear(low, shape, box)
    expected = whole[(slice(None),) + tuple(slice(a, b) for a, b in box)]
    torch.testing.assert_close(part, expected, atol=1e-6, rtol=0)


def test_region_covers_the_foreground_margin_and_every_window_over_it():
    low = np.zeros((20, 30, 30), np.uint8)
    low[8:11, 12:15, 3:6] = 2
    shape, spacing, patch = (80, 120, 120), (2.0, 1.0, 1.0), (16, 32, 32)
    region = cascade_region(low, shape, spacing, margin_mm=(8.0, 5.0, 5.0), patch_size=patch)
    core = [[32, 44], [48, 60], [12, 24]]  # the low-resolution foreground on the full grid (×4)
    for (a, b), (c0, c1), n, p, s, m in zip(region.box, core, shape, patch, spacing, (8.0, 5.0, 5.0)):
        starts = window_starts(n, p, 0.5)
        assert a in starts and (b - p in starts or b == n)  # whole windows of the whole-volume scan
        assert a <= c0 - m / s and b >= c1 + m / s  # the margin is inside
        assert all(a <= w and w + p <= b for w in starts if w < c1 and w + p > c0)  # every window over the core
    assert region.fraction < 0.5 and not region.is_whole_grid


def test_no_low_resolution_foreground_means_the_whole_grid():
    region = cascade_region(np.zeros((5, 6, 7), np.uint8), (10, 12, 14), (1, 1, 1), (3, 3, 3), (4, 4, 4))
    assert region.is_whole_grid and region.fraction == 1.0
    assert foreground_bounds(np.zeros((3, 3, 3))) is None
