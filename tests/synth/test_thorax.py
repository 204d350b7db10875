"""Shared thoracic anatomy and CT rendering (engine.synth.thorax + common.finish_ct): HU per tissue, layout."""

from __future__ import annotations

import numpy as np
import pytest

from engine.synth.common import finish_ct, texture_field
from engine.synth.shapes import Canvas, Grid
from engine.synth.thorax import TISSUES, VENOUS_ENHANCEMENT_HU, ct_values, paint_thorax, sample_thorax
from tests.synth._checks import erode6

#: Plausible non-contrast chest CT ranges (median HU of the tissue's interior).
HU_RANGES = {
    "air": (-1010, -985), "lung": (-890, -700), "fat": (-130, -60), "mediastinal_fat": (-130, -60),
    "muscle": (20, 80), "liver": (30, 90), "aorta": (20, 80), "heart": (20, 80), "heart_blood": (20, 80),
    "bone": (200, 450), "trachea_air": (-1000, -900),
}


@pytest.fixture(scope="module", params=[0, 1, 2])
def rendered(request):
    rng = np.random.default_rng(request.param)
    th = sample_thorax(rng, min_layer_mm=4.0, n_nodes=3, n_vessels=8)
    grid = Grid((40, 112, 112), (4.0, 3.0, 3.0), 0.0, (float(th.z_carina) + 20.0, th.body.cy.base, 0.0))
    canvas = Canvas(grid, TISSUES)
    paint_thorax(canvas, th)
    mean, amp = ct_values(rng)
    volume = finish_ct(rng, grid, canvas.render(mean, amp, texture_field(rng, grid, 3.0)), noise_sd=12.0)
    return canvas, volume, th


def test_tissue_hu_ranges(rendered):
    canvas, volume, _ = rendered
    checked = set()
    for tissue, (lo, hi) in HU_RANGES.items():
        inside = erode6(canvas.where(tissue))
        if inside.sum() < 20:
            continue
        med = float(np.median(volume[inside]))
        assert lo <= med <= hi, (tissue, med)
        checked.add(tissue)
    assert {"air", "lung", "fat", "muscle", "aorta", "bone"} <= checked, checked
    assert volume.min() >= -1024 and volume.max() <= 3071


def test_venous_phase_enhances_blood_and_parenchyma_only():
    plain, _ = ct_values(np.random.default_rng(4))
    venous, _ = ct_values(np.random.default_rng(4), "venous")
    gain = {t: venous[t] - plain[t] for t in plain}
    for tissue, (lo, hi) in VENOUS_ENHANCEMENT_HU.items():
        if tissue != "esophagus_wall":
            assert lo <= gain[tissue] <= hi, (tissue, gain[tissue])
    assert venous["aorta"] > 100 and venous["heart_blood"] > 100          # blood pools bright
    # both wall layers gain the same, so the subtle inner/muscularis difference is kept
    assert gain["esophagus_inner"] == gain["esophagus_muscle"] > 0
    assert venous["esophagus_muscle"] - venous["esophagus_inner"] == pytest.approx(
        plain["esophagus_muscle"] - plain["esophagus_inner"])
    for tissue in ("fat", "lung", "bone", "air", "trachea_air", "mediastinal_fat"):
        assert gain[tissue] == 0.0, tissue
    with pytest.raises(ValueError, match="phase"):
        ct_values(np.random.default_rng(4), "arterial")


def test_anatomy_is_present_and_in_place(rendered):
    canvas, volume, th = rendered
    counts = {t: int(canvas.where(t).sum()) for t in ("lung", "aorta", "bone", "esophagus_muscle", "trachea_air",
                                                       "air", "fat", "muscle")}
    assert all(v > 0 for v in counts.values()), counts
    z, y, x = canvas.grid.axes()
    coords = np.broadcast_arrays(z, y, x)

    def centroid(t):
        m = canvas.where(t)
        return np.array([c[m].mean() for c in coords])

    eso, aorta, bone = centroid("esophagus_muscle"), centroid("aorta"), centroid("bone")
    assert aorta[2] > eso[2]                  # descending aorta on the patient's left of the esophagus
    assert bone[1] > eso[1]                   # spine behind it (+y posterior)
    lungs = canvas.where("lung")
    left = lungs & (np.broadcast_to(x, lungs.shape) > 30)
    right = lungs & (np.broadcast_to(x, lungs.shape) < -30)
    assert left.sum() > 0 and right.sum() > 0  # two lungs, lateral


def test_lung_noise_and_texture(rendered):
    canvas, volume, _ = rendered
    lung = erode6(canvas.where("lung"))
    assert 5.0 < float(volume[lung].std()) < 150.0   # textured and noisy, not flat
