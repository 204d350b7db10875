"""``python -m engine train|run|evaluate --task pet`` on PET phantoms: from an SUV volume and from a DICOM
PET series in Bq/ml, resume and time limit. The model is tiny (a few steps): these check the pipeline,
not accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.cli import main
from engine.io.image import Image, write_image
from engine.synth import generate_case, generate_dataset
from tests.tasks.pet.dicom_pet import SPACING_MM, suv_factor, write_pet_series

TINY = ["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2", "--width", "2", "--crop-size", "32",
        "--device", "cpu", "--seed", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pet_cli")
    generate_dataset("pet", root / "data", cases=6, seed=41, preset="small")
    assert main(["train", "--task", "pet", "--data", str(root / "data"), "--out", str(root / "model"),
                 "--val-fraction", "0.34", *TINY]) == 0
    return {"root": root, "data": root / "data", "model": root / "model"}


def test_train_writes_a_bundle_with_its_card(trained):
    card = (trained["model"] / "MODEL_CARD.md").read_text()
    manifest = json.loads((trained["model"] / "model.json").read_text())
    assert manifest["task"] == "pet" and manifest["architecture"]["variant"] == "multitask"
    assert manifest["plan"]["target_spacing"] == [2.0, 2.0, 2.0]
    assert "λ = 0.3" in card and "Training command" in card


def test_run_on_suv_volume_and_on_dicom_series_agree(trained, tmp_path):
    case = generate_case("pet", 7, "small")
    suv = Image(case.channels[0].array, (SPACING_MM,) * 3)   # the DICOM writer's geometry
    nifti = tmp_path / "pet_suv.nii.gz"
    write_image(suv, nifti)
    elapsed = 3600.0  # the series starts an hour after the injection
    write_pet_series(tmp_path / "dicom", suv.array / suv_factor(elapsed))
    for source, out in ((nifti, "from_nifti"), (tmp_path / "dicom", "from_dicom")):
        assert main(["run", "--task", "pet", "--model", str(trained["model"]), "--input", str(source),
                     "--out", str(tmp_path / out), "--device", "cpu"]) == 0
    a = json.loads((tmp_path / "from_nifti" / "report.json").read_text())
    b = json.loads((tmp_path / "from_dicom" / "report.json").read_text())
    assert a["suv_conversion"] is None and b["suv_conversion"]["decay_correction"] == "START"
    assert b["suv_conversion"]["decay_interval_s"] == pytest.approx(elapsed)
    assert set(a["outcome_probabilities"]) == {"good", "poor"} and set(a["pathology_probabilities"]) == {
        "esophageal", "lung"}
    assert b["outcome_probabilities"]["poor"] == pytest.approx(a["outcome_probabilities"]["poor"], abs=2e-3)
    if a["uptake"] is not None:
        assert b["uptake"]["suv_max"] == pytest.approx(a["uptake"]["suv_max"], rel=2e-3)
    for name in ("segmentation.nii.gz", "segmentation.seg.nrrd", "gradcam.nii.gz", "overview.png"):
        assert (tmp_path / "from_dicom" / name).is_file()
    assert b["gradcam_levels"] == [3, 4, 5]


def test_run_refuses_activity_volume_and_writes_nothing(trained, tmp_path, capsys):
    case = generate_case("pet", 8, "small")
    bqml = tmp_path / "bqml.nii.gz"
    write_image(case.channels[0].with_array(case.channels[0].array * 5000.0), bqml)
    assert main(["run", "--task", "pet", "--model", str(trained["model"]), "--input", str(bqml),
                 "--out", str(tmp_path / "out"), "--device", "cpu"]) != 0
    assert "Bq/ml" in capsys.readouterr().err
    assert not (tmp_path / "out" / "report.json").exists()


def test_evaluate_reports_auc_with_ci_and_delong_against_a_second_model(trained, tmp_path):
    out = tmp_path / "eval"
    assert main(["evaluate", "--task", "pet", "--model", str(trained["model"]), "--data", str(trained["data"]),
                 "--out", str(out), "--compare-to", str(trained["model"]), "--device", "cpu"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["cases"] == 6
    assert {"auc", "accuracy", "sensitivity", "specificity"} <= set(metrics["outcome"])
    assert metrics["comparison"]["delong"]["p_value"] == pytest.approx(1.0)   # a model against itself
    assert (out / "calibration.png").read_bytes()[:4] == b"\x89PNG" and (out / "roc.png").is_file()
    assert "outcome AUC (DeLong)" in (out / "metrics.md").read_text()


def test_time_limit_keeps_the_weights_so_far(trained, tmp_path):
    base = ["train", "--task", "pet", "--data", str(trained["data"]), "--val-fraction", "0", *TINY]
    assert main([*base, "--out", str(tmp_path / "limited"), "--time-limit", "0.0001"]) == 0
    manifest = json.loads((tmp_path / "limited" / "model.json").read_text())
    assert manifest["metrics"]["network"]["time_limit_reached"] is True


def test_a_cancelled_run_resumes_where_it_stopped(trained, tmp_path):
    from engine.errors import Cancelled
    from engine.tasks.pet.options import PetTrainOptions
    from engine.tasks.pet.training import train

    options = PetTrainOptions(epochs=2, steps_per_epoch=1, batch_size=2, width=2, crop_size=32, val_fraction=0.0,
                              device="cpu")

    def stop_after_first_epoch(event) -> None:
        if event.kind == "epoch" and event.epoch == 1:
            raise Cancelled("stopped by the test")

    with pytest.raises(Cancelled):
        train(trained["data"], tmp_path / "model", options, callbacks=[stop_after_first_epoch])
    assert not (tmp_path / "model").exists() and (tmp_path / ".model.work").is_dir()
    epochs = []
    bundle = train(trained["data"], tmp_path / "model", options, resume=True,
                   callbacks=[lambda e: epochs.append(e.epoch) if e.kind == "epoch" else None])
    assert epochs == [2] and bundle.metrics["network"]["epochs"] == 2
    assert not (tmp_path / ".model.work").exists()
    with pytest.raises(Exception, match="Nothing to resume"):
        train(trained["data"], tmp_path / "again", options, resume=True)
