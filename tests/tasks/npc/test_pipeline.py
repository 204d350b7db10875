"""The NPC task end to end on phantoms: command-line training, Segment & Stage in the input's geometry,
evaluation with a compared ablation, the MRI-only input check, resume and the time limit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from engine.cli import main
from engine.errors import Cancelled, ImageError, TrainingError
from engine.io.image import Image, read_image, write_image
from engine.pipelines import outputs
from engine.synth import generate_case
from engine.tasks import get_task
from engine.tasks.npc.options import NpcTrainOptions
from engine.tasks.npc.predictor import check_mri
from tests.conftest import shared_data
from tests.tasks.npc.conftest import train_tiny


def _unchecked(path: Path) -> Image:
    """A written map read without the input checks (which refuse a constant volume)."""
    return Image.from_sitk(sitk.ReadImage(str(path)))


def test_training_records_the_network_and_the_loss_weights(tiny_npc):
    arch = tiny_npc.architecture
    assert arch["variant"] == "full" and arch["learned_loss_weights"]
    assert arch["network"]["patch_size"] == [16, 32, 32]
    trajectory = tiny_npc.training["loss_weight_trajectory"]
    assert len(trajectory) == 1 and 0 < trajectory[0]["lambda_seg"] != 1.0
    assert tiny_npc.stages == ["T1", "T2", "T3", "T4"]
    assert "phantom" in tiny_npc.read_model_card()


def test_run_writes_every_output_in_the_input_geometry(tiny_npc, tmp_path):
    image = generate_case("npc", 21, "small").channels[0]
    write_image(image, tmp_path / "mri.nii.gz")
    out = tmp_path / "run"
    assert main(["run", "--task", "npc", "--input", str(tmp_path / "mri.nii.gz"), "--out", str(out),
                 "--model", str(tiny_npc.path), "--device", "cpu"]) == 0
    for name in (outputs.SEGMENTATION_FILE, outputs.SLICER_SEGMENTATION_FILE, outputs.GRADCAM_FILE,
                 outputs.REPORT_FILE, outputs.OVERVIEW_FILE):
        assert (out / name).is_file(), name
    # a one-step model may find no GTV and no evidence: read without the input checks that refuse constants
    labels, cam = _unchecked(out / outputs.SEGMENTATION_FILE), _unchecked(out / outputs.GRADCAM_FILE)
    assert labels.same_geometry(image, tolerance=1e-6) and cam.same_geometry(image, tolerance=1e-6)
    assert set(np.unique(labels.array)) <= {0, 1} and 0.0 <= cam.array.min() and cam.array.max() <= 1.0
    report = json.loads((out / outputs.REPORT_FILE).read_text())
    assert sum(report["stage_probabilities"].values()) == pytest.approx(1.0)
    assert report["predicted_stage"] in ("T1", "T2", "T3", "T4") and "GTV" in report["volumes_cm3"]


def test_evaluate_prints_the_paper_tables_and_compares_two_models(tiny_npc, npc_phantoms, tmp_path, capsys):
    ablated = train_tiny(npc_phantoms, tmp_path / "ablated", "--no-fusion", "--fixed-weights", "--plain-resnet",
                         "--no-gating")
    assert ablated.architecture["variant"] == "no-fusion-no-learned-weights-no-bot-no-gating"
    out = tmp_path / "eval"
    assert main(["evaluate", "--task", "npc", "--data", str(npc_phantoms), "--model", str(tiny_npc.path),
                 "--out", str(out), "--device", "cpu", "--compare-to", str(ablated.path)]) == 0
    printed = capsys.readouterr().out
    assert "The paper's measures" in printed and "sensitivity" in printed and "ASSD" in printed
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["n_cases"] == 4 and "p_value" in comparison["dsc_wilcoxon"]
    assert "p_value" in comparison["accuracy_mcnemar"]
    assert "DeLong p" in (out / "comparison.md").read_text()
    assert (out / "compared_model" / "metrics.json").is_file()


def test_a_ct_is_refused_with_a_clear_message(tiny_npc, tmp_path):
    ct = generate_case("gtv", 2, "small").channels[0]
    with pytest.raises(ImageError, match="input is a CT"):
        check_mri(ct)
    ct.modality = None  # a NIfTI file says nothing of its modality: the HU range gives it away
    with pytest.raises(ImageError, match="looks like a CT"):
        check_mri(ct)
    mri = generate_case("npc", 2, "small").channels[0]
    mri.modality = "CT"
    with pytest.raises(ImageError, match="needs a contrast-enhanced T1 MRI"):
        check_mri(mri)
    write_image(ct, tmp_path / "ct.nii.gz")
    with pytest.raises(ImageError):
        get_task("npc").segment(tmp_path / "ct.nii.gz", tmp_path / "out", tiny_npc, device="cpu")
    assert not (tmp_path / "out" / outputs.REPORT_FILE).exists()


def test_a_real_ct_is_refused():
    ct = read_image(shared_data("pyradiomics_lung", "lung1_image.nrrd"))
    with pytest.raises(ImageError, match="looks like a CT"):
        check_mri(ct)


def test_a_real_mri_runs_in_its_own_geometry(tiny_npc, tmp_path):
    """Out of domain (a brain MRI), but the MRI path must read, predict and restore it."""
    path = shared_data("pyradiomics_lung", "brain1_image.nrrd")
    result = get_task("npc").segment(path, tmp_path / "brain", tiny_npc, device="cpu")
    image = read_image(path)
    assert result.prediction.labels.same_geometry(image, tolerance=1e-6)
    assert _unchecked(tmp_path / "brain" / outputs.GRADCAM_FILE).same_geometry(image, tolerance=1e-6)


def _options(**changes) -> NpcTrainOptions:
    base = {"epochs": 2, "batch_size": 2, "steps_per_epoch": 1, "unet_width": 8, "unet_max_width": 16,
            "stage_width": 8, "device": "cpu", "fold": None}
    return NpcTrainOptions(**{**base, **changes})


def test_a_cancelled_training_resumes_and_refuses_other_options(npc_phantoms, tmp_path):
    from engine.tasks.npc.training import train

    calls = {"n": 0}

    def cancel_in_second_epoch() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    spacing = (6.0, 3.28, 3.28)
    with pytest.raises(Cancelled):
        train(npc_phantoms, tmp_path / "model", _options(), spacing=spacing, cancel=cancel_in_second_epoch)
    assert not (tmp_path / "model").exists() and (tmp_path / ".model.work").is_dir()
    with pytest.raises(TrainingError, match="differ"):
        train(npc_phantoms, tmp_path / "model", _options(lr=1e-3), spacing=spacing, resume=True)
    bundle = train(npc_phantoms, tmp_path / "model", _options(), spacing=spacing, resume=True)
    assert bundle.metrics["epochs"] == 2 and not (tmp_path / ".model.work").exists()


def test_the_time_limit_keeps_a_model(npc_phantoms, tmp_path):
    from engine.tasks.npc.training import train

    bundle = train(npc_phantoms, tmp_path / "model", _options(time_limit_min=1e-4), spacing=(6.0, 3.28, 3.28))
    assert bundle.metrics["time_limit_reached"] and bundle.metrics["epochs"] == 0


@pytest.mark.parametrize("bad, message", [({"unet_width": 12}, "multiple of 8"), ({"fold": 3}, "does not exist"),
                                          ({"time_limit_min": 0}, "positive")])
def test_options_a_user_can_get_wrong_are_explained(bad, message):
    with pytest.raises(TrainingError, match=message):
        _options(**bad)
