"""The canonical orientation: an exact voxel reordering (as SimpleITK's DICOMOrient), and the
preprocessing round trip back onto the input's own grid for any storage order."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk

from engine.io.image import Image
from engine.planning.planner import Configuration, Normalization, Plan, network_topology
from engine.preprocessing import Preprocessor
from engine.preprocessing.orientation import check_orientation, orientation_code, reorientation
from engine.synth import generate_case

STORAGES = [(perm, flips) for perm in itertools.permutations(range(3))
            for flips in itertools.product((False, True), repeat=3)]


def _stored(image: Image, perm, flips) -> Image:
    out = sitk.Flip(sitk.PermuteAxes(image.to_sitk(), list(perm)), list(flips))
    return Image.from_sitk(out, dtype=image.array.dtype, modality=image.modality)


def _oriented(image: Image, code: str) -> Image:
    return Image.from_sitk(sitk.DICOMOrient(image.to_sitk(), code), dtype=image.array.dtype)


def _volume(direction: np.ndarray | None = None) -> Image:
    direction = np.eye(3) if direction is None else direction
    rng = np.random.default_rng(0)
    return Image(rng.normal(size=(5, 6, 7)).astype(np.float32), (2.5, 0.8, 0.7), (1.5, -2.25, 30.1), direction)


def _plan(spacing, orientation: str = "LPS", patch=(32, 64, 64)) -> Plan:
    topo, patch = network_topology(list(patch), list(spacing), 320)
    cfg = Configuration("3d_fullres", 3, list(spacing), [30, 40, 40], patch, 2, topo)
    return Plan("esophagus", "t", "CT", {"background": 0, "a": 1, "b": 2, "c": 3}, {"3d_fullres": cfg},
                Normalization("ct", [-1000.0, 200.0], -400.0, 500.0), orientation=orientation)


@pytest.mark.parametrize("code", ["LPS", "RAS", "SPR", "ILA"])
def test_reordering_equals_dicom_orient_for_every_storage(code):
    base = _volume()
    for perm, flips in STORAGES:
        stored = _stored(base, perm, flips)
        expected = _oriented(stored, code)
        got = reorientation(stored, code).canonical_image(stored)
        np.testing.assert_array_equal(got.array, expected.array)
        assert got.same_geometry(expected, tolerance=1e-9)
        if code == "LPS":
            np.testing.assert_array_equal(got.array, base.array)   # bit-identical whatever the storage
        assert orientation_code(stored.direction) == \
            sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(stored.direction.ravel().tolist())


def test_oblique_direction_uses_the_closest_axis_aligned_orientation():
    rng = np.random.default_rng(4)
    for _ in range(50):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        image = _volume(q)
        expected = _oriented(image, "LPS")
        got = reorientation(image, "LPS").canonical_image(image)
        np.testing.assert_array_equal(got.array, expected.array)
        assert got.same_geometry(expected, tolerance=1e-9)


def test_to_input_undoes_to_canonical_with_leading_channels():
    stored = _stored(_volume(), (2, 0, 1), (True, False, True))
    r = reorientation(stored, "LPS")
    stack = np.stack([stored.array, -stored.array])
    np.testing.assert_array_equal(r.to_input(r.to_canonical(stack)), stack)
    assert reorientation(_volume(), "LPS").is_identity


@pytest.mark.parametrize("code", ["lps", "LPR", "XYZ", "LP"])
def test_bad_orientation_codes(code):
    if code == "lps":
        assert check_orientation(code) == "LPS"
    else:
        with pytest.raises(ValueError):
            check_orientation(code)


@pytest.fixture(scope="module")
def phantom() -> tuple[Image, Image]:
    case = generate_case("esophagus", 11, "small")
    return case.channels[0], case.label


@pytest.mark.parametrize("perm,flips", [((0, 1, 2), (False, False, True)), ((2, 0, 1), (True, False, False)),
                                        ((1, 2, 0), (True, True, True))])
def test_round_trip_lands_on_the_stored_grid(phantom, perm, flips):
    image, label = phantom
    stored_image, stored_label = _stored(image, perm, flips), _stored(label, perm, flips)
    pre = Preprocessor(_plan(image.spacing))                   # same spacing: the round trip is exact
    case = pre(stored_image, stored_label)
    assert case.record.reorientation is not None
    back = pre.restore_labels(case.label, case.record)
    np.testing.assert_array_equal(back, stored_label.array)
    assert pre.to_image(back, case.record).same_geometry(stored_label, tolerance=1e-9)
    classes = int(label.array.max()) + 1
    onehot = np.stack([(case.label == k) for k in range(classes)]).astype(np.float32)
    probs = pre.restore_probabilities(onehot, case.record)
    assert probs.shape == (classes, *stored_label.shape)
    np.testing.assert_array_equal(probs.argmax(0), stored_label.array)
    heat = pre.restore_map(case.label.astype(np.float32), case.record)
    np.testing.assert_array_equal(heat, stored_label.array.astype(np.float32))


def test_training_case_in_another_orientation_gives_the_same_network_input(phantom):
    image, label = phantom
    pre = Preprocessor(_plan((6.0, 3.9, 3.9)))
    canonical = pre(image, label)
    assert canonical.record.reorientation is None               # already LPS: nothing reordered
    for perm, flips in [((0, 2, 1), (False, True, False)), ((2, 1, 0), (True, True, True))]:
        other = pre(_stored(image, perm, flips), _stored(label, perm, flips))
        np.testing.assert_allclose(other.image, canonical.image, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(other.label, canonical.label)
        assert other.record.crop_box == canonical.record.crop_box
        assert np.allclose(other.record.origin, canonical.record.origin, atol=1e-9)


def test_plan_orientation_is_the_one_the_network_sees(phantom):
    """A plan in RAS feeds the network RAS arrays, and still restores onto the input's grid."""
    image, label = phantom
    pre = Preprocessor(_plan(image.spacing, orientation="RAS"), crop_to_foreground=False, pad_to_patch=False)
    case = pre(image, label)
    np.testing.assert_array_equal(case.label, label.array[:, ::-1, ::-1])
    np.testing.assert_array_equal(pre.restore_labels(case.label, case.record), label.array)
    assert pre.to_image(label.array, case.record).same_geometry(label, tolerance=1e-9)
