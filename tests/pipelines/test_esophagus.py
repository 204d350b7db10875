"""EsophagusStaging end to end on tiny phantoms: train (all three phases) → Segment & Stage → outputs.

One tiny model is trained once per module (coarse plan, 4-channel network, a few steps): the tests
check shapes, geometry, probabilities, Grad-CAM placement, volumes, the KRT crop, ablation switches
and bad inputs — not accuracy, which ``docs/results.md`` reports for the demo weights.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from engine.cli import main as cli_main
from engine.data.dataset import RawDataset
from engine.data.patches import nnunet_augmentation
from engine.data.splits import dataset_splits
from engine.errors import BundleError, Cancelled, EngineError, ImageError, TrainingError
from engine.explain.gradcam import grad_cam
from engine.inference.krt import bbox_centre, crop_box, krt_box
from engine.io.image import Image, read_image, write_image
from engine.io.segmentation_nrrd import read_segmentation_nrrd
from engine.pipelines import esophagus as eso
from engine.pipelines.outputs import RUN_FILES
from engine.planning import extract_fingerprint, make_plan
from engine.registry.bundle import load_bundle
from engine.synth import generate_dataset

TINY = dict(lowres_epochs=1, fullres_epochs=1, classifier_epochs=1, steps_per_epoch=2, base_features=4,
            max_features=8, folds=4, fold=0, val_every=1, device="cpu", seed=1)
SPACING = (6.0, 3.9, 3.9)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("eso")
    ds = generate_dataset("esophagus", root / "data", cases=8, seed=5)
    plan = make_plan(extract_fingerprint(ds), "esophagus", spacing=SPACING)
    bundle = eso.train(root / "data", root / "model", eso.TrainOptions(**TINY), plan=plan)
    return {"root": root, "dataset": ds, "plan": plan, "bundle": bundle,
            "predictor": eso.EsophagusPredictor(bundle, "cpu")}


def test_training_writes_a_verified_bundle_with_three_weight_files(tiny):
    bundle = load_bundle(tiny["bundle"].path, expected_task="esophagus", verify=True)
    assert set(bundle.weight_names) == {eso.LOWRES, eso.FULLRES, eso.CLASSIFIER}
    assert bundle.architecture["name"] == "nn-MTNet" and bundle.architecture["variant"] == "full"
    assert bundle.plan["krt_box_size"] == tiny["plan"].krt_box_size
    assert bundle.training["seed"] == 1 and "hardware" in bundle.training and bundle.training["command"]
    assert [lab.name for lab in bundle.labels] == ["EC", "aorta", "esophagus", "lymph node", "pericardium"]
    assert set(bundle.metrics) == {"lowres", "fullres", "classifier"}
    assert not (tiny["root"] / ".model.work").exists()  # working files are cleaned up


def test_prediction_is_in_the_original_geometry(tiny):
    case = tiny["dataset"].training[0]
    image = case.load_image()
    pred = tiny["predictor"].predict(image)
    for out in (pred.labels, pred.gradcam):
        assert out.shape == image.shape
        assert out.spacing == image.spacing and out.origin == image.origin
        np.testing.assert_array_equal(out.direction, image.direction)
    assert set(np.unique(pred.labels.array)) <= {0, 1, 2, 3, 4, 5}
    probs = np.array(list(pred.stage_probabilities.values()))
    assert list(pred.stage_probabilities) == ["T1", "T2", "T3", "T4"]
    assert probs.min() >= 0 and abs(probs.sum() - 1) < 1e-6
    assert pred.predicted_stage == max(pred.stage_probabilities, key=pred.stage_probabilities.get)
    assert list(pred.timings_s) == list(eso.INFERENCE_STEPS)


def test_volumes_equal_voxel_counts_times_voxel_volume(tiny):
    image = tiny["dataset"].training[1].load_image()
    pred = tiny["predictor"].predict(image, gradcam=False)
    voxel_cm3 = np.prod(image.spacing) / 1000
    for name, value in tiny["plan"].labels.items():
        if value:
            assert pred.volumes_cm3[name] == pytest.approx((pred.labels.array == value).sum() * voxel_cm3)
    assert pred.gradcam is None


def test_gradcam_is_in_0_1_and_lies_inside_the_krt_box(tiny):
    image = tiny["dataset"].training[2].load_image()
    pred = tiny["predictor"].predict(image)
    cam = pred.gradcam.array
    assert cam.min() >= 0 and cam.max() <= 1 and cam.dtype == np.float32
    box = pred.krt_box
    lo = np.minimum(box["first_corner_lps_mm"], box["last_corner_lps_mm"])
    hi = np.maximum(box["first_corner_lps_mm"], box["last_corner_lps_mm"])
    img = pred.gradcam.to_sitk()
    margin = np.array(image.spacing_xyz) * 2  # interpolation blurs the box edge by about a voxel
    for idx in np.argwhere(cam > 0.05)[:: max(1, int((cam > 0.05).sum() // 200))]:
        point = np.array(img.TransformIndexToPhysicalPoint([int(i) for i in idx[::-1]]))
        assert np.all(point >= lo - margin) and np.all(point <= hi + margin)


def test_stage_probabilities_average_the_in_plane_mirrorings_of_the_crop(tiny, monkeypatch):
    predictor = tiny["predictor"]
    image = tiny["dataset"].training[1].load_image()
    calls = []
    classify, member_logits = predictor.net.classify, predictor._member_logits

    def recording(ct, seg_input):
        calls.append((ct.clone(), seg_input.clone()))
        return member_logits(ct, seg_input)

    monkeypatch.setattr(predictor, "_member_logits", recording)
    plain = predictor.predict(image, gradcam=False, tta="none")
    assert len(calls) == 1 and plain.test_time_augmentation["stage_classification"] == "none"
    ct, seg_input = calls[0]
    calls.clear()
    mirrored = predictor.predict(image, gradcam=False, tta="stage")
    assert len(calls) == 4 and "4 in-plane mirrorings" in mirrored.test_time_augmentation["stage_classification"]
    assert torch.equal(calls[0][0], ct)
    assert torch.equal(calls[3][0], torch.flip(ct, (3, 4))) and torch.equal(calls[3][1], torch.flip(seg_input, (3, 4)))
    with torch.no_grad():
        expected = np.mean([torch.softmax(classify(c, s), 1)[0].numpy() for c, s in calls], axis=0)
    np.testing.assert_allclose(list(mirrored.stage_probabilities.values()), expected / expected.sum(), atol=1e-6)
    np.testing.assert_array_equal(mirrored.labels.array, plain.labels.array)  # segmentation is not mirrored
    assert mirrored.test_time_augmentation["segmentation"] == "none"


def test_full_tta_mirrors_every_segmentation_window_along_each_axis(tiny, monkeypatch):
    from engine.inference.sliding_window import SlidingWindowPredictor

    axes_used = []

    class Recording(SlidingWindowPredictor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            axes_used.append(self.mirror_axes)

    monkeypatch.setattr(eso, "SlidingWindowPredictor", Recording)
    image = tiny["dataset"].training[1].load_image()
    plain = tiny["predictor"].predict(image, gradcam=False, tta="none")
    full = tiny["predictor"].predict(image, gradcam=False, tta="all")
    assert axes_used == [(), (), (0, 1, 2), (0, 1, 2)]             # low-res and full-res windows
    assert full.labels.shape == plain.labels.shape and "3 single-axis" in full.test_time_augmentation["segmentation"]
    assert abs(sum(full.stage_probabilities.values()) - 1) < 1e-6
    with pytest.raises(EngineError, match="one of all, stage, none"):
        tiny["predictor"].predict(image, tta="mirror")


def test_krt_crop_is_centred_on_the_tumour_and_pads_outside():
    labels = np.zeros((20, 30, 30), np.uint8)
    labels[3:7, 10:16, 0:4] = 1      # tumour at the x border
    labels[8:12, 8:12, 8:12] = 3
    box = krt_box(labels, (8, 8, 8), tumour_label=1, fallback_label=3)
    assert box.source == "tumour"
    assert box.centre == bbox_centre(labels == 1) == (4.5, 12.5, 1.5)
    crop = crop_box(labels[None].astype(np.float32), box, pad_value=-1)[0]
    assert crop.shape == (8, 8, 8)
    assert (crop == -1).any()                     # the box leaves the volume at x < 0
    zz, yy, xx = np.nonzero(crop == 1)
    assert np.mean(zz) == pytest.approx(3.5) and np.mean(yy) == pytest.approx(3.5)
    labels[labels == 1] = 0
    assert krt_box(labels, (8, 8, 8), 1, 3).source == "esophagus"
    assert krt_box(np.zeros_like(labels), (8, 8, 8), 1, 3).source == "volume"


def test_segment_and_stage_writes_every_output_consistently(tiny, tmp_path):
    case = tiny["dataset"].training[3]
    result = eso.segment_and_stage(case.image_files[0], tmp_path / "run", tiny["predictor"])
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(RUN_FILES)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
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
    eso.segment_and_stage(case.image_files[0], out, tiny["predictor"], gradcam=False)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(EngineError, match="already holds results"):
        eso.segment_and_stage(case.image_files[0], out, tiny["predictor"])
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    eso.segment_and_stage(case.image_files[0], out, tiny["predictor"], overwrite=True)
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
        eso.segment_and_stage(path, tmp_path / "out", tiny["predictor"])
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_model_of_another_task_and_tampered_model_are_refused(tiny, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny["bundle"].path, other)
    manifest = json.loads((other / "model.json").read_text())
    manifest["task"] = "npc"
    (other / "model.json").write_text(json.dumps(manifest))
    image_path = tiny["dataset"].training[0].image_files[0]
    with pytest.raises(BundleError, match="npc"):
        eso.segment_and_stage(image_path, tmp_path / "out1", other)
    tampered = tmp_path / "tampered"
    shutil.copytree(tiny["bundle"].path, tampered)
    weights = tampered / f"{eso.CLASSIFIER}.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError):
        eso.segment_and_stage(image_path, tmp_path / "out2", tampered)
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()


def test_cancel_leaves_no_outputs(tiny, tmp_path):
    case = tiny["dataset"].training[0]
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(EngineError, match="cancel"):
        eso.segment_and_stage(case.image_files[0], tmp_path / "run", tiny["predictor"], cancel=cancel)
    assert not any((tmp_path / "run").glob("*")) if (tmp_path / "run").exists() else True


def test_batch_run_from_a_folder_writes_a_summary(tiny, tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    for case in tiny["dataset"].training[:2]:
        (folder / case.image_files[0].name).symlink_to(case.image_files[0])
    (folder / "broken.nii.gz").write_bytes(b"not an image")
    summary = eso.run_batch(folder, tmp_path / "batch", tiny["bundle"], device="cpu", gradcam=False)
    import csv

    rows = list(csv.DictReader(summary.open()))
    assert [r["status"] for r in rows] == ["error", "ok", "ok"]
    assert rows[1]["predicted_stage"] in ("T1", "T2", "T3", "T4")
    assert (tmp_path / "batch" / rows[1]["case"] / "report.json").exists()


def test_ablation_switches_change_the_model():
    from engine.models.nn_mtnet import ClassifierOptions, NetworkSpec, NnMTNet

    spec = NetworkSpec(7, 6, [4, 8, 8], [[3, 3, 3]] * 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2]])
    full = NnMTNet(spec, ClassifierOptions(attention=True))
    plain = NnMTNet(spec, ClassifierOptions(attention=False))
    assert full.classifier.uses_attention and not plain.classifier.uses_attention
    assert sum(p.numel() for p in full.classifier.parameters()) > sum(p.numel() for p in plain.classifier.parameters())
    ct, seg_in = torch.randn(1, 1, 16, 16, 16), torch.randn(1, 7, 16, 16, 16)
    assert full.classify(ct, seg_in).shape == plain.classify(ct).shape == (1, 4)
    # transfer copies the trained segmentation encoder (CT channel of the first convolutions)
    before = full.classifier.encoder.stages[1].conv1.conv.weight.clone()
    assert full.transfer_encoder() > 0
    assert not torch.equal(before, full.classifier.encoder.stages[1].conv1.conv.weight)
    torch.testing.assert_close(full.classifier.encoder.stages[1].conv1.conv.weight,
                               full.segmentation.encoder.stages[1].conv1.conv.weight)
    torch.testing.assert_close(full.classifier.encoder.stages[0].conv1.conv.weight,
                               full.segmentation.encoder.stages[0].conv1.conv.weight[:, :1])
    options = {v: eso.TrainOptions(**flags) for v, flags in {
        "full": {}, "no-krt": {"krt": False}, "no-attention": {"attention": False},
        "no-transfer": {"transfer": False}, "direct-3d": {"direct_3d": True}}.items()}
    assert {v: o.variant for v, o in options.items()} == {v: v for v in options}
    d3 = options["direct-3d"]
    assert not (d3.krt or d3.attention or d3.transfer)


@pytest.mark.slow
def test_no_krt_variant_trains_and_classifies_the_whole_volume(tiny, tmp_path):
    bundle = eso.train(tiny["root"] / "data", tmp_path / "model",
                       eso.TrainOptions(**{**TINY, "krt": False, "attention": False}), plan=tiny["plan"])
    assert bundle.architecture["krt"] is False and bundle.architecture["whole_volume_size"]
    pred = eso.EsophagusPredictor(bundle, "cpu").predict(tiny["dataset"].training[0].load_image())
    assert pred.krt_box["centred_on"] == "volume"
    assert abs(sum(pred.stage_probabilities.values()) - 1) < 1e-6


def test_classifier_only_training_reuses_the_segmentation_networks(tiny, tmp_path):
    source = tiny["bundle"]
    options = eso.TrainOptions(**{**TINY, "attention": False, "seed": 2, "segmentation_from": str(source.path),
                                  "lowres_epochs": 0, "fullres_epochs": 0})
    bundle = eso.train(tiny["root"] / "data", tmp_path / "no_attention", options)
    for name in (eso.LOWRES, eso.FULLRES):  # segmentation untouched, bit for bit
        for key, value in source.load_state_dict(name).items():
            assert torch.equal(value, bundle.load_state_dict(name)[key]), (name, key)
    assert bundle.plan == source.plan and bundle.architecture["fullres"] == source.architecture["fullres"]
    assert bundle.architecture["variant"] == "no-attention"
    assert bundle.training["segmentation_from"]["id"] == source.id
    assert bundle.metrics["fullres"] == source.metrics["fullres"]
    # a second plan would contradict the reused networks
    with pytest.raises(EngineError, match="plan"):
        eso.train(tiny["root"] / "data", tmp_path / "x", options, plan=tiny["plan"])
    assert not (tmp_path / "x").exists()


def test_classifier_validation_mirrors_the_crop_as_inference_does(tiny, tmp_path, monkeypatch):
    from engine.training.tasks import ClassificationTask

    tasks = []

    class Recording(ClassificationTask):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            tasks.append(self)

    calls = []

    class RecordingWindow(eso.SlidingWindowPredictor):
        def __call__(self, model, image, cancel=None):
            calls.append((tuple(self.patch_size), self.mirror_axes))
            return super().__call__(model, image, cancel)

    monkeypatch.setattr(eso, "ClassificationTask", Recording)
    monkeypatch.setattr(eso, "SlidingWindowPredictor", RecordingWindow)
    options = eso.TrainOptions(**{**TINY, "segmentation_from": str(tiny["bundle"].path), "lowres_epochs": 0,
                                  "fullres_epochs": 0})
    eso.train(tiny["root"] / "data", tmp_path / "model", options)
    assert [t.mirror_axes for t in tasks] == [eso.CLASSIFIER_MIRROR_AXES]
    # the validation cases' cascade prior and KRT boxes come from mirrored windows, as Segment & Stage's
    # default makes them; the training cases' prior from the plain low-resolution window (held-out
    # cases get no plain prior when, as here, the full-resolution phase is not trained)
    n_cases = len(list((tiny["root"] / "data" / "imagesTr").iterdir()))
    n_val = len(dataset_splits(RawDataset.load(tiny["root"] / "data"), folds=TINY["folds"],
                               seed=TINY["seed"])[TINY["fold"]]["val"])
    plan = tiny["bundle"].plan["configurations"]
    low, full = (tuple(plan[k]["patch_size"]) for k in ("3d_lowres", "3d_fullres"))
    mirrored = eso.SEGMENTATION_MIRROR_AXES
    assert calls.count((low, ())) == n_cases - n_val
    assert calls.count((low, mirrored)) == calls.count((full, mirrored)) == n_val > 0


def test_segmentation_from_with_epochs_fine_tunes_that_phase(tiny, tmp_path, capsys):
    source = tiny["bundle"]
    assert cli_main(["train", "--task", "esophagus", "--data", str(tiny["root"] / "data"),
                     "--out", str(tmp_path / "tuned"), "--segmentation-from", str(source.path),
                     "--lowres-epochs", "0", "--fullres-epochs", "1", "--classifier-epochs", "1",
                     "--steps-per-epoch", "2", "--fold", "0", "--folds", "4", "--device", "cpu"]) == 0
    tuned = load_bundle(tmp_path / "tuned", verify=True)
    low_src, low_new = source.load_state_dict(eso.LOWRES), tuned.load_state_dict(eso.LOWRES)
    assert all(torch.equal(low_src[k], low_new[k]) for k in low_src)  # 0 epochs: kept
    full_src, full_new = source.load_state_dict(eso.FULLRES), tuned.load_state_dict(eso.FULLRES)
    assert any(not torch.equal(full_src[k], full_new[k]) for k in full_src)  # trained on
    assert tuned.training["options"]["fullres_epochs"] == 1
    assert tuned.plan == source.plan  # a kept network keeps the normalisation it was trained with


def test_cli_perturb_prior_reaches_the_full_resolution_augmentation(tiny, tmp_path, monkeypatch):
    """``--perturb-prior`` adds nnU-Net's prior perturbation to the full-resolution phase, and only there."""
    built = []

    def recording(*args, **kwargs):
        aug = nnunet_augmentation(*args, **kwargs)
        built.append((kwargs.get("prior_channels", 0), [type(t).__name__ for t in aug.transforms]))
        return aug

    monkeypatch.setattr(eso, "nnunet_augmentation", recording)
    for flag, out in (([], "plain"), (["--perturb-prior"], "perturbed")):
        built.clear()
        assert cli_main(["train", "--task", "esophagus", "--data", str(tiny["root"] / "data"),
                         "--out", str(tmp_path / out), "--segmentation-from", str(tiny["bundle"].path),
                         "--lowres-epochs", "0", "--fullres-epochs", "1", "--classifier-epochs", "1",
                         "--steps-per-epoch", "2", "--fold", "0", "--folds", "4", "--device", "cpu", *flag]) == 0
        assert [prior for prior, _ in built] == [tiny["bundle"].architecture["fullres"]["in_channels"] - 1]
        assert ("RandPerturbPriord" in built[0][1]) == bool(flag)
        assert load_bundle(tmp_path / out).training["options"]["perturb_prior"] == bool(flag)


