"""One tiny nn-TransEC model, trained once per test session on phantoms (coarse plan, 4-channel network,
a few steps), and a second classifier on its segmentation. The tests check shapes, geometry,
probabilities, Grad-CAM placement, volumes, the KRT crop, ablation switches and bad inputs — not
accuracy, which ``docs/results/`` reports for the demo weights."""

from __future__ import annotations

import pytest

from engine.planning import extract_fingerprint, make_plan
from engine.synth import generate_dataset
from engine.tasks.esophagus.options import TrainOptions
from engine.tasks.esophagus.predictor import EsophagusPredictor
from engine.tasks.esophagus.training import train

#: Training options of the tiny model; tests vary them with ``{**tiny["options"], ...}``.
TINY = dict(lowres_epochs=1, fullres_epochs=1, classifier_epochs=1, steps_per_epoch=2, base_features=4,
            max_features=8, folds=4, fold=0, val_every=1, device="cpu", seed=1)
SPACING = (6.0, 3.9, 3.9)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("eso")
    ds = generate_dataset("esophagus", root / "data", cases=8, seed=5)
    plan = make_plan(extract_fingerprint(ds), "esophagus", spacing=SPACING)
    bundle = train(root / "data", root / "model", TrainOptions(**TINY), plan=plan)
    return {"root": root, "dataset": ds, "plan": plan, "bundle": bundle, "options": dict(TINY),
            "predictor": EsophagusPredictor(bundle, "cpu")}


@pytest.fixture(scope="session")
def second_member(tiny, tmp_path_factory):
    """A second classifier on the tiny model's segmentation (another seed): an ensemble member."""
    options = TrainOptions(**{**TINY, "seed": 3, "segmentation_from": str(tiny["bundle"].path),
                              "lowres_epochs": 0, "fullres_epochs": 0})
    return train(tiny["root"] / "data", tmp_path_factory.mktemp("member") / "second", options)
