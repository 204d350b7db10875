"""Preprocessing a region of interest: the same voxels as preprocessing everything and cutting the
region out, and an inverse that puts a region's prediction where the whole grid's would go."""

from __future__ import annotations

import numpy as np
import pytest

from engine.io.image import Image
from engine.planning.planner import Configuration, Normalization, Plan, network_topology
from engine.preprocessing import Preprocessor
from engine.preprocessing.crop import pad, unpad
from engine.preprocessing.pipeline import GridIndependentWork


def _oblique_ct(shape=(30, 40, 44), spacing=(2.5, 0.8, 0.9)) -> tuple[Image, Image]:
    rng = np.random.default_rng(7)
    a = np.full(shape, -1000.0, np.float32)
    a[3:27, 5:35, 4:41] = 40 + rng.normal(0, 30, (24, 30, 37))
    lab = np.zeros(shape, np.uint8)
    lab[9:21, 12:27, 14:33] = 1
    c, s = np.cos(0.4), np.sin(0.4)
    d = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    return Image(a, spacing, (3.0, -12.5, 40.0), d, "CT"), Image(lab, spacing, (3.0, -12.5, 40.0), d)


def _plan(spacing=(2.0, 1.1, 1.3), patch=(8, 16, 16)) -> Plan:
    topo, patch = network_topology(list(patch), list(spacing), 64)
    cfg = Configuration("3d_fullres", 3, list(spacing), [30, 30, 30], patch, 2, topo)
    return Plan("esophagus", "t", "CT", {"background": 0, "a": 1}, {"3d_fullres": cfg},
                Normalization("ct", [-1000.0, 300.0], -300.0, 400.0))


ROI = [[4, 30], [3, 19], [6, 24]]


def _cut(array: np.ndarray, record, box) -> np.ndarray:
    return unpad(array, record.pads)[(Ellipsis,) + tuple(slice(a, b) for a, b in box)]


def test_region_holds_the_whole_grids_voxels():
    image, label = _oblique_ct()
    pre, shared = Preprocessor(_plan()), GridIndependentWork()
    whole = pre(image, label, shared=shared)
    part = pre(image, label, shared=shared, roi=ROI)
    assert part.record.roi == ROI and part.record.grid_shape == [26, 16, 18]
    np.testing.assert_allclose(unpad(part.image, part.record.pads), _cut(whole.image, whole.record, ROI), atol=1e-4)
    np.testing.assert_array_equal(unpad(part.label, part.record.pads), _cut(whole.label, whole.record, ROI))
    # the region's first voxel sits where the whole grid's voxel ROI[.][0] does
    w = np.asarray(whole.record.grid_origin())
    step = np.asarray(whole.record.direction).reshape(3, 3) @ (np.array([a for a, _ in ROI])[::-1] * [1.3, 1.1, 2.0])
    np.testing.assert_allclose(part.record.grid_origin(), w + step, atol=1e-6)


def test_region_prediction_restores_like_the_whole_grids():
    image, _ = _oblique_ct()
    pre = Preprocessor(_plan())
    whole, part = pre(image), pre(image, roi=ROI)
    grid = np.zeros(whole.record.resampled_shape, np.uint8)
    inner = tuple(slice(a + 2, b - 2) for a, b in ROI)
    grid[inner] = 1 + (np.indices(grid[inner].shape).sum(0) % 3).astype(np.uint8)
    expected = Preprocessor.restore_labels(pad(grid, whole.record.pads), whole.record)
    region_labels = grid[tuple(slice(a, b) for a, b in ROI)]
    got = Preprocessor.restore_labels(pad(region_labels, part.record.pads), part.record)
    assert got.shape == image.shape and (expected > 0).sum() > 500
    np.testing.assert_array_equal(got, expected)
    cam = np.zeros(part.image.shape[1:], np.float32)
    restored = Preprocessor.restore_map(cam + 1.0, part.record)
    box = part.record.restored_box()
    inside = np.zeros(image.shape, bool)
    inside[tuple(slice(a, b) for a, b in box)] = True
    assert restored[inside].min() == pytest.approx(1.0) and restored[~inside].max() == 0.0


def test_a_region_outside_the_grid_is_refused():
    image, _ = _oblique_ct()
    with pytest.raises(ValueError, match="region of interest"):
        Preprocessor(_plan())(image, roi=[[0, 99], [0, 5], [0, 5]])