def test_fine_tuning_both_phases_renormalises_on_the_new_dataset(tiny, tmp_path):
    """nnU-Net-style plan transfer: the source's networks and configurations, the new data's intensities."""
    source = tiny["bundle"]
    other = generate_dataset("esophagus", tmp_path / "other", cases=4, seed=11)
    options = eso.TrainOptions(**{**TINY, "segmentation_from": str(source.path)})
    tuned = eso.train(tmp_path / "other", tmp_path / "tuned", options)
    expected = make_plan(extract_fingerprint(other), "esophagus").normalization
    assert tuned.plan["normalization"] == dataclasses.asdict(expected) != source.plan["normalization"]
    assert tuned.plan["configurations"] == source.plan["configurations"]
    assert tuned.architecture["fullres"] == source.architecture["fullres"]
    assert tuned.plan["fingerprint"]["dataset_name"] == other.description.name


def test_best_classifier_checkpoint_is_the_best_validated_epoch(tiny, tmp_path):
    source = tiny["bundle"]
    base = {**TINY, "segmentation_from": str(source.path), "lowres_epochs": 0, "fullres_epochs": 0,
            "classifier_epochs": 4, "seed": 3}
    final = eso.train(tiny["root"] / "data", tmp_path / "final", eso.TrainOptions(**base))
    best = eso.train(tiny["root"] / "data", tmp_path / "best",
                     eso.TrainOptions(**base, classifier_checkpoint="best"))
    epoch = best.metrics["classifier"]["epoch"]
    assert isinstance(epoch, int) and 1 <= epoch <= 4
    auc_best, auc_final = best.metrics["classifier"]["val_auc"], final.metrics["classifier"]["val_auc"]
    assert auc_best >= auc_final or np.isnan(auc_final)
    # the same run (same seed) up to the choice: the weights are the final ones only if the last epoch won
    same = all(torch.equal(v, best.load_state_dict(eso.CLASSIFIER)[k])
               for k, v in final.load_state_dict(eso.CLASSIFIER).items())
    assert same == (epoch == 4)
    assert f", epoch {epoch}\n" in (best.path / "MODEL_CARD.md").read_text()
    with pytest.raises(TrainingError, match="validation fold"):
        eso.TrainOptions(**{**base, "fold": None}, classifier_checkpoint="best")
    with pytest.raises(TrainingError, match="classifier_checkpoint"):
        eso.TrainOptions(**base, classifier_checkpoint="latest")


