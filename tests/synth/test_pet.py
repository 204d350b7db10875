"""FDG PET phantom (engine.synth.pet): SUV ranges, tumour and halo, outcome tied to the uptake pattern, pathology."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from engine.synth import case_seed, generate_case, pet
from tests.synth._checks import erode6, touches6

N_CASES = 64


@pytest.fixture(scope="module")
def cohort():
    return [generate_case("pet", case_seed(21, i)) for i in range(N_CASES)]


def _peritumoral_ratio(case) -> float:
    """Mean SUV in a 0–10 mm shell around the tumour (body, away from hot organs) over tumour mean SUV."""
    img, m = case.image.array, case.meta["masks"]
    t = m["tumour"]
    dist = ndimage.distance_transform_edt(~t, sampling=case.image.spacing)
    hot = m["myocardium"] | m["blood_pool"] | m["liver"]
    shell = (dist > 0) & (dist <= 10.0) & m["body"] & ~hot
    return float(img[shell].mean() / img[t].mean())


def test_module_interface():
    assert pet.TASK == "pet" and pet.HAS_TARGETS is True
    assert set(pet.PRESETS) == {"small", "realistic"}
    assert pet.PRESETS["realistic"].spacing == (2.0, 2.0, 2.0)          # the seed's 2 mm isotropic grid
    assert all(s == 4.0 for s in pet.PRESETS["small"].spacing)
    assert pet.LABELS == {"background": 0, "tumour": 1}
    desc = pet.description()
    assert desc.channel_names == {"0": "PT"} and desc.stages is None
    assert desc.extra["pathologies"] == list(pet.PATHOLOGIES)


def test_case_shape_targets_and_label(cohort):
    for i, case in enumerate(cohort[:10]):
        assert case.targets.pathology == pet.draw_pathology(case_seed(21, i))
        assert case.image.modality == "PT" and case.image.array.dtype == np.float32
        assert case.image.shape == pet.PRESETS["small"].shape
        assert case.targets.t_stage is None
        assert case.targets.outcome in (0, 1) and case.targets.outcome == case.meta["outcome"]
        assert case.targets.pathology in pet.PATHOLOGIES and case.targets.pathology == case.meta["pathology"]
        assert np.array_equal(case.label.array == 1, case.meta["masks"]["tumour"])
        assert set(np.unique(case.label.array).tolist()) == {0, 1}
        # the halo is uptake around the tumour, never labelled
        assert not np.any(case.meta["masks"]["halo"] & case.meta["masks"]["tumour"])


def test_suv_ranges(cohort):
    suv_max = []
    for case in cohort:
        img, m = case.image.array, case.meta["masks"]
        t = m["tumour"]
        assert img.min() >= 0.0
        background = float(np.median(img[m["body"] & ~t]))
        assert 0.2 < background < 2.0, background
        assert float(img[t].max()) > 2.0 * background
        suv_max.append(float(img[t].max()))
        assert np.isclose(suv_max[-1], case.meta["measured"]["suv_max"])
    suv_max = np.array(suv_max)
    assert np.mean(suv_max > 3.0) >= 0.95, np.sort(suv_max)[:5]
    assert 4.0 <= np.median(suv_max) <= 20.0 and suv_max.max() < 35.0


def test_physiological_uptake(cohort):
    for case in cohort[:8]:
        img, m = case.image.array, case.meta["masks"]
        inner = {k: erode6(v) & ~m["halo"] for k, v in m.items() if k != "tumour"}
        assert inner["liver"].sum() >= 20                        # the liver dome is in the field of view
        assert 1.5 <= img[inner["liver"]].mean() <= 3.0
        assert img[inner["lung"]].mean() < 1.0
        assert img[inner["muscle"]].mean() < 1.5
        assert 1.0 <= np.median(img[m["blood_pool"] & ~m["halo"]]) <= 2.6
        air = ~m["body"]
        assert img[air].mean() < 0.3
        # Poisson-like noise: the liver is neither flat nor noise-dominated (clinical CoV ≈ 10 %)
        liver = img[inner["liver"]]
        assert 0.04 < liver.std() / liver.mean() < 0.3
        assert 6.0 <= case.meta["psf_fwhm_mm"] <= 8.0


def test_outcome_is_tied_to_the_uptake_pattern(cohort):
    y = np.array([c.targets.outcome for c in cohort])
    assert 0.2 <= y.mean() <= 0.8                                       # both classes, not degenerate
    risk = np.array([c.meta["risk"] for c in cohort])
    auc = roc_auc_score(y, risk)
    assert 0.7 < auc < 1.0, auc
    # the recorded risk is the documented logistic model on the standardised latent features
    for c in cohort[:5]:
        z = c.meta["latent_standardised"]
        expected = pet.RISK_INTERCEPT + sum(w * z[k] for k, w in pet.RISK_WEIGHTS.items())
        assert np.isclose(c.meta["risk"], expected)
        assert np.isclose(c.meta["outcome_probability"], 1 / (1 + np.exp(-expected)))
    # a logistic regression on the true latent features learns it, but not perfectly
    X = np.array([[c.meta["latent_standardised"][k] for k in pet.RISK_WEIGHTS] for c in cohort])
    fitted = LogisticRegression().fit(X, y).decision_function(X)
    assert 0.7 < roc_auc_score(y, fitted) < 0.98
    # and the signal is visible in the image: peritumoral uptake measured from the scan ranks outcomes
    ratio = np.array([_peritumoral_ratio(c) for c in cohort])
    assert roc_auc_score(y, ratio) > 0.6


def test_halo_and_heterogeneity_change_the_image(monkeypatch):
    """Same seed, only the latent pattern changed: the image changes where the rule says."""
    seed = case_seed(3, 7)
    original = pet.sample_uptake

    def with_pattern(**fields):
        monkeypatch.setattr(pet, "sample_uptake", lambda rng, p: dataclasses.replace(original(rng, p), **fields))
        return generate_case("pet", seed)

    calm = with_pattern(halo_intensity=0.0, heterogeneity=0.05)
    halo = with_pattern(halo_intensity=0.45, heterogeneity=0.05)
    rough = with_pattern(halo_intensity=0.0, heterogeneity=0.95)
    assert np.array_equal(calm.label.array, halo.label.array)         # same anatomy and tumour
    assert _peritumoral_ratio(halo) > _peritumoral_ratio(calm) + 0.05
    assert not calm.meta["masks"]["halo"].any() and halo.meta["masks"]["halo"].any()
    assert rough.meta["measured"]["heterogeneity_cov"] > calm.meta["measured"]["heterogeneity_cov"]
    assert halo.meta["risk"] > calm.meta["risk"] and rough.meta["risk"] > calm.meta["risk"]


def test_pathology_follows_location_but_not_perfectly(cohort):
    paths = [c.targets.pathology for c in cohort]
    assert set(paths) == set(pet.PATHOLOGIES)
    on_esophagus = np.array([touches6(c.meta["masks"]["tumour"], c.meta["masks"]["esophagus"]) for c in cohort])
    eso = np.array([p == "esophageal" for p in paths])
    assert on_esophagus[eso].mean() >= 0.95                             # esophageal tumours grow on it
    assert on_esophagus[~eso].mean() < 0.4                              # most lung tumours are elsewhere
    # central lung tumours abut the esophagus too, so location alone is not a perfect classifier
    assert "mediastinal" in {c.meta["site"] for c in cohort}
    assert on_esophagus[~eso].any()
    assert 0.8 <= roc_auc_score(eso, on_esophagus) < 1.0


def test_small_case_is_fast_and_realistic_preset_geometry():
    import time

    t0 = time.perf_counter()
    generate_case("pet", 5)
    assert time.perf_counter() - t0 < 1.0
    p = pet.PRESETS["realistic"]
    assert p.spacing == (2.0, 2.0, 2.0) and p.shape[0] >= 64 and min(p.shape[1:]) >= 128


@pytest.mark.slow
def test_realistic_case():
    case = generate_case("pet", 2, preset="realistic")
    assert case.image.shape == pet.PRESETS["realistic"].shape and case.image.spacing == (2.0, 2.0, 2.0)
    assert case.meta["measured"]["suv_max"] > 3.0
