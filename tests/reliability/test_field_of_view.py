"""A scan that cannot hold a task's anatomy (a few centimetres of tissue, voxels a centimetre thick) is
segmented and staged like any other; its report.json, summary line and overview figure must say so."""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.image import imread

from engine.io.image import Image
from engine.planning import extract_fingerprint, make_plan
from engine.synth import generate_case, generate_dataset
from engine.tasks.base import FieldOfView
from engine.tasks.esophagus import TASK
from engine.tasks.esophagus.options import TrainOptions
from engine.tasks.esophagus.predictor import EsophagusPredictor
from engine.tasks.esophagus.training import train
from engine.tasks.registry import all_tasks

TINY = dict(lowres_epochs=1, fullres_epochs=1, classifier_epochs=1, steps_per_epoch=2, base_features=4,
            max_features=8, folds=4, fold=0, val_every=1, device="cpu", seed=1)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    root = tmp_path_factory.mktemp("fov")
    ds = generate_dataset("esophagus", root / "data", cases=4, seed=5)
    plan = make_plan(extract_fingerprint(ds), "esophagus", spacing=(6.0, 3.9, 3.9))
    return EsophagusPredictor(train(root / "data", root / "model", TrainOptions(**TINY), plan=plan), "cpu")


def _fov_warnings(report: dict) -> list[str]:
    return [w for w in report["warnings"] if "the esophagus task needs" in w]


def test_tiny_volume_runs_with_a_warning_in_report_and_overview(predictor, tmp_path):
    ct = generate_case("esophagus", 0, "small").image
    # every 8th slice and 12th row/column of a phantom: 8 × 8 × 8 voxels, air and tissue, 23 mm across
    tiny = Image(np.ascontiguousarray(ct.array[::8, ::12, ::12]), (2.9, 2.9, 2.9), ct.origin, np.eye(3), "CT")
    result = TASK.segment(tiny, tmp_path / "tiny", predictor, device="cpu", gradcam=False, tta="none")

    report = json.loads((tmp_path / "tiny" / "report.json").read_text())
    [warning] = _fov_warnings(report)
    assert "23 × 23 × 23 mm" in warning and "80 × 150 × 150 mm" in warning
    assert "mediastinum" in warning and "np." not in warning
    assert report["predicted_stage"] in TASK.stage_names  # a warning, not a refusal
    assert warning in result.prediction.warnings

    plain = tmp_path / "plain.png"  # the same figure without warnings is shorter: the red lines are drawn
    from engine.reporting import render_overview

    render_overview(tiny, result.prediction.labels, None, [], report["stage_probabilities"], plain)
    drawn, bare = imread(tmp_path / "tiny" / "overview.png"), imread(plain)
    assert drawn.shape[0] > bare.shape[0]
    red = np.all(np.abs(drawn[..., :3] - np.array([0.84, 0.15, 0.16])) < 0.1, axis=-1)
    assert red[: drawn.shape[0] // 5].sum() > 200  # the red text sits under the title


def test_standard_phantom_carries_no_field_of_view_warning(predictor, tmp_path):
    result = TASK.segment(generate_case("esophagus", 1, "small").image, tmp_path / "std", predictor,
                          device="cpu", gradcam=False, tta="none")
    assert _fov_warnings(result.report) == []
    assert (tmp_path / "std" / "overview.png").is_file()


@pytest.mark.parametrize("task", [t for t in all_tasks() if t.field_of_view], ids=lambda t: t.name)
def test_every_shipped_phantom_preset_fits_its_task(task):
    presets = task.phantom_module().PRESETS
    for name, preset in presets.items():
        assert task.field_of_view.warnings(task.name, preset.shape, preset.spacing) == [], name


def test_thick_slices_and_centimetre_spacing_are_named():
    fov = FieldOfView(min_extent_mm=(80, 150, 150), max_spacing_mm=(10, 6, 6), min_spacing_mm=(0.1, 0.1, 0.1))
    [coarse] = fov.warnings("esophagus", (20, 512, 512), (12.0, 0.7, 0.7))
    assert "12 × 0.7 × 0.7 mm" in coarse and "at most 10 × 6 × 6 mm" in coarse
    # spacing written in centimetres: the volume looks 36 mm wide and its voxels 0.07 mm
    small, unit = fov.warnings("esophagus", (100, 512, 512), (0.3, 0.07, 0.07))
    assert "36 × 36 mm" in small and "wrong unit" in unit


def test_a_sagittal_acquisition_is_measured_along_the_patient_axes():
    fov = FieldOfView(min_extent_mm=(80, 150, 150))
    # stored slices run left-right (3 mm apart, 60 of them: 180 mm); rows head-foot, columns front-back
    sagittal = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert fov.warnings("esophagus", (60, 300, 300), (3.0, 0.8, 0.8), sagittal) == []
    # read as axial it would be 180 mm cranio-caudal; as sagittal only 40 slices are 120 mm left-right
    [narrow] = fov.warnings("esophagus", (40, 300, 300), (3.0, 0.8, 0.8), sagittal)
    assert "240 × 240 × 120 mm" in narrow
