"""The training-data profile and the checks against it: ranges from the cases, findings only far
outside them, the tumour's organ of origin, and the outcome on a prediction."""

from __future__ import annotations

import numpy as np
import pytest

from engine.domain import DomainProfile, build_profile, is_phantom_dataset
from engine.domain.check import (
    DomainCheck,
    apply_domain_check,
    input_findings,
    tumour_away_from_organ,
    volume_findings,
)
from engine.io.image import Image
from engine.pipelines.case import Prediction

LABELS = {"background": 0, "EC": 1, "esophagus": 2}


def _case(seed: int, shape=(20, 40, 40), spacing=(3.0, 2.0, 2.0), tumour: int = 3) -> tuple[Image, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = np.full(shape, -1000.0, np.float32)
    a[:, 5:35, 5:35] = 40 + rng.normal(0, 20, (shape[0], 30, 30))
    lab = np.zeros(shape, np.uint8)
    lab[5:15, 18:24, 18:24] = 2
    lab[8:8 + tumour, 17:17 + tumour, 24:24 + tumour] = 1
    return Image(a, spacing, (0.0, 0.0, 0.0), np.eye(3), "CT"), lab


@pytest.fixture(scope="module")
def profile() -> DomainProfile:
    return build_profile([_case(s, tumour=2 + s) for s in range(4)], LABELS, "CT", trained_on_phantoms=True)


def test_profile_ranges_cover_every_case_and_survive_model_json(profile):
    assert profile.cases == 4 and profile.trained_on_phantoms
    assert profile.spacing_mm == {"min": [3.0, 2.0, 2.0], "max": [3.0, 2.0, 2.0]}
    assert profile.field_of_view_mm["max"] == [60.0, 80.0, 80.0]
    voxel = 3 * 2 * 2 / 1000
    assert profile.structure_volumes_cm3["EC"] == pytest.approx([8 * voxel, 125 * voxel], abs=1e-4)
    assert profile.structure_presence == {"EC": 1.0, "esophagus": 1.0}
    low, high = profile.intensity_percentiles["p01"]
    assert low <= high < -900
    assert DomainProfile.from_dict({**profile.to_dict(), "added_later": 1}) == profile
    assert is_phantom_dataset("SyntheticEsophagus") and not is_phantom_dataset("OpenKBP", "head-and-neck CTs")


def test_a_case_like_the_training_ones_has_no_finding(profile):
    image, _ = _case(9, tumour=4)
    assert input_findings(profile, image) == []
    assert volume_findings(profile, {"EC": 64 * 0.012, "esophagus": 360 * 0.012}) == []


def test_far_larger_field_of_view_finer_spacing_and_other_intensities_are_found(profile):
    image, _ = _case(1, shape=(40, 120, 120), spacing=(3.0, 0.9, 0.9))
    image.array[:, 30:90, 30:90] = 900.0  # bone-bright, unlike any training scan
    found = input_findings(profile, image)
    assert any(f.startswith("voxel spacing") for f in found)
    assert any(f.startswith("field of view") for f in found)
    assert any(f.startswith("intensities unlike") and "50th percentile" in f for f in found)


def test_volumes_far_outside_the_training_range_or_missing_are_found(profile):
    found = volume_findings(profile, {"EC": 10.0, "esophagus": 0.0})
    assert found[0].startswith("EC 10 cm³") and found[1] == "no esophagus found (every training case had one)"
    assert volume_findings(profile, {"EC": 125 * 0.012 * 1.4, "esophagus": 3.0}) == []  # within the tolerance


def test_tumour_must_touch_its_organ_of_origin():
    _, lab = _case(0)
    spacing = (3.0, 2.0, 2.0)
    assert not tumour_away_from_organ(lab, spacing, 1, 2)
    far = lab.copy()
    far[far == 1] = 0
    far[2:4, 30:33, 30:33] = 1
    assert tumour_away_from_organ(far, spacing, 1, 2)
    assert not tumour_away_from_organ(np.zeros_like(lab), spacing, 1, 2)  # no tumour: nothing to judge


def test_outcome_puts_warnings_first_and_marks_the_stage_unreliable(profile, monkeypatch):
    from engine.domain import check as check_module
    from engine.tasks import get_task

    image, _ = _case(1, shape=(40, 120, 120), spacing=(3.0, 0.9, 0.9))
    prediction = Prediction(Image(np.zeros(image.shape, np.uint8), image.spacing), volumes_cm3={"EC": 1.0},
                            stage_probabilities={"T1": 1.0}, predicted_stage="T1", warnings=["earlier"])
    monkeypatch.setattr(check_module, "bundle_profile", lambda bundle: profile)
    bundle = type("B", (), {"id": "m", "labels": []})()
    result = apply_domain_check(get_task("esophagus"), bundle, image, prediction)
    assert not result.within and prediction.stage_reliable is False
    assert prediction.warnings[0].startswith("This model was trained on synthetic phantoms")
    assert prediction.warnings[1].startswith("Outside the model's training data") and prediction.warnings[-1] == "earlier"
    fields = prediction.report_fields()
    assert fields["stage_reliable"] is False and fields["domain"]["within_training_domain"] is False
    assert DomainCheck(None).report() == {"checked": False,
                                          "reason": "the model records no profile of its training data"}
