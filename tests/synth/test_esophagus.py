"""Esophageal cancer CT phantom: the invasion-depth T-stage rule, stage mix, HU, difficulty (engine.synth.esophagus)."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from scipy import ndimage

from engine.synth import esophagus, generate_case
from engine.synth.common import STAGES, SynthError
from tests.synth._checks import best_threshold_dice, separability_auc, touches6

PER_STAGE = 6


@pytest.fixture(scope="module")
def cases_by_stage() -> dict[str, list]:
    """Six small cases built for each stage (seeds picked with ``draw_stage``)."""
    seeds: dict[str, list[int]] = {s: [] for s in STAGES}
    seed = 0
    while min(len(v) for v in seeds.values()) < PER_STAGE:
        stage = esophagus.draw_stage(seed)
        if len(seeds[stage]) < PER_STAGE:
            seeds[stage].append(seed)
        seed += 1
    return {stage: [generate_case("esophagus", s) for s in ss] for stage, ss in seeds.items()}


def _all(cases_by_stage):
    return [c for cs in cases_by_stage.values() for c in cs]


def test_masks_agree_with_the_label_map(cases_by_stage):
    for case in _all(cases_by_stage):
        m, lab = case.meta["masks"], case.label.array
        assert np.array_equal(m["tumour"], lab == 1)
        assert np.array_equal(m["aorta"], lab == 2)
        assert np.array_equal(m["pericardium"], lab == 5)
        # the wall compartment is the esophagus label plus whatever tumour replaced
        assert np.array_equal(m["wall"] & ~m["tumour"], lab == 3)
        assert not np.any(m["inner_layers"] & ~m["wall"])
        assert np.array_equal(m["muscularis"], m["wall"] & ~m["inner_layers"])
        assert m["tumour"].sum() >= 8


def test_stage_follows_invasion_depth(cases_by_stage):
    """Re-derive every stage from the compartment masks with the clinical rule."""
    seen = collections.Counter()
    for case in _all(cases_by_stage):
        m = case.meta["masks"]
        t = m["tumour"]
        stage = case.targets.t_stage
        assert stage == case.meta["stage"]
        seen[stage] += 1
        invades = touches6(t, m["aorta"] | m["pericardium"])
        outside_wall = bool(np.any(t & ~m["wall"]))
        beyond_inner = bool(np.any(t & ~m["inner_layers"]))
        if stage == "T4":
            assert invades, case.meta["seed"]
        else:
            assert not invades, case.meta["seed"]
        if stage == "T1":
            assert not beyond_inner, case.meta["seed"]          # stays in mucosa/submucosa
        if stage == "T2":
            assert beyond_inner and not outside_wall, case.meta["seed"]
        if stage == "T3":
            assert outside_wall, case.meta["seed"]
    assert set(seen) == set(STAGES), seen


def test_generator_builds_the_stage_it_draws(cases_by_stage):
    built = [c.meta["stage"] == c.meta["stage_sampled"] for c in _all(cases_by_stage)]
    assert np.mean(built) >= 0.9
    for stage in ("T1", "T2", "T4"):
        assert all(c.meta["stage"] == stage for c in cases_by_stage[stage]), stage


def test_stage_mix_is_ec169():
    n = 3000
    counts = collections.Counter(esophagus.draw_stage(s) for s in range(n))
    for stage, p in zip(STAGES, esophagus.STAGE_PROBABILITIES):
        assert abs(counts[stage] / n - p) < 0.03, (stage, counts[stage] / n)
    assert esophagus.STAGE_PROBABILITIES == (0.17, 0.19, 0.54, 0.10)


def test_invasion_depth_increases_with_stage(cases_by_stage):
    depth = {s: np.median([c.meta["invasion_depth_mm"] for c in cs]) for s, cs in cases_by_stage.items()}
    assert depth["T1"] < depth["T2"] < depth["T3"]
    assert depth["T1"] < 0 and depth["T2"] <= 0 < depth["T3"]


def test_intensities_are_plausible_hu(cases_by_stage):
    for case in [cs[0] for cs in cases_by_stage.values()]:
        img, lab, m = case.image.array, case.label.array, case.meta["masks"]
        assert case.image.modality == "CT"
        assert img.min() >= -1024 and img.max() <= 3071
        assert 100 <= np.median(img[lab == 2]) <= 260          # aorta: contrast-enhanced blood (venous phase)
        assert 0 <= np.median(img[lab == 1]) <= 130            # tumour: enhancing soft tissue
        assert case.meta["phase"] == "venous" and case.meta["phantom_version"] == 4
        assert 10.0 <= case.meta["tumour_enhancement_hu"] <= 25.0
        assert -10 <= np.median(img[(lab == 3) & m["muscularis"]]) <= 100
        assert -60 <= np.median(img[lab == 4]) <= 100          # lymph nodes in fat (partial volume)
        assert np.percentile(img, 2) < -700                     # aerated lung in the field of view
        assert np.percentile(img, 99.9) > 200                   # vertebral bone


def test_tumour_is_low_contrast_not_separable_by_hu(cases_by_stage):
    """The tumour enhances a little more than the wall (a region is visible), but its HU overlaps the
    wall's and the nodes': no threshold finds it."""
    aucs, dices = [], []
    for case in _all(cases_by_stage)[::2]:
        img, lab, m = case.image.array, case.label.array, case.meta["masks"]
        soft = ((lab == 3) & m["muscularis"]) | (lab == 4)
        aucs.append(separability_auc(img[lab == 1], img[soft]))
        dices.append(best_threshold_dice(img, lab == 1))
    assert 0.6 < np.mean(aucs) < 0.9, aucs
    assert max(aucs) < 0.99, aucs
    assert max(dices) < 0.1, dices


def test_presets():
    assert esophagus.PRESETS["realistic"].shape == (237, 256, 256)
    assert esophagus.PRESETS["realistic"].spacing == (1.0, 0.73, 0.73)
    small = esophagus.PRESETS["small"]
    assert all(a <= b for a, b in zip(small.shape, (237, 256, 256)))


@pytest.mark.slow
def test_realistic_case_has_the_paper_geometry():
    case = generate_case("esophagus", 4, preset="realistic")
    assert case.image.shape == (237, 256, 256) and case.label.shape == (237, 256, 256)
    assert case.image.spacing == (1.0, 0.73, 0.73)
    assert case.targets.t_stage in STAGES and case.meta["tumour_voxels"] > 100


def test_wall_thickening_warp_is_monotone_and_local():
    """The mass-effect warp moves only wall and fat cuff, keeps their order, and maps r_outer + d to r_outer."""
    from engine.synth.thorax import WallThickening, sample_thorax

    th = sample_thorax(np.random.default_rng(3), min_layer_mm=3.9)
    w = WallThickening(z_centre=0.0, half_length=20.0, phi=0.5, half_width=1.0, depth_mm=4.0)
    rho = np.linspace(0.0, th.r_cuff + 5.0, 2001, dtype=np.float32)
    at_centre = w.undeformed_radius(th, np.zeros_like(rho), rho, np.full_like(rho, 0.5))
    assert np.all(np.diff(at_centre) >= 0)
    outside = (rho <= th.r_lumen) | (rho >= th.r_cuff)
    np.testing.assert_allclose(at_centre[outside], rho[outside], atol=1e-5)
    np.testing.assert_allclose(w.undeformed_radius(th, np.zeros(1), np.array([th.r_outer + 4.0]), np.array([0.5])),
                               [th.r_outer], atol=1e-4)
    # off the footprint (further along z, or on the other side) nothing moves
    np.testing.assert_allclose(w.undeformed_radius(th, np.full_like(rho, 25.0), rho, np.full_like(rho, 0.5)), rho)
    np.testing.assert_allclose(w.undeformed_radius(th, np.zeros_like(rho), rho, np.full_like(rho, 0.5 + np.pi)), rho)
    # a cap towards a close neighbour limits the displacement towards it, and only there
    cap = np.where(np.abs(WallThickening.directions(72) - 0.5) < 0.2, 1.0, 10.0)
    capped = WallThickening(0.0, 20.0, 0.5, 1.0, 4.0, cap_mm=tuple(cap))
    assert float(capped.displacement(np.zeros(1), np.array([0.5]))[0]) == pytest.approx(1.0)
    assert float(capped.displacement(np.zeros(1), np.array([0.0]))[0]) > 3.0


def test_wall_thickening_is_the_tumours_volume():
    """With ``stretch_to_mm`` (the tumour's depth) only the band up to it stretches: the layers beyond
    keep their thickness and are pushed out by the displacement (version 4)."""
    from engine.synth.thorax import WallThickening, sample_thorax

    th = sample_thorax(np.random.default_rng(3), min_layer_mm=3.9)
    a, d = th.r_lumen + 0.6 * (th.r_inner - th.r_lumen), 4.0
    w = WallThickening(z_centre=0.0, half_length=20.0, phi=0.5, half_width=1.0, depth_mm=d, stretch_to_mm=a)
    undeformed = lambda r: w.undeformed_radius(th, np.zeros(len(r)), np.asarray(r, np.float32),  # noqa: E731
                                               np.full(len(r), 0.5))
    # the band [r_lumen, a + d] maps onto [r_lumen, a], linearly
    band = np.linspace(th.r_lumen, a + d, 11)
    np.testing.assert_allclose(undeformed(band), np.linspace(th.r_lumen, a, 11), atol=1e-4)
    # beyond it every layer boundary is only shifted by d: the rest of the inner layers and the
    # muscularis keep their thickness
    np.testing.assert_allclose(undeformed([th.r_inner + d, th.r_outer + d]), [th.r_inner, th.r_outer],
                               atol=1e-4)
    rho = np.linspace(0.0, th.r_cuff + 5.0, 2001, dtype=np.float32)
    assert np.all(np.diff(undeformed(rho)) >= 0)
    # the default (versions 2-3) stretched the whole wall: the muscularis began well inside r_inner + d,
    # i.e. it got thicker
    whole = WallThickening(0.0, 20.0, 0.5, 1.0, d)
    r_in, r_out = whole.undeformed_radius(th, np.zeros(2), np.array([th.r_inner + d, th.r_outer + d]),
                                          np.full(2, 0.5))
    assert r_in > th.r_inner + 0.5 and r_out == pytest.approx(th.r_outer, abs=1e-4)


def test_generator_stretches_only_the_tumours_depth(monkeypatch):
    """A T1 and a T2 phantom: the thickening stretches the wall up to the tumour's planned reach only."""
    made = []

    class Recording(esophagus.WallThickening):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(esophagus, "WallThickening", Recording)
    for seed, stage in ((3, "T1"), (2, "T2")):
        case = esophagus.generate(seed)
        assert case.targets.t_stage == stage
        assert made[-1].stretch_to_mm == pytest.approx(case.meta["tumour_plan"]["reach"])
        assert made[-1].stretch_to_mm < case.meta["wall_mm"]["lumen"] + case.meta["wall_mm"]["inner"] \
            + case.meta["wall_mm"]["muscularis"]


def test_intramural_tumours_thicken_the_wall_and_others_do_not(cases_by_stage):
    """T1/T2: the wall's cross-section over the tumour is larger than away from it; T3/T4: unchanged."""
    for stage, cases in cases_by_stage.items():
        for case in cases:
            m = case.meta
            wall, tumour = m["masks"]["wall"], m["masks"]["tumour"]
            area = wall.sum(axis=(1, 2))
            tz = np.flatnonzero(tumour.any(axis=(1, 2)))
            away = [z for z in range(len(area)) if (z < tz.min() - 4 or z > tz.max() + 4) and area[z] > 0]
            ratio = area[int(round(m["tumour_centre_index_zyx"][0]))] / np.median(area[away])
            if m["stage"] in ("T1", "T2"):
                assert ratio > 1.1, (m["seed"], stage, ratio)
            else:
                assert m["wall_thickening_mm"] == 0.0 and 0.85 < ratio < 1.15, (m["seed"], stage, ratio)


def test_enhancement_scale_changes_only_the_tumours_hu():
    """The enhancement probe's premise: same seed, same anatomy and noise; only the tumour's HU moves."""
    made = {k: esophagus.generate(3, enhancement_scale=k) for k in (0.0, 1.0, 2.0)}
    base = made[1.0]
    tumour = base.label.array == 1
    drawn = base.meta["tumour_enhancement_hu"]
    assert 10.0 <= drawn <= 25.0
    for k, case in made.items():
        assert np.array_equal(case.label.array, base.label.array) and case.meta["stage"] == base.meta["stage"]
        assert case.meta["tumour_enhancement_hu"] == pytest.approx(k * drawn)
    diff = made[2.0].image.array.astype(float) - base.image.array
    inner = ndimage.binary_erosion(tumour)
    far = ~ndimage.binary_dilation(tumour, iterations=3)  # beyond the CT's blur of the tumour's edge
    assert inner.sum() > 0 and np.abs(diff[far]).max() < 1e-3
    assert diff[inner].mean() == pytest.approx(drawn, abs=0.1 * drawn)   # the blur spreads only the edge
    iso = base.image.array.astype(float) - made[0.0].image.array
    assert np.allclose(iso, diff, atol=1e-3)                              # linear in the scale
    for bad in (-1.0, float("nan")):
        with pytest.raises(SynthError, match="enhancement_scale"):
            esophagus.generate(3, enhancement_scale=bad)
