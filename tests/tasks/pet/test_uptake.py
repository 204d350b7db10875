"""SUVmax, SUVmean, SUVpeak, MTV and TLG of a segmented tumour, against values known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from engine.tasks.pet.uptake import PEAK_SPHERE_RADIUS_MM, sphere_kernel, uptake_figures


def test_peak_sphere_is_one_millilitre():
    assert 4.0 / 3.0 * np.pi * PEAK_SPHERE_RADIUS_MM ** 3 == pytest.approx(1000.0)
    kernel = sphere_kernel((1.0, 1.0, 1.0))
    assert kernel.sum() == pytest.approx(1.0)
    assert np.count_nonzero(kernel) == pytest.approx(1000, rel=0.05)   # voxels of 1 mm³ in 1 cm³


def test_figures_of_a_uniform_tumour_with_a_hot_spot():
    suv = np.ones((40, 40, 40), dtype=np.float32)
    mask = np.zeros(suv.shape, dtype=bool)
    mask[10:30, 10:30, 10:30] = True
    suv[mask] = 6.0
    suv[20, 20, 20] = 30.0                  # one hot voxel: SUVmax, but not SUVpeak
    figures = uptake_figures(suv, mask, (2.0, 2.0, 2.0))
    mtv = 20 ** 3 * 8 / 1000.0
    assert figures.mtv_ml == pytest.approx(mtv)
    assert figures.suv_max == pytest.approx(30.0)
    assert figures.suv_mean == pytest.approx((8000 * 6.0 + 24.0) / 8000)
    assert figures.tlg == pytest.approx(figures.suv_mean * mtv)
    n = np.count_nonzero(sphere_kernel((2.0, 2.0, 2.0)))
    assert figures.suv_peak == pytest.approx(6.0 + 24.0 / n, rel=1e-6)   # the sphere around the hot voxel


def test_peak_sphere_centres_lie_in_the_tumour_but_may_reach_outside():
    suv = np.zeros((20, 20, 20), dtype=np.float32)
    mask = np.zeros(suv.shape, dtype=bool)
    mask[10, 10, 10] = True
    suv[10, 10, 10] = 4.0
    suv[10, 10, 12] = 100.0                 # next to the tumour: in the sphere, but not a centre
    figures = uptake_figures(suv, mask, (2.0, 2.0, 2.0))
    kernel = sphere_kernel((2.0, 2.0, 2.0))
    assert figures.suv_peak == pytest.approx(4.0 * kernel[3, 3, 3] + 100.0 * kernel[3, 3, 4], rel=1e-6)
    assert figures.suv_max == 4.0


def test_empty_mask_has_no_figures():
    assert uptake_figures(np.ones((5, 5, 5)), np.zeros((5, 5, 5), bool), (2.0, 2.0, 2.0)) is None
