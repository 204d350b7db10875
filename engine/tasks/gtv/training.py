"""Training the GTV task: the slice classifier, then SANet on abnormal-rich slices (HCF), or one
ResFormer; each phase through :class:`engine.training.Trainer` into one model bundle.

Both phases draw their slices each epoch by the Balance-Sampling Strategy (normal slices randomly
undersampled to the phase's ratio), use AdamW with cosine annealing and warm restarts, validate every
epoch on the held-out cases and keep the best epoch's weights (early stopping after ``patience``).
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.data.dataset import RawDataset
from engine.domain.profile import MANIFEST_KEY, dataset_profile
from engine.errors import Cancelled, TrainingError
from engine.pipelines.training_run import (
    CANCELLED_MESSAGE,
    Deadline,
    PhaseTaggedCallbacks,
    check_resume,
    command_line,
    epoch_metrics,
    record_run,
    run_record,
    work_dir,
)
from engine.registry import ModelBundle, save_bundle
from engine.registry.bundle import check_bundle_target
from engine.tasks.gtv import TASK, TUMOUR
from engine.tasks.gtv.model_card import model_card
from engine.tasks.gtv.networks import (
    architecture_record,
    build_classifier,
    build_resformer,
    build_segmenter,
    resformer_loss,
    segmentation_loss,
    split_outputs,
)
from engine.tasks.gtv.options import CLASSIFIER, RESFORMER, SEGMENTER, GtvTrainOptions
from engine.tasks.gtv.preprocessing import GtvPlan
from engine.tasks.gtv.slices import FixedSlices, SliceSamples, SliceSet, load_slices
from engine.training.callbacks import read_history
from engine.training.checkpoint import load_model_weights
from engine.training.config import OptimizerConfig, SchedulerConfig, TrainerConfig
from engine.training.trainer import Callback, Trainer
from engine.utils.device import describe_device, select_device

log = logging.getLogger(__name__)
#: Share of ``--time-limit`` the slice classifier may use (the rest is the segmenter's).
CLASSIFIER_TIME_SHARE = 1.0 / 3.0


class SliceTask:
    """One phase's training task: segmentation loss (+ slice cross-entropy for a multi-task network)
    and/or slice classification; validation pools Dice over all validation slices and scores the slice
    classification (AUC, recall, specificity) when the network classifies."""

    def __init__(self, data: SliceSamples, seg_loss: nn.Module | None, classify: bool,
                 multitask_loss: nn.Module | None = None):
        self.data, self.seg_loss, self.classify = data, seg_loss, classify
        self.multitask_loss = multitask_loss

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        self.data.set_epoch(epoch)

    def _outputs(self, model: nn.Module, image: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        out = model(image)
        if self.seg_loss is None:  # a slice classifier
            return None, out
        return split_outputs(out)

    def training_step(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        image, label, target = (batch[k].to(device) for k in ("image", "label", "target"))
        seg, cls = self._outputs(model, image)
        if self.multitask_loss is not None:
            return self.multitask_loss((seg.float(), cls.float()), label, target)  # type: ignore[union-attr]
        loss = torch.zeros((), device=device)
        if seg is not None:
            loss = loss + self.seg_loss(seg.float(), label)  # type: ignore[misc]
        if self.classify and cls is not None:
            loss = loss + nn.functional.cross_entropy(cls.float(), target)
        return loss

    def validation_step(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        image, label, target = (batch[k].to(device) for k in ("image", "label", "target"))
        seg, cls = self._outputs(model, image)
        out: dict[str, Any] = {"target": target.cpu().numpy().tolist()}
        if seg is not None:
            pred, ref = seg.argmax(1) == 1, label == 1
            out.update(inter=float((pred & ref).sum()), pred=float(pred.sum()), ref=float(ref.sum()),
                       loss=float(self.seg_loss(seg.float(), label)))  # type: ignore[misc]
        if self.classify and cls is not None:
            out["prob"] = torch.softmax(cls.float(), 1)[:, 1].cpu().numpy().tolist()
            out["cls_loss"] = float(nn.functional.cross_entropy(cls.float(), target))
        return out

    def validation_epoch_end(self, outputs: list[dict[str, Any]]) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if outputs and "inter" in outputs[0]:
            inter, pred, ref = (sum(o[k] for o in outputs) for k in ("inter", "pred", "ref"))
            metrics["dice"] = float(2 * inter / (pred + ref)) if pred + ref else 1.0
            metrics["loss"] = float(np.mean([o["loss"] for o in outputs]))
        if outputs and "prob" in outputs[0]:
            metrics.update(slice_scores(np.array([p for o in outputs for p in o["prob"]]),
                                        np.array([t for o in outputs for t in o["target"]])))
            metrics.setdefault("loss", float(np.mean([o["cls_loss"] for o in outputs])))
        return metrics


def slice_scores(prob: np.ndarray, target: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Recall (abnormal slices kept), specificity and AUC of slice probabilities."""
    from engine.metrics.classification import one_vs_rest_auc

    kept, abnormal = prob >= threshold, target == 1
    out = {"recall": float(kept[abnormal].mean()) if abnormal.any() else float("nan"),
           "specificity": float((~kept[~abnormal]).mean()) if (~abnormal).any() else float("nan")}
    if abnormal.any() and (~abnormal).any():
        out["auc"] = float(one_vs_rest_auc(target, np.stack([1 - prob, prob], 1))[1].auc)
    return out


