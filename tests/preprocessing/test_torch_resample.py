"""Torch resampling gives SimpleITK's results: the cubic B-spline image (to a thousandth of a HU on a
phantom CT), the nearest-neighbour labels voxel for voxel, and the same restored predictions."""

from __future__ import annotations

import numpy as np
import pytest

from engine.io.image import Image
from engine.planning.planner import Configuration, Normalization, Plan, network_topology
from engine.preprocessing import Preprocessor
from engine.preprocessing.resample import resample_to_grid, resampled_shape
from engine.preprocessing.torch_resample import nnunet_axis_orders, resample_array
from engine.synth import generate_case

#: Largest difference allowed between torch's and SimpleITK's B-spline resampling of a CT (HU).
BSPLINE_TOLERANCE_HU = 0.01


@pytest.fixture(scope="module")
def phantom():
    case = generate_case("esophagus", 3, "small")
    return case.channels[0], case.label


#: target spacings with no output voxel exactly between two input voxels: ties round either way in SimpleITK
@pytest.mark.parametrize("target", [(2.0, 1.3, 1.3), (6.0, 3.9, 3.9), (4.2, 2.5, 1.7)])
def test_image_and_labels_match_simpleitk(phantom, target):
    image, label = phantom
    shape = resampled_shape(image.shape, image.spacing, target)
    expected = resample_to_grid(image, shape, target).array
    got = resample_array(image.array, image.spacing, shape, target, (3, 3, 3)).numpy()
    assert got.shape == expected.shape and got.dtype == np.float32
    assert np.abs(got - expected).max() < BSPLINE_TOLERANCE_HU
    labels = resample_array(label.array, label.spacing, shape, target, (0, 0, 0)).numpy()
    np.testing.assert_array_equal(labels, resample_to_grid(label, shape, target, is_label=True).array)


def test_a_region_of_the_grid_is_the_same_voxels(phantom):
    image, _ = phantom
    target = (2.0, 1.3, 1.3)
    shape = resampled_shape(image.shape, image.spacing, target)
    whole = resample_array(image.array, image.spacing, shape, target, (3, 3, 3)).numpy()
    part = resample_array(image.array, image.spacing, (20, 30, 40), target, (3, 3, 3), start=(10, 5, 50)).numpy()
    np.testing.assert_allclose(part, whole[10:30, 5:35, 50:90], atol=1e-4)


def test_preprocessing_and_restoring_with_torch_match_simpleitk(phantom):
    image, _ = phantom
    d = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # a rotated patient
    image = Image(image.array, image.spacing, (10.0, -4.0, 3.0), d, "CT")
    spacing = [4.1, 2.65, 2.65]  # no output voxel exactly between two input voxels (ties round either way)
    topo, patch = network_topology([16, 32, 32], spacing, 64)
    plan = Plan("esophagus", "t", "CT", {"background": 0, "a": 1},
                {"3d_fullres": Configuration("3d_fullres", 3, spacing, [48, 72, 72], patch, 2, topo)},
                Normalization("ct", [-1000.0, 400.0], 0.0, 300.0))
    roi = [[3, 40], [10, 60], [5, 60]]
    by_sitk = Preprocessor(plan)(image, roi=roi)
    by_torch = Preprocessor(plan, resampler="torch", device="cpu")(image, roi=roi)
    assert by_torch.record == by_sitk.record
    np.testing.assert_allclose(by_torch.image, by_sitk.image, atol=BSPLINE_TOLERANCE_HU / 300)
    labels = (by_sitk.image[0] > 0.2).astype(np.uint8) + (by_sitk.image[0] > 0.6)
    np.testing.assert_array_equal(Preprocessor.restore_labels(labels, by_sitk.record, device="cpu"),
                                  Preprocessor.restore_labels(labels, by_sitk.record))
    heat = np.clip(by_sitk.image[0], 0, 1)
    np.testing.assert_allclose(Preprocessor.restore_map(heat, by_sitk.record, device="cpu"),
                               Preprocessor.restore_map(heat, by_sitk.record), atol=1e-4)


def test_nnunet_resamples_thick_slices_separately():
    assert nnunet_axis_orders((1.0, 0.8, 0.8), (1.5, 1.5, 1.5)) == [3, 3, 3]
    assert nnunet_axis_orders((5.0, 0.7, 0.7), (3.0, 0.7, 0.7)) == [0, 3, 3]
    a = np.arange(4 * 2 * 2, dtype=np.float32).reshape(4, 2, 2)
    z_nearest = resample_array(a, (5.0, 1.0, 1.0), (8, 2, 2), (2.5, 1.0, 1.0), (0, 3, 3)).numpy()
    np.testing.assert_array_equal(z_nearest[::2], a)  # every output slice is an input slice
    assert set(np.unique(z_nearest)) <= set(np.unique(a))
