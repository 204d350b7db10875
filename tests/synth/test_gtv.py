"""Lung GTV CT phantom (engine.synth.gtv): small nodules on a minority of slices, plausible HU, not found by
thresholding."""

from __future__ import annotations

import numpy as np
import pytest

from engine.synth import generate_case, gtv
from tests.synth._checks import best_threshold_dice, dilate6, separability_auc


@pytest.fixture(scope="module")
def cases():
    return [generate_case("gtv", s) for s in range(12)]


def test_nodules_are_small_and_on_a_minority_of_slices(cases):
    slice_fractions = []
    for case in cases:
        t = case.label.array == 1
        assert t.any(), case.meta["seed"]
        assert t.mean() < 0.001, (case.meta["seed"], t.mean())                 # < 0.1 % of the voxels
        on = t.any(axis=(1, 2))
        slice_fractions.append(on.mean())
        assert on.mean() < 0.5, (case.meta["seed"], on.mean())
        assert np.flatnonzero(on).tolist() == case.meta["tumour_slices"]
        assert np.array_equal(case.meta["masks"]["tumour"], t)
        assert 1 <= len(case.meta["nodules"]) <= 3
    assert np.mean(slice_fractions) < 0.3


def test_no_targets_and_label_values(cases):
    assert gtv.HAS_TARGETS is False and gtv.LABELS == {"background": 0, "GTV": 1}
    for case in cases:
        assert case.targets.t_stage is None and case.targets.outcome is None
        assert set(np.unique(case.label.array).tolist()) <= {0, 1}


def test_intensities_are_plausible_hu(cases):
    for case in cases[:4]:
        img = case.image.array
        assert case.image.modality == "CT"
        assert img.min() >= -1024 and img.max() <= 3071
        corners = np.concatenate([img[:, :3, :3].ravel(), img[:, :3, -3:].ravel(),
                                  img[:, -3:, :3].ravel(), img[:, -3:, -3:].ravel()])
        assert abs(float(np.median(corners)) + 1000.0) < 25.0              # air outside the body
        assert np.percentile(img, 5) < -700                                 # aerated lung
        assert np.percentile(img, 99.9) > 200                               # bone
        tumour = img[case.label.array == 1]
        # solid nodules near soft tissue (partial volume with lung pulls small ones down); GGO ≈ -450..-150
        assert -600 <= np.median(tumour) <= 100


def test_nodules_are_not_found_by_a_threshold(cases):
    aucs = []
    for case in cases:
        img, t = case.image.array, case.label.array == 1
        assert best_threshold_dice(img, t) < 0.05, case.meta["seed"]
        near = dilate6(dilate6(dilate6(t))) & ~t
        dense = near & (img > -500)          # vessels, chest wall, mediastinum next to the nodule
        if dense.sum() >= 5:
            aucs.append(separability_auc(img[t], img[dense]))
    assert len(aucs) >= 6
    assert np.mean(aucs) < 0.85, aucs


def test_presets():
    assert gtv.PRESETS["realistic"].shape == (120, 512, 512)
    assert gtv.PRESETS["realistic"].spacing == (3.0, 0.98, 0.98)
