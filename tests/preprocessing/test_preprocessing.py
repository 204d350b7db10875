"""Preprocessing forward steps and their exact inverse back to the input geometry."""

from __future__ import annotations

import numpy as np
import pytest

from engine.io.image import Image
from engine.planning.planner import Configuration, Normalization, Plan, network_topology
from engine.preprocessing import (Preprocessor, normalize, preprocess_configurations, resample_to_grid,
                                  resample_to_spacing, resampled_shape, spline_coefficients)
from engine.preprocessing import pipeline as preprocessing_pipeline
from engine.preprocessing.crop import foreground_box, pad, pad_amounts, unpad


def _oblique(shape=(30, 40, 44), spacing=(2.5, 0.8, 0.9)):
    rng = np.random.default_rng(3)
    a = np.full(shape, -1000.0, np.float32)
    a[4:26, 6:34, 5:40] = 40 + rng.normal(0, 10, (22, 28, 35))
    lab = np.zeros(shape, np.uint8)
    lab[8:20, 10:28, 12:34] = 1
    lab[12:16, 14:20, 16:22] = 2
    c, s = np.cos(0.3), np.sin(0.3)
    d = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    return Image(a, spacing, (12.0, -30.5, 7.25), d, "CT"), Image(lab, spacing, (12.0, -30.5, 7.25), d)


def _plan(spacing, patch=(32, 64, 64)) -> Plan:
    topo, patch = network_topology(list(patch), list(spacing), 320)
    cfg = Configuration("3d_fullres", 3, list(spacing), [30, 40, 40], patch, 2, topo)
    return Plan("esophagus", "t", "CT", {"background": 0, "a": 1, "b": 2}, {"3d_fullres": cfg},
                Normalization("ct", [-1000.0, 200.0], -400.0, 500.0))


def test_same_spacing_round_trip_is_identity():
    img, lab = _oblique()
    pp = Preprocessor(_plan(img.spacing))
    case = pp(img, lab)
    assert case.image.shape[0] == 1 and case.image.dtype == np.float32
    assert all(n >= p for n, p in zip(case.image.shape[1:], pp.config.patch_size))
    back = pp.restore_labels(case.label, case.record)
    np.testing.assert_array_equal(back, lab.array)                     # voxel-exact
    restored = pp.to_image(back, case.record)
    assert restored.same_geometry(lab, tolerance=1e-9)


def test_resampled_round_trip_restores_geometry_and_labels():
    img, lab = _oblique()
    pp = Preprocessor(_plan((1.25, 1.2, 1.2)))
    case = pp(img, lab)
    r = case.record
    assert r.resampled_shape == [round(n * s / t) for n, s, t in zip(r.cropped_shape, img.spacing, (1.25, 1.2, 1.2))]
    # the network grid's labels were resampled nearest-neighbour: values kept
    assert set(np.unique(case.label)) == {0, 1, 2}
    back = pp.restore_labels(case.label, r)
    assert back.shape == lab.shape
    assert pp.to_image(back, r).same_geometry(lab, tolerance=1e-9)
    for k in (1, 2):
        inter = np.sum((back == k) & (lab.array == k))
        dice = 2 * inter / (np.sum(back == k) + np.sum(lab.array == k))
        assert dice > 0.9, (k, dice)


def test_restore_probabilities_background_outside_crop():
    img, lab = _oblique()
    pp = Preprocessor(_plan((2.5, 1.6, 1.8)))
    case = pp(img, lab)
    onehot = np.stack([case.label == k for k in range(3)]).astype(np.float32)
    probs = pp.restore_probabilities(onehot, case.record)
    assert probs.shape == (3,) + lab.shape
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
    outside = np.ones(lab.shape, bool)
    outside[tuple(slice(a, b) for a, b in case.record.crop_box)] = False
    assert np.all(probs[0][outside] == 1.0)
    assert np.mean(probs.argmax(0) == lab.array) > 0.98


def test_crop_box_finds_body_and_margin():
    img, _ = _oblique()
    box = foreground_box(img.array, "CT", margin=2)
    assert box == [[2, 28], [4, 36], [3, 42]]


