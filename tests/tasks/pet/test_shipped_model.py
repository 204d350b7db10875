"""The shipped PET demo model: the task's default, phantom-trained, and it runs end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.registry import find_bundle
from engine.synth import generate_case
from engine.tasks import get_task

DEMO = Path(__file__).resolve().parents[3] / "models" / "pet-demo-0.1.0"


@pytest.mark.skipif(not DEMO.is_dir(), reason="the PET demo model is not in models/")
def test_the_demo_is_the_default_and_predicts_a_phantom(monkeypatch):
    monkeypatch.setenv("ONCOSTAGING_BUILTIN_MODELS", str(DEMO.parent))  # the tests otherwise hide models/
    bundle = find_bundle("pet", None)
    assert bundle.id == "pet-demo" and bundle.is_demo
    assert 0.5 <= bundle.plan["segmentation_threshold"] < 1.0
    card = bundle.read_model_card() or ""
    assert "synthetic" in card and "29" in card   # says it is phantom-trained and its budget
    predictor = get_task("pet").load_predictor(bundle, "cpu")
    case = generate_case("pet", 3, "small")
    prediction = predictor.predict(case.channels[0], gradcam=False)
    assert sum(prediction.outcome_probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert set(prediction.pathology_probabilities) == {"esophageal", "lung"}
    assert prediction.labels.same_geometry(case.channels[0])