def test_cli_segmentation_from_keeps_the_segmentation_unless_epochs_are_given(tiny, tmp_path):
    """Also loads the classifier's batches in a worker process (``--num-workers``, as on a GPU machine)."""
    source = tiny["bundle"]
    assert cli_main(["train", "--task", "esophagus", "--data", str(tiny["root"] / "data"),
                     "--out", str(tmp_path / "cls"), "--segmentation-from", str(source.path), "--epochs", "1",
                     "--steps-per-epoch", "2", "--fold", "0", "--folds", "4", "--device", "cpu",
                     "--num-workers", "1"]) == 0
    options = load_bundle(tmp_path / "cls").training["options"]
    assert (options["lowres_epochs"], options["fullres_epochs"], options["classifier_epochs"]) == (0, 0, 1)
    assert options["num_workers"] == 1


def test_interrupted_training_resumes_to_the_same_model(tiny, tmp_path):
    data, options = tiny["root"] / "data", eso.TrainOptions(**{**TINY, "classifier_epochs": 2})
    reference = eso.train(data, tmp_path / "reference", options, plan=tiny["plan"])
    stop = {"now": False}

    def stop_after_first_classifier_epoch(event):
        if event.kind == "epoch" and event.epoch == 1 and (event.message or "").startswith("classifier"):
            stop["now"] = True

    out = tmp_path / "model"
    with pytest.raises(Cancelled):
        eso.train(data, out, options, plan=tiny["plan"], callbacks=[stop_after_first_classifier_epoch],
                  cancel=lambda: stop["now"])
    work = tmp_path / ".model.work"
    assert not out.exists() and (work / "classifier" / "checkpoints" / "last").is_dir()
    with pytest.raises(TrainingError, match="seed"):  # resuming needs the same options
        eso.train(data, out, eso.TrainOptions(**{**TINY, "classifier_epochs": 2, "seed": 9}),
                  plan=tiny["plan"], resume=True)
    epochs_run = []
    resumed = eso.train(data, out, options, plan=tiny["plan"], resume=True,
                        callbacks=[lambda e: epochs_run.append((e.message.split(":")[0], e.epoch))
                                   if e.kind == "epoch" else None])
    assert epochs_run == [("classifier", 2)]  # only what was missing: no phase started over
    assert not work.exists()  # cleaned up once the bundle is written
    for name in (eso.LOWRES, eso.FULLRES, eso.CLASSIFIER):  # bit for bit the uninterrupted run's model
        ref, new = reference.load_state_dict(name), resumed.load_state_dict(name)
        assert all(torch.equal(ref[k], new[k]) for k in ref), name
    assert resumed.metrics["fullres"] == pytest.approx(reference.metrics["fullres"])  # from history.csv
    assert resumed.metrics["classifier"] == pytest.approx(reference.metrics["classifier"])
    with pytest.raises(TrainingError, match="Nothing to resume"):
        eso.train(data, tmp_path / "never_started", options, plan=tiny["plan"], resume=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "reference"]  # refusals wrote nothing


