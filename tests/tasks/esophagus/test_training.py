"""nn-TransEC training on tiny phantoms: the three phases, ablations, reused and fine-tuned segmentation, resume."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from engine.cli import main as cli_main
from engine.data.dataset import RawDataset
from engine.data.patches import nnunet_augmentation
from engine.data.splits import dataset_splits
from engine.errors import Cancelled, EngineError, TrainingError
from engine.inference.sliding_window import SlidingWindowPredictor
from engine.planning import extract_fingerprint, make_plan
from engine.registry import load_bundle
from engine.synth import generate_dataset
from engine.tasks.esophagus import training
from engine.tasks.esophagus.options import (CLASSIFIER, CLASSIFIER_MIRROR_AXES, FULLRES, LOWRES,
                                            SEGMENTATION_MIRROR_AXES, TrainOptions)
from engine.tasks.esophagus.predictor import EsophagusPredictor
from engine.tasks.esophagus.training import train



def test_training_writes_a_verified_bundle_with_three_weight_files(tiny):
    bundle = load_bundle(tiny["bundle"].path, expected_task="esophagus", verify=True)
    assert set(bundle.weight_names) == {LOWRES, FULLRES, CLASSIFIER}
    assert bundle.architecture["name"] == "nn-MTNet" and bundle.architecture["variant"] == "full"
    assert bundle.plan["krt_box_size"] == tiny["plan"].krt_box_size
    assert bundle.training["seed"] == 1 and "hardware" in bundle.training and bundle.training["command"]
    assert [lab.name for lab in bundle.labels] == ["EC", "aorta", "esophagus", "lymph node", "pericardium"]
    assert set(bundle.metrics) == {"lowres", "fullres", "classifier"}
    assert not (tiny["root"] / ".model.work").exists()  # working files are cleaned up


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
    options = {v: TrainOptions(**flags) for v, flags in {
        "full": {}, "no-krt": {"krt": False}, "no-attention": {"attention": False},
        "no-transfer": {"transfer": False}, "direct-3d": {"direct_3d": True}}.items()}
    assert {v: o.variant for v, o in options.items()} == {v: v for v in options}
    d3 = options["direct-3d"]
    assert not (d3.krt or d3.attention or d3.transfer)


@pytest.mark.slow
def test_no_krt_variant_trains_and_classifies_the_whole_volume(tiny, tmp_path):
    bundle = train(tiny["root"] / "data", tmp_path / "model",
                       TrainOptions(**{**tiny["options"], "krt": False, "attention": False}), plan=tiny["plan"])
    assert bundle.architecture["krt"] is False and bundle.architecture["whole_volume_size"]
    pred = EsophagusPredictor(bundle, "cpu").predict(tiny["dataset"].training[0].load_image())
    assert pred.krt_box["centred_on"] == "volume"
    assert abs(sum(pred.stage_probabilities.values()) - 1) < 1e-6


def test_classifier_only_training_reuses_the_segmentation_networks(tiny, tmp_path):
    source = tiny["bundle"]
    options = TrainOptions(**{**tiny["options"], "attention": False, "seed": 2, "segmentation_from": str(source.path),
                                  "lowres_epochs": 0, "fullres_epochs": 0})
    bundle = train(tiny["root"] / "data", tmp_path / "no_attention", options)
    for name in (LOWRES, FULLRES):  # segmentation untouched, bit for bit
        for key, value in source.load_state_dict(name).items():
            assert torch.equal(value, bundle.load_state_dict(name)[key]), (name, key)
    assert bundle.plan == source.plan and bundle.architecture["fullres"] == source.architecture["fullres"]
    assert bundle.architecture["variant"] == "no-attention"
    assert bundle.training["segmentation_from"]["id"] == source.id
    assert bundle.metrics["fullres"] == source.metrics["fullres"]
    # a second plan would contradict the reused networks
    with pytest.raises(EngineError, match="plan"):
        train(tiny["root"] / "data", tmp_path / "x", options, plan=tiny["plan"])
    assert not (tmp_path / "x").exists()


def test_classifier_validation_mirrors_the_crop_as_inference_does(tiny, tmp_path, monkeypatch):
    from engine.training.tasks import ClassificationTask

    tasks = []

    class Recording(ClassificationTask):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            tasks.append(self)

    calls = []

    class RecordingWindow(SlidingWindowPredictor):
        def __call__(self, model, image, cancel=None):
            calls.append((tuple(self.patch_size), self.mirror_axes))
            return super().__call__(model, image, cancel)

    monkeypatch.setattr(training, "ClassificationTask", Recording)
    monkeypatch.setattr(training, "SlidingWindowPredictor", RecordingWindow)
    options = TrainOptions(**{**tiny["options"], "segmentation_from": str(tiny["bundle"].path), "lowres_epochs": 0,
                                  "fullres_epochs": 0})
    train(tiny["root"] / "data", tmp_path / "model", options)
    assert [t.mirror_axes for t in tasks] == [CLASSIFIER_MIRROR_AXES]
    # the validation cases' cascade prior and KRT boxes come from mirrored windows, as Segment & Stage's
    # default makes them; the training cases' prior from the plain low-resolution window (held-out
    # cases get no plain prior when, as here, the full-resolution phase is not trained)
    n_cases = len(list((tiny["root"] / "data" / "imagesTr").iterdir()))
    n_val = len(dataset_splits(RawDataset.load(tiny["root"] / "data"), folds=tiny["options"]["folds"],
                               seed=tiny["options"]["seed"])[tiny["options"]["fold"]]["val"])
    plan = tiny["bundle"].plan["configurations"]
    low, full = (tuple(plan[k]["patch_size"]) for k in ("3d_lowres", "3d_fullres"))
    mirrored = SEGMENTATION_MIRROR_AXES
    assert calls.count((low, ())) == n_cases - n_val
    assert calls.count((low, mirrored)) == calls.count((full, mirrored)) == n_val > 0


def test_segmentation_from_with_epochs_fine_tunes_that_phase(tiny, tmp_path, capsys):
    source = tiny["bundle"]
    assert cli_main(["train", "--task", "esophagus", "--data", str(tiny["root"] / "data"),
                     "--out", str(tmp_path / "tuned"), "--segmentation-from", str(source.path),
                     "--lowres-epochs", "0", "--fullres-epochs", "1", "--classifier-epochs", "1",
                     "--steps-per-epoch", "2", "--fold", "0", "--folds", "4", "--device", "cpu"]) == 0
    tuned = load_bundle(tmp_path / "tuned", verify=True)
    low_src, low_new = source.load_state_dict(LOWRES), tuned.load_state_dict(LOWRES)
    assert all(torch.equal(low_src[k], low_new[k]) for k in low_src)  # 0 epochs: kept
    full_src, full_new = source.load_state_dict(FULLRES), tuned.load_state_dict(FULLRES)
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

    monkeypatch.setattr(training, "nnunet_augmentation", recording)
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
    options = TrainOptions(**{**tiny["options"], "segmentation_from": str(source.path)})
    tuned = train(tmp_path / "other", tmp_path / "tuned", options)
    expected = make_plan(extract_fingerprint(other), "esophagus").normalization
    assert tuned.plan["normalization"] == dataclasses.asdict(expected) != source.plan["normalization"]
    assert tuned.plan["configurations"] == source.plan["configurations"]
    assert tuned.architecture["fullres"] == source.architecture["fullres"]
    assert tuned.plan["fingerprint"]["dataset_name"] == other.description.name


def test_best_classifier_checkpoint_is_the_best_validated_epoch(tiny, tmp_path):
    source = tiny["bundle"]
    base = {**tiny["options"], "segmentation_from": str(source.path), "lowres_epochs": 0, "fullres_epochs": 0,
            "classifier_epochs": 4, "seed": 3}
    final = train(tiny["root"] / "data", tmp_path / "final", TrainOptions(**base))
    best = train(tiny["root"] / "data", tmp_path / "best",
                     TrainOptions(**base, classifier_checkpoint="best"))
    epoch = best.metrics["classifier"]["epoch"]
    assert isinstance(epoch, int) and 1 <= epoch <= 4
    auc_best, auc_final = best.metrics["classifier"]["val_auc"], final.metrics["classifier"]["val_auc"]
    assert auc_best >= auc_final or np.isnan(auc_final)
    # the same run (same seed) up to the choice: the weights are the final ones only if the last epoch won
    same = all(torch.equal(v, best.load_state_dict(CLASSIFIER)[k])
               for k, v in final.load_state_dict(CLASSIFIER).items())
    assert same == (epoch == 4)
    assert f", epoch {epoch}\n" in (best.path / "MODEL_CARD.md").read_text(encoding="utf-8")
    with pytest.raises(TrainingError, match="validation fold"):
        TrainOptions(**{**base, "fold": None}, classifier_checkpoint="best")
    with pytest.raises(TrainingError, match="classifier-checkpoint"):
        TrainOptions(**base, classifier_checkpoint="latest")


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
    data, options = tiny["root"] / "data", TrainOptions(**{**tiny["options"], "classifier_epochs": 2})
    reference = train(data, tmp_path / "reference", options, plan=tiny["plan"])
    stop = {"now": False}

    def stop_after_first_classifier_epoch(event):
        if event.kind == "epoch" and event.epoch == 1 and (event.message or "").startswith("classifier"):
            stop["now"] = True

    out = tmp_path / "model"
    with pytest.raises(Cancelled):
        train(data, out, options, plan=tiny["plan"], callbacks=[stop_after_first_classifier_epoch],
                  cancel=lambda: stop["now"])
    work = tmp_path / ".model.work"
    assert not out.exists() and (work / "classifier" / "checkpoints" / "last").is_dir()
    with pytest.raises(TrainingError, match="seed"):  # resuming needs the same options
        train(data, out, TrainOptions(**{**tiny["options"], "classifier_epochs": 2, "seed": 9}),
                  plan=tiny["plan"], resume=True)
    epochs_run = []
    resumed = train(data, out, options, plan=tiny["plan"], resume=True,
                        callbacks=[lambda e: epochs_run.append((e.message.split(":")[0], e.epoch))
                                   if e.kind == "epoch" else None])
    assert epochs_run == [("classifier", 2)]  # only what was missing: no phase started over
    assert not work.exists()  # cleaned up once the bundle is written
    for name in (LOWRES, FULLRES, CLASSIFIER):  # bit for bit the uninterrupted run's model
        ref, new = reference.load_state_dict(name), resumed.load_state_dict(name)
        assert all(torch.equal(ref[k], new[k]) for k in ref), name
    assert resumed.metrics["fullres"] == pytest.approx(reference.metrics["fullres"])  # from history.csv
    assert resumed.metrics["classifier"] == pytest.approx(reference.metrics["classifier"])
    with pytest.raises(TrainingError, match="Nothing to resume"):
        train(data, tmp_path / "never_started", options, plan=tiny["plan"], resume=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "reference"]  # refusals wrote nothing


def test_zero_epochs_need_a_model_to_start_from():
    with pytest.raises(EngineError, match="segmentation-from"):
        TrainOptions(fullres_epochs=0)


def test_classifier_only_training_refuses_a_dataset_with_other_labels(tiny, tmp_path):
    import shutil

    other = tmp_path / "renamed"
    shutil.copytree(tiny["root"] / "data", other)
    meta = json.loads((other / "dataset.json").read_text(encoding="utf-8"))
    meta["labels"] = {("mediastinal node" if k == "lymph node" else k): v for k, v in meta["labels"].items()}
    (other / "dataset.json").write_text(json.dumps(meta))
    options = TrainOptions(**{**tiny["options"], "segmentation_from": str(tiny["bundle"].path)})
    with pytest.raises(EngineError, match="same labels"):
        train(other, tmp_path / "model", options)
    assert not (tmp_path / "model").exists() and not (tmp_path / ".model.work").exists()
