"""Ensembles of stage classifiers on one segmentation: mean probabilities, Grad-CAM, refusals, records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.cli import main as cli_main
from engine.errors import EngineError
from engine.explain.gradcam import grad_cam
from engine.registry import load_bundle
from engine.tasks.esophagus import STAGES
from engine.tasks.esophagus.ensemble import ensemble_classifiers
from engine.tasks.esophagus.evaluation import evaluate
from engine.tasks.esophagus.options import CLASSIFIER, FULLRES, LOWRES, classifier_weight_names
from engine.tasks.esophagus.predictor import EsophagusPredictor
from engine.tasks.esophagus.segment import build_report, segment_and_stage



def _resaved(bundle, out: Path, plan: dict | None = None, offsets: dict[str, float] | None = None):
    """``bundle`` written again with another plan or with some weights shifted by a constant."""
    from engine.registry.bundle import save_bundle

    weights = {n: bundle.load_state_dict(n) for n in bundle.weight_names}
    for name, offset in (offsets or {}).items():
        weights[name] = {k: v + offset if v.is_floating_point() else v for k, v in weights[name].items()}
    return save_bundle(out, id=bundle.id, name=bundle.name, version=bundle.version, task=bundle.task,
                       architecture=bundle.architecture, plan=plan or bundle.plan, labels=bundle.labels,
                       stages=bundle.stages, modality=bundle.modality, training=bundle.training,
                       metrics=bundle.metrics, intended_use=bundle.intended_use, weights=weights)


def test_ensemble_stages_with_the_mean_of_its_members_probabilities(tiny, second_member, tmp_path):
    first = tiny["bundle"]
    ensemble = ensemble_classifiers([first.path, second_member.path], tmp_path / "ensemble",
                                        model_id="eso-ensemble", version="2.0.0")
    assert classifier_weight_names(ensemble) == [CLASSIFIER, f"{CLASSIFIER}_2"]
    for name, member in ((CLASSIFIER, first), (f"{CLASSIFIER}_2", second_member)):
        assert ensemble.weight_file(name).sha256 == member.weight_file(CLASSIFIER).sha256
    for name in (LOWRES, FULLRES):
        assert ensemble.weight_file(name).sha256 == first.weight_file(name).sha256
    assert ensemble.metrics["classifier"]["members"] == 2
    assert [m["seed"] for m in ensemble.training["classifier_ensemble"]] == [1, 3]
    card = ensemble.read_model_card()
    assert "mean probabilities of 2 stage classifiers" in card
    assert "| 0 | 3 | 1 |" in card  # the second member's fold, seed and epochs

    image = tiny["dataset"].training[3].load_image()
    by_ensemble = EsophagusPredictor(ensemble, "cpu").predict(image, gradcam=False, tta="stage")
    singles = [EsophagusPredictor(b, "cpu").predict(image, gradcam=False, tta="stage")
               for b in (first, second_member)]
    expected = np.mean([list(p.stage_probabilities.values()) for p in singles], axis=0)
    np.testing.assert_allclose(list(by_ensemble.stage_probabilities.values()), expected, atol=1e-6)
    assert by_ensemble.predicted_stage == STAGES[int(np.argmax(expected))]
    np.testing.assert_array_equal(by_ensemble.labels.array, singles[0].labels.array)  # first's segmentation
    for member, single in zip(by_ensemble.member_stage_probabilities, singles, strict=True):
        assert member == pytest.approx(single.stage_probabilities, abs=1e-6)
    assert singles[0].member_stage_probabilities == []
    report = build_report(by_ensemble, ensemble, image, "x")
    assert report["model"]["stage_classifiers"] == 2 and len(report["member_stage_probabilities"]) == 2
    assert "member_stage_probabilities" not in build_report(singles[0], first, image, "x")


def test_ensemble_gradcam_is_the_renormalised_mean_of_its_members_maps(tiny, second_member, tmp_path):
    ensemble = EsophagusPredictor(
        ensemble_classifiers([tiny["bundle"].path, second_member.path], tmp_path / "ensemble"), "cpu")
    singles = [tiny["predictor"], EsophagusPredictor(second_member, "cpu")]
    channels = 1 + len(tiny["plan"].labels)
    crop = torch.randn(1, channels, *tiny["plan"].krt_box_size, generator=torch.Generator().manual_seed(0))
    for stage in (0, 3):
        maps = [p._grad_cam(crop, stage) for p in singles]
        total = maps[0] + maps[1]
        expected = total / total.max() if total.max() > 0 else total
        np.testing.assert_allclose(ensemble._grad_cam(crop, stage), expected, atol=1e-5)
        # each member's map is its classify() explained end to end (the shared encoder runs once)
        net = singles[1].net
        direct = grad_cam(net, net.classifier.last_conv_stage, (crop,), class_index=stage,
                          forward=lambda x: net.classify(x[:, :1], x)).cam
        np.testing.assert_allclose(maps[1], direct, atol=1e-5)
    with torch.no_grad():  # one pass of the shared encoder gives every member's logits
        expected_logits = torch.cat([m.classify(crop[:, :1], crop) for m in ensemble.members])
        np.testing.assert_allclose(ensemble._member_logits(crop[:, :1], crop), expected_logits, atol=1e-5)
    cam = ensemble.predict(tiny["dataset"].training[2].load_image()).gradcam.array
    assert cam.min() >= 0 and cam.max() <= 1


def test_ensemble_refuses_members_that_do_not_share_a_segmentation(tiny, second_member, tmp_path):
    first = tiny["bundle"]
    out = tmp_path / "ensemble"
    with pytest.raises(EngineError, match="at least two"):
        ensemble_classifiers([first.path], out)
    with pytest.raises(EngineError, match="identical"):
        ensemble_classifiers([first.path, first.path], out)
    retrained = _resaved(second_member, tmp_path / "retrained", offsets={FULLRES: 1e-3})
    with pytest.raises(EngineError, match="segmentation-from"):
        ensemble_classifiers([first.path, retrained.path], out)
    box = [k + 4 for k in second_member.plan["krt_box_size"]]
    replanned = _resaved(second_member, tmp_path / "replanned",
                         plan={**second_member.plan, "krt_box_size": box})
    with pytest.raises(EngineError, match="plan"):
        ensemble_classifiers([first.path, replanned.path], out)
    assert not out.exists()
    nested = ensemble_classifiers([first.path, second_member.path], tmp_path / "nested")
    with pytest.raises(EngineError, match="identical"):  # an ensemble's members count as classifiers
        ensemble_classifiers([nested.path, second_member.path], out)
    assert not out.exists()


def test_an_ensemble_of_an_ensemble_keeps_every_classifiers_own_record(tiny, second_member, tmp_path):
    nested = ensemble_classifiers([tiny["bundle"].path, second_member.path], tmp_path / "nested")
    third = _resaved(second_member, tmp_path / "third", offsets={CLASSIFIER: 1e-3})
    ensemble = ensemble_classifiers([nested.path, third.path], tmp_path / "ensemble")
    records = ensemble.training["classifier_ensemble"]
    assert len(records) == len(classifier_weight_names(ensemble)) == 3
    assert [r["seed"] for r in records] == [1, 3, 3]
    assert [r["path"] for r in records[:2]] == [str(tiny["bundle"].path), str(second_member.path)]
    assert all(r["validation"] for r in records)
    rows = [line for line in ensemble.read_model_card().splitlines() if line.startswith("| ")][-3:]
    assert len(rows) == 3 and not any("–" in row for row in rows)


def test_a_half_precision_ensemble_stages_like_the_full_precision_one(tiny, second_member, tmp_path):
    members = [tiny["bundle"].path, second_member.path]
    full = ensemble_classifiers(members, tmp_path / "full")
    half = ensemble_classifiers(members, tmp_path / "half", weights_dtype="float16")
    full_bytes, half_bytes = (sum(w.bytes for w in b.weights) for b in (full, half))
    assert half_bytes < 0.6 * full_bytes
    assert "float16" in half.read_model_card()
    image = tiny["dataset"].training[3].load_image()
    by_full, by_half = (EsophagusPredictor(b, "cpu").predict(image, gradcam=False, tta="stage")
                        for b in (full, half))
    assert by_half.stage_probabilities == pytest.approx(by_full.stage_probabilities, abs=2e-3)
    assert by_half.predicted_stage == by_full.predicted_stage
    agree = np.mean(by_half.labels.array == by_full.labels.array)
    assert agree > 0.995  # argmax flips only where an untrained tiny network nearly ties


def test_cli_ensemble_writes_a_bundle_that_runs(tiny, second_member, tmp_path, capsys):
    out = tmp_path / "ensemble"
    assert cli_main(["ensemble", "--task", "esophagus", "--models", str(tiny["bundle"].path),
                     str(second_member.path), "--out", str(out), "--version", "3.1.0"]) == 0
    assert "averaged over 2 classifiers" in capsys.readouterr().out
    bundle = load_bundle(out, expected_task="esophagus", verify=True)
    assert bundle.version == "3.1.0" and bundle.training["command"].startswith("python -m engine ")
    assert cli_main(["ensemble", "--task", "esophagus", "--models", str(tiny["bundle"].path),
                     str(second_member.path), "--out", str(out)]) == 2  # exists: not overwritten
    image_path = tiny["dataset"].training[0].image_files[0]
    result = segment_and_stage(image_path, tmp_path / "run", bundle, device="cpu")
    assert sum(result.report["stage_probabilities"].values()) == pytest.approx(1.0)
    files = evaluate(tiny["root"] / "data", tmp_path / "eval", bundle, device="cpu", tta="none")
    metrics = json.loads(files["json"].read_text(encoding="utf-8"))
    assert len(metrics["member_classification"]) == 2 and "stage classifiers" in metrics["metadata"]
    assert "### Ensemble members" in files["markdown"].read_text(encoding="utf-8")