def test_a_new_run_clears_an_earlier_runs_checkpoints_and_a_resume_keeps_them(tmp_path):
    work = tmp_path / ".model.work"
    (work / "fullres" / "checkpoints" / "last").mkdir(parents=True)  # left by an earlier, other run
    eso._record_run(work, {"seed": 1}, resume=True)
    assert (work / "fullres" / "checkpoints" / "last").is_dir()
    eso._record_run(work, {"seed": 2}, resume=False)
    assert sorted(p.name for p in work.iterdir()) == [eso.RUN_OPTIONS_FILE]
    assert json.loads((work / eso.RUN_OPTIONS_FILE).read_text()) == {"seed": 2}


def test_zero_epochs_need_a_model_to_start_from():
    with pytest.raises(EngineError, match="segmentation-from"):
        eso.TrainOptions(fullres_epochs=0)


def test_classifier_only_training_refuses_a_dataset_with_other_labels(tiny, tmp_path):
    import shutil

    other = tmp_path / "renamed"
    shutil.copytree(tiny["root"] / "data", other)
    meta = json.loads((other / "dataset.json").read_text())
    meta["labels"] = {("mediastinal node" if k == "lymph node" else k): v for k, v in meta["labels"].items()}
    (other / "dataset.json").write_text(json.dumps(meta))
    options = eso.TrainOptions(**{**TINY, "segmentation_from": str(tiny["bundle"].path)})
    with pytest.raises(EngineError, match="same labels"):
        eso.train(other, tmp_path / "model", options)
    assert not (tmp_path / "model").exists() and not (tmp_path / ".model.work").exists()


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
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics
    assert "mean over 4 in-plane mirrorings" in (tmp_path / "eval" / "metrics.md").read_text()
    assert cli_main(["evaluate", "--task", "esophagus", "--data", str(tiny["root"] / "data"), "--model", model,
                     "--out", str(tmp_path / "eval_plain"), "--device", "cpu", "--tta", "none"]) == 0
    assert "stage classification: none" in (tmp_path / "eval_plain" / "metrics.md").read_text()
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
    report = json.loads((tmp_path / "demo" / "segment_and_stage" / "report.json").read_text())
    assert report["model"]["id"] == tiny["bundle"].id