def test_pad_unpad_inverse():
    a = np.arange(2 * 5 * 6 * 7, dtype=np.float32).reshape(2, 5, 6, 7)
    pads = pad_amounts(a.shape[1:], (8, 6, 10))
    assert pads == [[1, 2], [0, 0], [1, 2]]
    padded = pad(a, pads, value=-1)
    assert padded.shape == (2, 8, 6, 10) and padded[0, 0, 0, 0] == -1
    np.testing.assert_array_equal(unpad(padded, pads), a)


def test_normalisation_schemes():
    x = np.array([-2000.0, -1000.0, 0.0, 100.0, 500.0], np.float32)
    ct = normalize(x, Normalization("ct", [-1000.0, 200.0], 0.0, 100.0))
    np.testing.assert_allclose(ct, [-10, -10, 0, 1, 2])
    mr = normalize(np.array([1.0, 2.0, 3.0, 4.0], np.float32), Normalization("zscore", None, None, None))
    assert mr.mean() == pytest.approx(0, abs=1e-6) and mr.std() == pytest.approx(1, abs=1e-5)


def test_bspline_resampling_keeps_smooth_values():
    z, y, x = np.meshgrid(np.arange(20), np.arange(24), np.arange(24), indexing="ij")
    img = Image((3.0 * x + 2.0 * y).astype(np.float32), (2.0, 2.0, 2.0))
    fine = resample_to_spacing(img, (1.0, 1.0, 1.0))
    assert fine.shape == (40, 48, 48)
    zz, yy, xx = np.meshgrid(np.arange(40), np.arange(48), np.arange(48), indexing="ij")
    expect = 3.0 * xx * 0.5 + 2.0 * yy * 0.5
    # interpolating (not smoothing) spline: the original samples are hit exactly ...
    np.testing.assert_allclose(fine.array[::2, ::2, ::2], img.array, rtol=1e-4, atol=1e-3)
    # ... and a ramp is reproduced between them once the mirror-boundary error has decayed
    inner = (slice(12, -12),) * 3
    np.testing.assert_allclose(fine.array[inner], expect[inner], rtol=1e-4, atol=1e-3)


def test_resampling_from_spline_coefficients_equals_plain_bspline_resampling():
    img, lab = _oblique()
    coefficients = spline_coefficients(img)
    for spacing in ((1.25, 1.2, 1.2), (5.0, 2.4, 2.7)):
        shape = resampled_shape(img.shape, img.spacing, spacing)
        plain = resample_to_grid(img, shape, spacing)
        shared = resample_to_grid(img, shape, spacing, coefficients=coefficients)
        assert shared.same_geometry(plain, tolerance=1e-9)
        np.testing.assert_allclose(shared.array, plain.array, rtol=0, atol=1e-3)  # values span −1000…80
    with pytest.raises(ValueError, match="cubic"):
        resample_to_grid(lab, shape, spacing, is_label=True, coefficients=coefficients)


def test_cascade_configurations_share_the_grid_independent_work(monkeypatch):
    img, lab = _oblique()
    plan = _plan((1.25, 1.2, 1.2))
    low_topology, low_patch = network_topology([16, 32, 32], [5.0, 2.4, 2.4], 320)
    plan.configurations["3d_lowres"] = Configuration("3d_lowres", 3, [5.0, 2.4, 2.4], [8, 20, 20], low_patch,
                                                     2, low_topology)
    pre_full, pre_low = Preprocessor(plan, "3d_fullres"), Preprocessor(plan, "3d_lowres")
    separately = [pre_full(img, lab), pre_low(img, lab)]
    calls = []

    def counted(image):
        calls.append(image.shape)
        return spline_coefficients(image)

    boxes = []

    def counted_box(array, modality):
        boxes.append(array.shape)
        return foreground_box(array, modality)

    monkeypatch.setattr(preprocessing_pipeline, "spline_coefficients", counted)
    monkeypatch.setattr(preprocessing_pipeline.cropping, "foreground_box", counted_box)
    together = preprocess_configurations((pre_full, pre_low), img, lab)
    assert len(calls) == len(boxes) == 1  # one decomposition and one foreground box serve both resolutions
    assert together[0].image.shape != together[1].image.shape
    for a, b in zip(together, separately):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.label, b.label)
        assert a.record == b.record