class GtvTraining:
    """One training run: the slices, the plan, and the networks as the phases make them."""

    def __init__(self, ds: RawDataset, options: GtvTrainOptions, work: Path, callbacks: Sequence[Callback],
                 cancel: Callable[[], bool] | None, resume: bool, plan: GtvPlan | None):
        self.ds, self.options, self.work, self.resume = ds, options, work, resume
        self.callbacks, self.cancel, self.given_plan = list(callbacks), cancel, plan
        self.device = select_device(options.device)
        self.metrics: dict[str, Any] = {}
        self.curves: dict[str, list[float]] = {}
        self.t0 = time.monotonic()
        torch.manual_seed(options.seed)
        self.train_ids, self.val_ids = choose_split(ds, options)

    def prepare(self) -> None:
        labels = {"background": 0, TUMOUR: 1}
        value = self.ds.description.labels[TUMOUR]
        cases = {c.case_id: c for c in self.ds.training}
        self.train, self.plan = load_slices([cases[i] for i in self.train_ids], labels, self.given_plan,
                                            self.options.image_size, self.options.threshold, value,
                                            self.cancel, self.options.seed)
        self.val: SliceSet | None = None
        if self.val_ids:
            self.val, _ = load_slices([cases[i] for i in self.val_ids], labels, self.plan, tumour_value=value,
                                      cancel=self.cancel)
        log.info("Training %s on %s; validating on %s; device %s", self.options.variant, self.train.describe(),
                 self.val.describe() if self.val is not None else "nothing", describe_device(self.device))
        if not self.train.abnormal.any():
            raise TrainingError("No training slice holds GTV; check the dataset's labels.")

    def deadline(self, share: float) -> Deadline:
        limit = self.options.time_limit_min
        return Deadline(self.cancel, None if limit is None else self.t0 + share * 60.0 * limit)

    def fit(self, phase: str, net: nn.Module, task: SliceTask, val: FixedSlices | None, epochs: int,
            batch: int, monitor: str, mode: str, share: float = 1.0) -> nn.Module:
        """Train one phase; the best validated epoch's weights (the last ones without validation)."""
        o = self.options
        cfg = TrainerConfig(epochs=epochs, steps_per_epoch=o.steps_per_epoch, batch_size=batch,
                            val_batch_size=2 * batch, num_workers=o.num_workers, val_every=1,
                            early_stopping_patience=o.patience if val is not None else None,
                            monitor=monitor if val is not None else "train_loss",
                            mode=mode if val is not None else "min", seed=o.seed, device=o.device,
                            out_dir=str(self.work / phase), grad_clip=12.0,
                            optimizer=OptimizerConfig(name="adamw", lr=o.lr, weight_decay=o.weight_decay),
                            scheduler=SchedulerConfig(name="cosine_restarts", t0=o.restart_epochs))
        deadline = self.deadline(share)
        t0 = time.monotonic()
        result = Trainer(net, task, task.data, val, cfg, callbacks=[PhaseTaggedCallbacks(phase, self.callbacks)],
                         cancel=deadline, resume=self.resume).fit()
        if result.cancelled and not deadline.reached:
            raise Cancelled(CANCELLED_MESSAGE)
        if deadline.reached:
            log.warning("%s: time limit reached after %d epoch(s); keeping the best weights so far.", phase,
                        result.epochs_run)
        if val is not None and result.best_checkpoint_path is not None:
            net.load_state_dict(load_model_weights(result.best_checkpoint_path))
        rows = read_history(result.history_path) if result.history_path.is_file() else []
        self.curves[phase] = [round(float(r["train_loss"]), 5) for r in rows if r.get("train_loss") is not None]
        steps = max(result.global_step, 1)
        best = epoch_metrics(result, result.best_epoch) if val is not None and result.best_epoch else {}
        self.metrics[phase] = {**{k: v for k, v in best.items() if k.startswith("val_")},
                               "epochs": result.epochs_run, "best_epoch": result.best_epoch,
                               "stopped_early": result.stopped_early, "time_limit_reached": deadline.reached,
                               "seconds": round(time.monotonic() - t0, 1),
                               "seconds_per_iteration": round((time.monotonic() - t0) / steps, 4)}
        net.eval()
        return net

    def samples(self, ratio: str, seed_offset: int) -> SliceSamples:
        return SliceSamples(self.train, ratio, self.options.seed + seed_offset, self.options.augment)

    def val_slices(self, ratio: str) -> FixedSlices | None:
        """The held-out slices: all of them for the classifier, the phase's ratio for a segmenter."""
        if self.val is None or not len(self.val):
            return None
        if ratio == "natural" or not self.val.abnormal.any() or self.val.abnormal.all():
            return FixedSlices(self.val)
        return FixedSlices(self.val, SliceSamples(self.val, ratio, 12345, augment=False).indices)

    def run(self, arch: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
        """Every phase; the bundle's weights."""
        o = self.options
        if o.architecture == "resformer":
            net = build_resformer(arch["resformer"])
            task = SliceTask(self.samples(o.segmenter_ratio, 1), segmentation_loss(o.cr_loss), classify=True,
                             multitask_loss=resformer_loss())
            net = self.fit(RESFORMER, net, task, self.val_slices(o.segmenter_ratio), o.segmenter_epochs,
                           o.segmenter_batch_size, "val_dice", "max")
            return {RESFORMER: net.state_dict()}
        weights = {}
        share = 1.0
        if arch["classifier"] is not None:
            cls = build_classifier(arch["classifier"])
            task = SliceTask(self.samples(o.classifier_ratio, 0), None, classify=True)
            val = FixedSlices(self.val) if self.val is not None and len(self.val) else None
            share = CLASSIFIER_TIME_SHARE
            cls = self.fit(CLASSIFIER, cls, task, val, o.classifier_epochs, o.classifier_batch_size,
                           "val_auc", "max", share)
            weights[CLASSIFIER] = cls.state_dict()
        seg = build_segmenter(arch["segmenter"])
        ratio = o.segmenter_ratio if arch["classifier"] is not None else "natural"
        task = SliceTask(self.samples(ratio, 1), segmentation_loss(o.cr_loss), classify=False)
        seg = self.fit(SEGMENTER, seg, task, self.val_slices(ratio), o.segmenter_epochs, o.segmenter_batch_size,
                       "val_dice", "max")
        weights[SEGMENTER] = seg.state_dict()
        return weights

    def training_record(self, dataset: str | Path, command: str | None) -> dict[str, Any]:
        desc = self.ds.description
        return {"data": {"dataset": desc.name, "path": str(Path(dataset).absolute()), "cases": len(self.train_ids)
                         + len(self.val_ids), "train_cases": list(self.train_ids), "val_cases": list(self.val_ids),
                         "train_slices": len(self.train), "train_abnormal_slices": int(self.train.abnormal.sum()),
                         "description": desc.description or "", "split": self.options.split},
                "command": command_line(command), "options": asdict(self.options), "seed": self.options.seed,
                "loss_curves": self.curves,
                "hardware": {"device": describe_device(self.device), "platform": platform.platform(),
                             "torch": torch.__version__},
                "duration_s": round(time.monotonic() - self.t0, 1),
                MANIFEST_KEY: dataset_profile(self.ds, self.train_ids).to_dict()}


def choose_split(ds: RawDataset, options: GtvTrainOptions) -> tuple[list[str], list[str]]:
    """Training and validation case ids: the fixed split file, else a cross-validation fold, else all."""
    ids = [c.case_id for c in ds.training]
    if options.split:
        data = json.loads(Path(options.split).read_text(encoding="utf-8"))
        train = [i for i in data.get("train", []) if i in ids]
        val = [i for i in data.get("val", []) if i in ids]
        unused = sorted(set(ids) - set(train) - set(val))
        if unused:
            log.warning("%d case(s) of the dataset are in neither part of %s and are not used: %s", len(unused),
                        options.split, ", ".join(unused[:10]))
        if not train:
            raise TrainingError(f"No case of the dataset is in the 'train' part of {options.split}.")
        return train, val
    if options.fold is not None and len(ids) >= max(options.folds, 2):
        from engine.data.splits import dataset_splits

        if options.fold >= options.folds:
            raise TrainingError(f"--fold {options.fold} does not exist with {options.folds} folds (0 to "
                                f"{options.folds - 1}).")

        split = dataset_splits(ds, folds=options.folds, seed=options.seed)[options.fold]
        return list(split["train"]), list(split["val"])
    return ids, []


def load_training_dataset(dataset: str | Path) -> RawDataset:
    from engine.data.validate import validate_dataset

    report = validate_dataset(dataset)
    if not report.ok:
        raise TrainingError(f"The dataset at {dataset} has problems; fix them first:\n{report.summary()}")
    ds = RawDataset.load(dataset)
    if ds.description.modality.upper() != "CT":
        raise TrainingError(f"GTVSeg trains on CT; this dataset's channel is '{ds.description.modality}'.")
    if TUMOUR not in ds.description.labels:
        raise TrainingError(f"The dataset has no '{TUMOUR}' label (labels: {ds.description.labels}); convert "
                            "OpenKBP with --gtv-from PTV70 or name the tumour label GTV.")
    return ds


def given_plan(plan: Any) -> GtvPlan | None:
    """A GTV plan from ``--plan`` (a bundle's or a plan JSON); other planners' plans do not apply."""
    if plan is None:
        return None
    if isinstance(plan, GtvPlan):
        return plan
    if isinstance(plan, (str, Path)):
        data = json.loads(Path(plan).read_text(encoding="utf-8"))
        data = data.get("plan", data)
        if "image_size" in data:
            return GtvPlan.from_dict(data)
    log.warning("The GTV task plans its own slices (--image-size sets their size); the given plan is ignored.")
    return None


def train(dataset: str | Path, out_dir: str | Path, options: GtvTrainOptions | None = None, plan: Any = None,
          callbacks: Sequence[Callback] = (), cancel: Callable[[], bool] | None = None, overwrite: bool = False,
          command: str | None = None, resume: bool = False) -> ModelBundle:
    """Train the GTV task on a raw dataset and write the model bundle to ``out_dir`` (atomically).

    Checkpoints wait in the hidden ``.<out_dir>.work`` folder beside it so ``resume=True`` can continue
    a stopped run from its last complete epoch (same options required).
    """
    options = options or GtvTrainOptions()
    out = Path(out_dir).expanduser().absolute()
    check_bundle_target(out, overwrite, "training")
    work, record = work_dir(out), run_record(dataset, options)
    check_resume(work, record, resume)
    ds = load_training_dataset(dataset)
    run = GtvTraining(ds, options, work, callbacks, cancel, resume, given_plan(plan))
    record_run(work, record, resume)
    run.prepare()
    arch = architecture_record(options)
    weights = run.run(arch)
    if cancel is not None and cancel():
        raise Cancelled(CANCELLED_MESSAGE)
    plan_dict = run.plan.to_dict()
    training = run.training_record(dataset, command)
    bundle = save_bundle(
        out, id=options.model_id, name=options.model_name, version=options.version, task=TASK.name,
        architecture=arch, plan=plan_dict, labels=TASK.styled_labels(run.plan.labels), stages=None,
        modality=TASK.modality, training=training, metrics=run.metrics, intended_use=options.intended_use,
        weights=weights, overwrite=overwrite,
        model_card=model_card(options, ds.description, run.metrics, training, plan_dict))
    shutil.rmtree(work, ignore_errors=True)
    return bundle