@pytest.fixture(scope="module")
def second_member(tiny, tmp_path_factory):
    """A second classifier on the tiny model's segmentation (another seed): an ensemble member."""
    options = eso.TrainOptions(**{**TINY, "seed": 3, "segmentation_from": str(tiny["bundle"].path),
                                  "lowres_epochs": 0, "fullres_epochs": 0})
    return eso.train(tiny["root"] / "data", tmp_path_factory.mktemp("member") / "second", options)


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
    ensemble = eso.ensemble_classifiers([first.path, second_member.path], tmp_path / "ensemble",
                                        model_id="eso-ensemble", version="2.0.0")
    assert eso.classifier_weight_names(ensemble) == [eso.CLASSIFIER, f"{eso.CLASSIFIER}_2"]
    for name, member in ((eso.CLASSIFIER, first), (f"{eso.CLASSIFIER}_2", second_member)):
        assert ensemble.weight_file(name).sha256 == member.weight_file(eso.CLASSIFIER).sha256
    for name in (eso.LOWRES, eso.FULLRES):
        assert ensemble.weight_file(name).sha256 == first.weight_file(name).sha256
    assert ensemble.metrics["classifier"]["members"] == 2
    assert [m["seed"] for m in ensemble.training["classifier_ensemble"]] == [1, 3]
    card = ensemble.read_model_card()
    assert "mean probabilities of 2 stage classifiers" in card
    assert "| 0 | 3 | 1 |" in card  # the second member's fold, seed and epochs

    image = tiny["dataset"].training[3].load_image()
    by_ensemble = eso.EsophagusPredictor(ensemble, "cpu").predict(image, gradcam=False, tta="stage")
    singles = [eso.EsophagusPredictor(b, "cpu").predict(image, gradcam=False, tta="stage")
               for b in (first, second_member)]
    expected = np.mean([list(p.stage_probabilities.values()) for p in singles], axis=0)
    np.testing.assert_allclose(list(by_ensemble.stage_probabilities.values()), expected, atol=1e-6)
    assert by_ensemble.predicted_stage == eso.STAGES[int(np.argmax(expected))]
    np.testing.assert_array_equal(by_ensemble.labels.array, singles[0].labels.array)  # first's segmentation
    for member, single in zip(by_ensemble.member_stage_probabilities, singles, strict=True):
        assert member == pytest.approx(single.stage_probabilities, abs=1e-6)
    assert singles[0].member_stage_probabilities == []
    report = eso.build_report(by_ensemble, ensemble, image, "x")
    assert report["model"]["stage_classifiers"] == 2 and len(report["member_stage_probabilities"]) == 2
    assert "member_stage_probabilities" not in eso.build_report(singles[0], first, image, "x")


