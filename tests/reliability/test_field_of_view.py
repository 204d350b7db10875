"""A scan that cannot hold a task's anatomy (a few centimetres of tissue, voxels a centimetre thick) is
segmented and staged like any other; its report.json, summary line and overview figure must say so."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from engine.cli import main
from engine.io.image import Image, write_image
from engine.pipelines.runner import summary_row
from engine.registry import load_bundle
from engine.reporting import render_overview
from engine.synth import generate_case
from engine.tasks.base import FieldOfView
from engine.tasks.esophagus import TASK
from engine.tasks.registry import all_tasks

DEMO_MODEL = Path(__file__).resolve().parents[2] / "models" / "esophagus-demo-0.6.0"


def _tiny_ct() -> Image:
    """Every 8th slice and 12th row/column of a phantom: 8 × 8 × 8 voxels of air and tissue, 23 mm across."""
    ct = generate_case("esophagus", 0, "small").image
    return Image(np.ascontiguousarray(ct.array[::8, ::12, ::12]), (2.9, 2.9, 2.9), ct.origin, np.eye(3), "CT")


def _fov_warnings(warnings: list[str]) -> list[str]:
    return [w for w in warnings if "the esophagus task needs" in w]


def test_tiny_volume_runs_with_a_warning_in_report_output_summary_and_overview(tmp_path, capsys):
    tiny = _tiny_ct()
    write_image(tiny, tmp_path / "tiny.nii.gz")
    code = main(["run", "--task", "esophagus", "--input", str(tmp_path / "tiny.nii.gz"), "--out",
                 str(tmp_path / "out"), "--model", str(DEMO_MODEL), "--device", "cpu", "--tta", "none",
                 "--no-gradcam"])
    assert code == 0  # a warning, not a refusal: a cropped scan may be all there is

    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    [warning] = _fov_warnings(report["warnings"])
    assert "23 × 23 × 23 mm" in warning and "80 × 150 × 150 mm" in warning
    assert "mediastinum" in warning and "np." not in warning
    assert report["predicted_stage"] in TASK.stage_names
    assert f"Warning: {warning}" in capsys.readouterr().out
    assert warning in summary_row(report)["warnings"]

    # the same figure without warnings is shorter, and the red lines sit under the title
    labels = Image(np.zeros(tiny.shape, np.uint8), tiny.spacing, tiny.origin, tiny.direction)
    bare = imread(render_overview(tiny, labels, None, [], report["stage_probabilities"], tmp_path / "bare.png"))
    drawn = imread(tmp_path / "out" / "overview.png")
    assert drawn.shape[0] > bare.shape[0]
    red = np.all(np.abs(drawn[..., :3] - np.array([0.84, 0.15, 0.16])) < 0.1, axis=-1)
    assert red[: drawn.shape[0] // 5].sum() > 200


def test_standard_phantom_carries_no_field_of_view_warning(tmp_path):
    predictor = TASK.load_predictor(load_bundle(DEMO_MODEL), "cpu")
    result = TASK.segment(generate_case("esophagus", 1, "small").image, tmp_path / "std", predictor,
                          device="cpu", gradcam=False, tta="none")
    assert _fov_warnings(result.report["warnings"]) == []
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
