"""With the shipped demo model: the region-restricted full-resolution stage gives the whole-volume
labels, fresh phantoms are inside the model's domain, and a real CT (LUNG1-001) is flagged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.io.image import Image
from engine.registry import load_bundle
from engine.synth import generate_case
from engine.tasks import get_task
from tests.conftest import shared_data

BUNDLE = Path(__file__).resolve().parents[3] / "models" / "esophagus-demo-0.6.0"
#: seeds far from the demo model's training phantoms (seed 1000 onwards)
FRESH_SEEDS = (424242, 424243)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def predictor():
    if not (BUNDLE / "model.json").is_file():
        pytest.skip("the shipped demo model is not in this checkout")
    return get_task("esophagus").load_predictor(load_bundle(BUNDLE), "cpu")


def _wider_phantom(seed: int) -> Image:
    """A phantom with 40 voxels of fat added on each in-plane side: a field of view wider than the
    anatomy, so the full-resolution region is smaller than the grid."""
    image = generate_case("esophagus", seed, "small").channels[0]
    pads = ((0, 0), (40, 40), (40, 40))
    rng = np.random.default_rng(seed)
    wide = np.pad(image.array.astype(np.float32), pads)
    added = np.pad(np.zeros(image.shape, bool), pads, constant_values=True)
    wide[added] = -100 + rng.normal(0, 15, int(added.sum()))
    shift = image.direction @ (np.array([0, 40, 40])[::-1] * np.asarray(image.spacing_xyz))
    return Image(wide, image.spacing, tuple(np.asarray(image.origin) - shift), image.direction, "CT")


def test_region_restricted_run_gives_the_whole_volume_labels(predictor):
    image = _wider_phantom(11)
    restricted = predictor.predict(image, gradcam=False, tta="none")
    whole = predictor.predict(image, gradcam=False, tta="none", restrict_to_roi=False)
    region = restricted.full_resolution_region
    assert region["restricted"] and region["fraction_of_grid"] < 1.0
    assert whole.full_resolution_region == {"restricted": False}
    for value in range(1, 6):
        a, b = restricted.labels.array == value, whole.labels.array == value
        assert b.sum() > 0
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.99, value
    for stage, p in whole.stage_probabilities.items():
        assert restricted.stage_probabilities[stage] == pytest.approx(p, abs=1e-3)


@pytest.mark.parametrize("seed", FRESH_SEEDS)
def test_fresh_phantoms_are_inside_the_demo_models_domain(predictor, seed, tmp_path):
    image = generate_case("esophagus", seed, "small").channels[0]
    result = get_task("esophagus").segment(image, tmp_path / "out", predictor, gradcam=False, tta="none")
    report = result.report
    assert report["domain"]["checked"] and report["domain"]["within_training_domain"], report["domain"]
    assert report["stage_reliable"] is True
    assert not any("training data" in w or "phantoms" in w for w in report["warnings"])


@pytest.mark.realdata
def test_lung1_ct_with_the_phantom_model_is_flagged_everywhere(predictor, tmp_path):
    series = shared_data("nsclc_lung1_001", "ct_dicom")
    out = tmp_path / "lung1"
    result = get_task("esophagus").segment(series, out, predictor, gradcam=False, tta="none")
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["stage_reliable"] is False and report["predicted_stage"] in ("T1", "T2", "T3", "T4")
    assert report["warnings"][0].startswith("This model was trained on synthetic phantoms")
    domain = report["domain"]
    assert not domain["within_training_domain"] and domain["trained_on_phantoms"]
    assert any(f.startswith("field of view") for f in domain["input_findings"])
    assert result.prediction.warnings == report["warnings"]  # what the figure prints
