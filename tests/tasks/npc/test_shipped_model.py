"""The shipped NPCStaging demo model: the task's default, it segments and stages a fresh phantom, and a real
brain MRI (out of its domain: a test of the MRI path to outputs in the scan's own geometry, not of accuracy)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.cli import main
from engine.io.image import read_image
from engine.synth import generate_case
from tests.conftest import shared_data

MODELS = Path(__file__).resolve().parents[3] / "models"
SHIPPED = sorted(MODELS.glob("npc-*"))
#: A phantom none of the shipped model's training cases was made from.
FRESH_SEED = 31


@pytest.fixture
def shipped(monkeypatch) -> Path:
    if not SHIPPED:
        pytest.skip("no NPCStaging model is shipped in models/")
    monkeypatch.setenv("ONCOSTAGING_BUILTIN_MODELS", str(MODELS))
    return SHIPPED[-1]


def test_the_shipped_model_is_the_tasks_default(shipped):
    from engine.registry import find_bundle

    bundle = find_bundle("npc")
    assert bundle.path.resolve() == shipped.resolve() and bundle.is_demo
    assert bundle.architecture["variant"] == "full"
    assert "synthetic phantoms" in (bundle.read_model_card() or "")


def test_a_fresh_phantom_is_segmented_and_staged(shipped):
    from engine.tasks import get_task

    case = generate_case("npc", FRESH_SEED, "small")
    prediction = get_task("npc").load_predictor(None, "cpu").predict(case.channels[0])
    reference, predicted = case.label.array == 1, prediction.labels.array == 1
    dice = 2 * np.sum(reference & predicted) / (reference.sum() + predicted.sum())
    assert dice > 0.5
    assert prediction.predicted_stage in ("T1", "T2", "T3", "T4")
    assert prediction.gradcam is not None and prediction.gradcam.array.max() == pytest.approx(1.0)


def test_a_real_brain_mri_runs_in_its_own_geometry(shipped, tmp_path):
    source = shared_data("pyradiomics_lung", "brain1_image.nrrd")
    out = tmp_path / "run"
    assert main(["run", "--task", "npc", "--input", str(source), "--out", str(out), "--device", "cpu"]) == 0
    mri = read_image(source)
    labels = read_image(out / "segmentation.nii.gz")
    assert labels.same_geometry(mri, tolerance=1e-5)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["model"]["id"] == "npc-demo" and report["input"]["shape"] == list(mri.shape)[::-1]
    assert isinstance(report["warnings"], list) and report["predicted_stage"] in ("T1", "T2", "T3", "T4")
