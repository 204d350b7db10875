"""Segment & Stage of one CT (and a batch) into result files: all or nothing, bad inputs and models refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from engine.cli import main as cli_main
from engine.errors import BundleError, EngineError, ImageError
from engine.io.image import Image, read_image, write_image
from engine.io.segmentation_nrrd import read_segmentation_nrrd
from engine.pipelines.outputs import RUN_FILES
from engine.tasks.esophagus import TASK
from engine.tasks.esophagus.options import CLASSIFIER
from engine.tasks.esophagus.segment import segment_and_stage



def test_segment_and_stage_writes_every_output_consistently(tiny, tmp_path):
    case = tiny["dataset"].training[3]
    result = segment_and_stage(case.image_files[0], tmp_path / "run", tiny["predictor"])
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(RUN_FILES)
    report = json.loads((tmp_path / "run" / "report.json").read_text(encoding="utf-8"))
    for key in ("task", "model", "input", "stage_probabilities", "predicted_stage", "volumes_cm3", "krt_box",
                "warnings", "timings_s", "test_time_augmentation"):
        assert key in report
    assert report["model"]["sha256"] == {w.name: w.sha256 for w in tiny["bundle"].weights}
    assert abs(sum(report["stage_probabilities"].values()) - 1) < 1e-6
    seg = read_image(tmp_path / "run" / "segmentation.nii.gz")
    np.testing.assert_array_equal(seg.array, result.prediction.labels.array)
    slicer_seg, segments = read_segmentation_nrrd(tmp_path / "run" / "segmentation.seg.nrrd")
    np.testing.assert_array_equal(slicer_seg.array, seg.array)
    assert [s.name for s in segments] == ["EC", "aorta", "esophagus", "lymph node", "pericardium"]
    assert segments[0].terminology and "108369006" in segments[0].terminology
    cam = read_image(tmp_path / "run" / "gradcam.nii.gz", validate=False)
    assert cam.shape == seg.shape and 0 <= cam.array.min() and cam.array.max() <= 1


def test_existing_results_are_not_overwritten_without_permission(tiny, tmp_path):
    case = tiny["dataset"].training[0]
    out = tmp_path / "run"
    segment_and_stage(case.image_files[0], out, tiny["predictor"], gradcam=False)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(EngineError, match="already holds results"):
        segment_and_stage(case.image_files[0], out, tiny["predictor"])
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    segment_and_stage(case.image_files[0], out, tiny["predictor"], overwrite=True)
    assert (out / "gradcam.nii.gz").exists()


@pytest.mark.parametrize("kind", ["mr", "2d", "4d"])
def test_bad_inputs_are_refused_without_writing(tiny, tmp_path, kind):
    image = tiny["dataset"].training[0].load_image()
    path = tmp_path / "bad.nii.gz"
    if kind == "mr":
        write_image(Image(np.abs(image.array) / 3 + 5, image.spacing, image.origin, image.direction), path)
        error = ImageError
    elif kind == "2d":
        sitk.WriteImage(sitk.GetImageFromArray(image.array[10]), str(path))
        error = ImageError
    else:
        sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(image.array)] * 2), str(path))
        error = ImageError
    with pytest.raises(error):
        segment_and_stage(path, tmp_path / "out", tiny["predictor"])
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_model_of_another_task_and_tampered_model_are_refused(tiny, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny["bundle"].path, other)
    manifest = json.loads((other / "model.json").read_text(encoding="utf-8"))
    manifest["task"] = "npc"
    (other / "model.json").write_text(json.dumps(manifest))
    image_path = tiny["dataset"].training[0].image_files[0]
    with pytest.raises(BundleError, match="npc"):
        segment_and_stage(image_path, tmp_path / "out1", other)
    tampered = tmp_path / "tampered"
    shutil.copytree(tiny["bundle"].path, tampered)
    weights = tampered / f"{CLASSIFIER}.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError):
        segment_and_stage(image_path, tmp_path / "out2", tampered)
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()


def test_cancel_leaves_no_outputs(tiny, tmp_path):
    case = tiny["dataset"].training[0]
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(EngineError, match="cancel"):
        segment_and_stage(case.image_files[0], tmp_path / "run", tiny["predictor"], cancel=cancel)
    assert not any((tmp_path / "run").glob("*")) if (tmp_path / "run").exists() else True


def test_batch_run_from_a_folder_writes_a_summary(tiny, tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    for case in tiny["dataset"].training[:2]:
        (folder / case.image_files[0].name).symlink_to(case.image_files[0])
    (folder / "broken.nii.gz").write_bytes(b"not an image")
    summary = TASK.run_batch(folder, tmp_path / "batch", tiny["bundle"], device="cpu", gradcam=False)
    import csv

    rows = list(csv.DictReader(summary.open(encoding="utf-8")))  # warnings carry "×", "—", "cm³"
    assert [r["status"] for r in rows] == ["error", "ok", "ok"]
    assert rows[1]["predicted_stage"] in ("T1", "T2", "T3", "T4")
    assert (tmp_path / "batch" / rows[1]["case"] / "report.json").exists()


def test_cli_run_and_evaluate(tiny, tmp_path, capsys):
    case = tiny["dataset"].training[0]
    model = str(tiny["bundle"].path)
    assert cli_main(["run", "--task", "esophagus", "--input", str(case.image_files[0]), "--out",
                     str(tmp_path / "run"), "--model", model, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "Predicted stage: T" in out and "Volumes (cm³)" in out
    assert cli_main(["run", "--task", "esophagus", "--input", str(case.image_files[0]), "--out",
                     str(tmp_path / "run"), "--model", model]) == 2          # existing results
    assert cli_main(["evaluate", "--task", "esophagus", "--data", str(tiny["root"] / "data"), "--model", model,
                     "--out", str(tmp_path / "eval"), "--device", "cpu"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics
    assert "mean over 4 in-plane mirrorings" in (tmp_path / "eval" / "metrics.md").read_text(encoding="utf-8")
    assert cli_main(["evaluate", "--task", "esophagus", "--data", str(tiny["root"] / "data"), "--model", model,
                     "--out", str(tmp_path / "eval_plain"), "--device", "cpu", "--tta", "none"]) == 0
    assert "stage classification: none" in (tmp_path / "eval_plain" / "metrics.md").read_text(encoding="utf-8")
    for name in ("metrics.md", "roc.png", "bland_altman.png"):
        assert (tmp_path / "eval" / name).exists()


def test_demo_runs_segment_and_stage_with_an_installed_model(tiny, tmp_path, capsys):
    import os
    import shutil

    from engine import demo

    shutil.copytree(tiny["bundle"].path, Path(os.environ["ONCOSTAGING_MODEL_DIR"]) / "esophagus-nntransec-1.0.0")
    assert demo.main(["--out", str(tmp_path / "demo"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "true stage T" in out and "Predicted stage: T" in out and "Volumes (cm³)" in out
    report = json.loads((tmp_path / "demo" / "segment_and_stage" / "report.json").read_text(encoding="utf-8"))
    assert report["model"]["id"] == tiny["bundle"].id