def test_ensemble_gradcam_is_the_renormalised_mean_of_its_members_maps(tiny, second_member, tmp_path):
    ensemble = eso.EsophagusPredictor(
        eso.ensemble_classifiers([tiny["bundle"].path, second_member.path], tmp_path / "ensemble"), "cpu")
    singles = [tiny["predictor"], eso.EsophagusPredictor(second_member, "cpu")]
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
        eso.ensemble_classifiers([first.path], out)
    with pytest.raises(EngineError, match="identical"):
        eso.ensemble_classifiers([first.path, first.path], out)
    retrained = _resaved(second_member, tmp_path / "retrained", offsets={eso.FULLRES: 1e-3})
    with pytest.raises(EngineError, match="segmentation-from"):
        eso.ensemble_classifiers([first.path, retrained.path], out)
    box = [k + 4 for k in second_member.plan["krt_box_size"]]
    replanned = _resaved(second_member, tmp_path / "replanned",
                         plan={**second_member.plan, "krt_box_size": box})
    with pytest.raises(EngineError, match="plan"):
        eso.ensemble_classifiers([first.path, replanned.path], out)
    assert not out.exists()
    nested = eso.ensemble_classifiers([first.path, second_member.path], tmp_path / "nested")
    with pytest.raises(EngineError, match="identical"):  # an ensemble's members count as classifiers
        eso.ensemble_classifiers([nested.path, second_member.path], out)
    assert not out.exists()


