"""GTV task end to end on phantoms through the command line (train → run → evaluate), slice flags,
ablation switches and the OpenKBP GTV converter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from engine.cli import main
from engine.data.dataset import RawDataset
from engine.registry import load_bundle
from engine.synth import generate_dataset
from engine.tasks.gtv.networks import architecture_record
from engine.tasks.gtv.options import GtvTrainOptions
from engine.tasks.gtv.slices import load_slices, sample_count
from tests.conftest import shared_data

TINY = ["--epochs", "1", "--width", "8", "--image-size", "64", "--steps-per-epoch", "1", "--device", "cpu",
        "--fold", "all", "--demo"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks run fastest on one thread, especially on a shared, busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gtv") / "data"
    generate_dataset("gtv", root, cases=4, seed=3)
    return root


def test_slice_flags_follow_the_labels(phantoms):
    ds = RawDataset.load(phantoms)
    slices, plan = load_slices(ds.training[:2], {"background": 0, "GTV": 1}, image_size=96)
    assert plan.image_size == 96 and slices.images.dtype == np.float16
    for i, case in enumerate(ds.training[:2]):
        ref = case.load_label().array
        # phantoms are stored LPS with z ascending, so input slice order is the canonical one
        assert np.array_equal(slices.abnormal[slices.case_index == i], ref.reshape(ref.shape[0], -1).any(1))
    assert sample_count(slices.abnormal, "abnormal") == int(slices.abnormal.sum())
    assert sample_count(slices.abnormal, "1:1") == 2 * int(slices.abnormal.sum())
    assert sample_count(slices.abnormal, "natural") == len(slices)


def test_ablation_switches_are_recorded():
    full = architecture_record(GtvTrainOptions(width=8))
    assert full["classifier"] and full["segmenter"]["use_sam"] and full["segmenter"]["use_ppm"]
    assert full["loss"] == "CR" and full["variant"] == "hcf"
    ablated = architecture_record(GtvTrainOptions(width=8, use_classifier=False, use_sam=False, use_ppm=False,
                                                  cr_loss=False))
    assert ablated["classifier"] is None and not ablated["classifier_gate"]
    assert not ablated["segmenter"]["use_sam"] and not ablated["segmenter"]["use_ppm"]
    assert ablated["loss"] == "Dice+CE" and ablated["variant"] == "hcf-no_classifier-no_sam-no_ppm-no_cr"
    res = architecture_record(GtvTrainOptions(width=8, architecture="resformer"))
    assert res["name"] == "ResFormer" and "resformer" in res and "segmenter" not in res


def test_cli_train_run_evaluate(phantoms, tmp_path):
    model = tmp_path / "model"
    assert main(["train", "--task", "gtv", "--data", str(phantoms), "--out", str(model), *TINY]) == 0
    bundle = load_bundle(model)
    assert bundle.task == "gtv" and bundle.stages is None
    assert {w.name for w in bundle.weights} == {"classifier", "segmenter"}
    assert bundle.plan["image_size"] == 64 and bundle.plan["threshold"] == 0.5
    assert "OpenKBP" not in (bundle.read_model_card() or "") and "Training command" in bundle.read_model_card()

    image = min((phantoms / "imagesTr").iterdir())
    out = tmp_path / "run"
    assert main(["run", "--task", "gtv", "--input", str(image), "--out", str(out), "--model", str(model),
                 "--device", "cpu"]) == 0
    for name in ("segmentation.nii.gz", "segmentation.seg.nrrd", "gradcam.nii.gz", "overview.png", "report.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    n_slices = report["input"]["shape"][2]
    assert len(report["slice_probabilities"]) == n_slices == 48
    assert all(0.0 <= p <= 1.0 for p in report["slice_probabilities"])
    assert all(0 <= k < n_slices for k in report["slices_kept"]) and report["slice_threshold"] == 0.5
    assert set(report["volumes_cm3"]) == {"GTV"}
    # Grad-CAM: each slice's map is scaled by its GTV probability, zero on dropped slices and in the air
    cam, ct = (sitk.GetArrayFromImage(sitk.ReadImage(str(f))) for f in (out / "gradcam.nii.gz", image))
    peaks = cam.reshape(n_slices, -1).max(axis=1)
    probabilities = np.asarray(report["slice_probabilities"])
    assert np.all(peaks <= probabilities + 1e-4) and peaks.max() > 0
    assert not np.delete(peaks, report["slices_kept"]).any()
    air = ct < -900  # outside the body (and in the lungs) only the resampling edge of a map remains
    assert cam[air].mean() < 0.1 * cam[~air].mean(), (cam[air].mean(), cam[~air].mean())

    ev = tmp_path / "eval"
    assert main(["evaluate", "--task", "gtv", "--data", str(phantoms), "--model", str(model), "--out", str(ev),
                 "--device", "cpu"]) == 0
    metrics = json.loads((ev / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["n_cases"] == 4 and metrics["structures"][0]["name"] == "GTV"
    cls = metrics["metadata"]["slice_classification"]
    assert cls["slices"] == 4 * 48 and 0 <= cls["recall"]["ci95"][0] <= cls["recall"]["value"] <= 1
    assert "Slice classifier" in (ev / "metrics.md").read_text(encoding="utf-8")

    split = tmp_path / "split.json"
    ids = sorted(c.case_id for c in RawDataset.load(phantoms).training)
    split.write_text(json.dumps({"train": ids[:2], "val": ids[2:]}))
    assert main(["evaluate", "--task", "gtv", "--data", str(phantoms), "--model", str(model), "--out",
                 str(tmp_path / "eval_val"), "--device", "cpu", "--split", str(split)]) == 0
    held_out = json.loads((tmp_path / "eval_val" / "metrics.json").read_text(encoding="utf-8"))
    assert [c["case_id"] for c in held_out["cases"]] == ids[2:]


def test_ablation_bundle_without_classifier(phantoms, tmp_path):
    model = tmp_path / "noclf"
    assert main(["train", "--task", "gtv", "--data", str(phantoms), "--out", str(model), *TINY,
                 "--no-classifier", "--no-sam", "--no-cr-loss"]) == 0
    bundle = load_bundle(model)
    assert {w.name for w in bundle.weights} == {"segmenter"}
    assert bundle.architecture["variant"] == "hcf-no_classifier-no_sam-no_cr"
    assert bundle.architecture["segmenter"]["use_sam"] is False


def test_openkbp_gtv_from_ptv70(tmp_path):
    src = shared_data("openkbp", "train")
    out = tmp_path / "openkbp_gtv"
    assert main(["convert-openkbp", str(src), "--out", str(out), "--cases", "2", "--gtv-from", "PTV70"]) == 0
    ds = RawDataset.load(out)
    assert ds.description.labels == {"background": 0, "GTV": 1}
    assert [c.case_id for c in ds.training] == ["openkbp_1", "openkbp_2"]
    for case in ds.training:
        label = case.load_label().array
        assert set(np.unique(label)) <= {0, 1} and label.any()
    split = json.loads(Path("engine/tasks/gtv/openkbp_split.json").read_text(encoding="utf-8"))
    assert len(split["train"]) == 136 and len(split["val"]) == 34 and not set(split["train"]) & set(split["val"])


def test_fixed_split_selects_present_cases(tmp_path):
    from types import SimpleNamespace

    from engine.tasks.gtv.openkbp import SPLIT_FILE
    from engine.tasks.gtv.training import choose_split

    fixed = json.loads(SPLIT_FILE.read_text(encoding="utf-8"))
    ids = sorted(fixed["train"] + fixed["val"], key=lambda c: int(c.split("_")[1]))[:40]
    ds = SimpleNamespace(training=[SimpleNamespace(case_id=i) for i in [*ids, "openkbp_9999"]])
    train, val = choose_split(ds, GtvTrainOptions(split=str(SPLIT_FILE)))
    assert sorted(train + val, key=ids.index) == ids and val and not set(train) & set(val)
    assert set(val) <= set(fixed["val"])
    again = choose_split(ds, GtvTrainOptions(split=str(SPLIT_FILE)))
    assert again == (train, val)