def test_an_ensemble_of_an_ensemble_keeps_every_classifiers_own_record(tiny, second_member, tmp_path):
    nested = eso.ensemble_classifiers([tiny["bundle"].path, second_member.path], tmp_path / "nested")
    third = _resaved(second_member, tmp_path / "third", offsets={eso.CLASSIFIER: 1e-3})
    ensemble = eso.ensemble_classifiers([nested.path, third.path], tmp_path / "ensemble")
    records = ensemble.training["classifier_ensemble"]
    assert len(records) == len(eso.classifier_weight_names(ensemble)) == 3
    assert [r["seed"] for r in records] == [1, 3, 3]
    assert [r["path"] for r in records[:2]] == [str(tiny["bundle"].path), str(second_member.path)]
    assert all(r["validation"] for r in records)
    rows = [line for line in ensemble.read_model_card().splitlines() if line.startswith("| ")][-3:]
    assert len(rows) == 3 and not any("–" in row for row in rows)


def test_a_half_precision_ensemble_stages_like_the_full_precision_one(tiny, second_member, tmp_path):
    members = [tiny["bundle"].path, second_member.path]
    full = eso.ensemble_classifiers(members, tmp_path / "full")
    half = eso.ensemble_classifiers(members, tmp_path / "half", weights_dtype="float16")
    full_bytes, half_bytes = (sum(w.bytes for w in b.weights) for b in (full, half))
    assert half_bytes < 0.6 * full_bytes
    assert "float16" in half.read_model_card()
    image = tiny["dataset"].training[3].load_image()
    by_full, by_half = (eso.EsophagusPredictor(b, "cpu").predict(image, gradcam=False, tta="stage")
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
    result = eso.segment_and_stage(image_path, tmp_path / "run", bundle, device="cpu")
    assert sum(result.report["stage_probabilities"].values()) == pytest.approx(1.0)
    files = eso.evaluate(tiny["root"] / "data", tmp_path / "eval", bundle, device="cpu", tta="none")
    metrics = json.loads(files["json"].read_text())
    assert len(metrics["member_classification"]) == 2 and "stage classifiers" in metrics["metadata"]
    assert "### Ensemble members" in files["markdown"].read_text()


def test_model_card_dice_table_writes_unscored_structures_as_n_a():
    """A structure absent from the held-out fold has no Dice (NaN, or no entry): "n/a", never "nan"."""
    rows = eso._dice_table({"fullres": {"dice": 0.9, "dice_EC": float("nan"), "dice_aorta": 0.95},
                            "lowres": {"dice": 0.8, "dice_aorta": 0.875}, "classifier": {"auc": 0.9}})
    assert rows[2] == "| stage | mean | EC | aorta |"
    assert rows[4:] == ["| fullres | 0.900 | n/a | 0.950 |", "| lowres | 0.800 | n/a | 0.875 |", ""]
