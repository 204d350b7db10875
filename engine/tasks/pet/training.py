"""Training the multi-task multi-scale PET network into a model bundle.

One phase: every head trains at once on tumour-centred and random crops with the paper's weighted
loss. A held-out share of the cases (stratified by outcome) validates each epoch on its
tumour-centred crops, with the tumour features from the network's own segmentation as at inference;
the epoch with the lowest validation outcome loss is kept. Checkpoints wait in a hidden work folder
beside the bundle, so ``resume`` continues a stopped run; ``time_limit_min`` ends it on a budget.
"""

from __future__ import annotations

import logging
import platform
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from engine.data.dataset import RawDataset
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
from engine.registry import HALF_PRECISION_STORAGE, ModelBundle, save_bundle
from engine.registry.bundle import check_bundle_target
from engine.tasks.pet import TASK
from engine.tasks.pet.data import CentredCrops, CropSampler, PetCase, check_targets, load_cases
from engine.tasks.pet.losses import LossWeights, MultiTaskLoss
from engine.tasks.pet.model_card import model_card
from engine.tasks.pet.networks import PetMultiTaskNet, PetNetworkSpec
from engine.tasks.pet.options import ARCHITECTURE, NETWORK, OUTCOMES, PATHOLOGIES, PetTrainOptions
from engine.tasks.pet.preprocessing import ORIENTATION, TARGET_SPACING
from engine.training.callbacks import read_history
from engine.training.checkpoint import load_model_weights
from engine.training.config import OptimizerConfig, SchedulerConfig, TrainerConfig
from engine.training.steps import StepOutput, move_to_device
from engine.training.trainer import Callback, Trainer
from engine.utils.device import describe_device, select_device

log = logging.getLogger(__name__)
MONITOR = "val_outcome_loss"


def network_spec(options: PetTrainOptions) -> PetNetworkSpec:
    single = options.single_task
    return PetNetworkSpec(width=options.width, crop_size=(options.crop_size,) * 3, n_pathologies=len(PATHOLOGIES),
                          reconstruction=options.reconstruction and not single, segmentation=not single,
                          pathology=not single, multi_scale=options.multi_scale or single)


def loss_weights(options: PetTrainOptions) -> LossWeights:
    return LossWeights(options.recon_weight, options.seg_weight, options.class_weight, options.outcome_weight)


def validation_scores(outcome_prob: np.ndarray, outcome: np.ndarray, pathology_prob: np.ndarray | None,
                      pathology: np.ndarray, dice: np.ndarray) -> dict[str, float]:
    """Outcome AUC and log-loss, pathology accuracy and mean Dice of the validation crops."""
    from engine.metrics.classification import one_vs_rest_auc

    p = np.clip(outcome_prob, 1e-6, 1 - 1e-6)
    scores = {"outcome_loss": float(-np.mean(outcome * np.log(p) + (1 - outcome) * np.log(1 - p)))}
    if len(set(outcome.tolist())) == 2:
        scores["outcome_auc"] = float(one_vs_rest_auc(outcome, np.stack([1 - p, p], 1))[1].auc)
    if pathology_prob is not None and len(pathology):
        scores["pathology_accuracy"] = float(np.mean(pathology_prob.argmax(1) == pathology))
    if dice.size:
        scores["dice"] = float(np.nanmean(dice)) if np.isfinite(dice).any() else 0.0
    return scores


class PetTrainingTask:
    """The trainer's view of the task: the weighted loss per batch, validation scores per epoch."""

    def __init__(self, loss: MultiTaskLoss, teacher_forcing: float):
        self.loss, self.teacher_forcing = loss, teacher_forcing

    def training_step(self, model: torch.nn.Module, batch: dict[str, Any], device: torch.device) -> StepOutput:
        batch = move_to_device(batch, device)
        net = model.module if hasattr(model, "module") else model
        forced = net.tumour_branch is not None and float(torch.rand(())) < self.teacher_forcing
        out = model(batch["image"], batch["label"] if forced else None)
        total, terms = self.loss(out, batch["image"], batch["label"], batch["pathology"], batch["outcome"])
        return StepOutput(total, terms, batch_size=int(batch["image"].shape[0]))

    def validation_step(self, model: torch.nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        batch = move_to_device(batch, device)
        out = model(batch["image"])
        result: dict[str, Any] = {"outcome_prob": torch.sigmoid(out.outcome_logit.float()).cpu().tolist(),
                                  "outcome": batch["outcome"].cpu().tolist(),
                                  "pathology": batch["pathology"].cpu().tolist()}
        if out.pathology_logits is not None:
            result["pathology_prob"] = torch.softmax(out.pathology_logits.float(), 1).cpu().tolist()
        if out.segmentation_logits is not None:
            pred, ref = out.segmentation_logits > 0, batch["label"] > 0.5
            inter = (pred & ref).sum(dim=(1, 2, 3, 4)).float()
            denom = (pred.sum(dim=(1, 2, 3, 4)) + ref.sum(dim=(1, 2, 3, 4))).float()
            result["dice"] = (2 * inter / denom.clamp_min(1)).cpu().tolist()
        return result

    def validation_epoch_end(self, outputs: list[dict[str, Any]]) -> dict[str, float]:
        def gather(key: str) -> list[Any]:
            return [v for o in outputs for v in o.get(key, [])]

        path_prob = gather("pathology_prob")
        return validation_scores(np.asarray(gather("outcome_prob")), np.asarray(gather("outcome")),
                                 np.asarray(path_prob) if path_prob else None, np.asarray(gather("pathology")),
                                 np.asarray(gather("dice"), dtype=np.float64))


def split_cases(cases: list[PetCase], fraction: float, seed: int) -> tuple[list[PetCase], list[PetCase]]:
    """Training and validation cases, stratified by outcome (no validation for a fraction of 0)."""
    n_val = round(fraction * len(cases))
    if n_val < 4:
        return cases, []
    strata = [c.outcome for c in cases]
    train, val = train_test_split(cases, test_size=n_val, random_state=seed, stratify=strata)
    return list(train), list(val)


def load_dataset(dataset: str | Path) -> RawDataset:
    """The dataset, refused unless it is valid, PET, and has outcomes."""
    from engine.data.validate import validate_dataset

    report = validate_dataset(dataset)
    if not report.ok:
        raise TrainingError(f"The dataset at {dataset} has problems; fix them first:\n{report.summary()}")
    ds = RawDataset.load(dataset)
    if ds.description.modality.upper() not in ("PT", "PET"):
        raise TrainingError(f"The PET outcome task trains on PET (channel 'PT'); this dataset's channel is "
                            f"'{ds.description.modality}'.")
    return ds


def fit(net: PetMultiTaskNet, options: PetTrainOptions, train: list[PetCase], val: list[PetCase], work: Path,
        callbacks: Sequence[Callback], budget: Deadline, resume: bool) -> dict[str, Any]:
    """Run the trainer; load the best validated (or last) weights into ``net``; the run's metrics."""
    spec = net.spec
    sampler = CropSampler(train, options.crop_size, spec.suv_scale, options.tumour_fraction, options.jitter_vox,
                          options.steps_per_epoch * options.batch_size)
    val_data = CentredCrops(val, options.crop_size, spec.suv_scale) if val else None
    cfg = TrainerConfig(epochs=options.epochs, steps_per_epoch=options.steps_per_epoch,
                        batch_size=options.batch_size, val_batch_size=options.batch_size,
                        num_workers=options.num_workers, monitor=MONITOR if val else "train_loss", mode="min",
                        seed=options.seed, device=options.device, out_dir=str(work / "network"), grad_clip=12.0,
                        optimizer=OptimizerConfig(name="adam", lr=options.lr, weight_decay=1e-5),
                        scheduler=SchedulerConfig(name="cosine"))
    task = PetTrainingTask(MultiTaskLoss(loss_weights(options)), options.teacher_forcing)
    t0 = time.monotonic()
    result = Trainer(net, task, sampler, val_data, cfg, callbacks=[PhaseTaggedCallbacks("multi-task", callbacks)],
                     cancel=budget, resume=resume).fit()
    if result.cancelled and not budget.reached:
        raise Cancelled(CANCELLED_MESSAGE)
    if budget.reached:
        log.warning("Time limit reached after %d epoch(s); keeping the best weights so far.", result.epochs_run)
    if val and result.best_checkpoint_path is not None:
        net.load_state_dict(load_model_weights(result.best_checkpoint_path))
    rows = read_history(result.history_path) if result.history_path.is_file() else []
    best = epoch_metrics(result, result.best_epoch) if val and result.best_epoch else {}
    return {**{k: round(v, 4) for k, v in best.items() if k.startswith("val_")},
            "epochs": result.epochs_run, "best_epoch": result.best_epoch, "time_limit_reached": budget.reached,
            "seconds": round(time.monotonic() - t0, 1),
            "train_loss_curve": [round(float(r["train_loss"]), 5) for r in rows if r.get("train_loss") is not None]}


def train(dataset: str | Path, out_dir: str | Path, options: PetTrainOptions | None = None, *,
          callbacks: Sequence[Callback] = (), cancel: Callable[[], bool] | None = None, overwrite: bool = False,
          command: str | None = None, resume: bool = False) -> ModelBundle:
    """Train on ``dataset`` (nnU-Net raw layout, stages.csv with outcome and pathology) into a bundle."""
    options = options or PetTrainOptions()
    out = Path(out_dir)
    check_bundle_target(out, overwrite, "training")
    ds = load_dataset(dataset)
    work = work_dir(out)
    record = run_record(dataset, options)
    check_resume(work, record, resume)
    budget = Deadline.after_minutes(cancel, options.time_limit_min)
    cases = load_cases(ds.training, options.crop_size, cancel)
    check_targets(cases)
    train_cases, val_cases = split_cases(cases, options.val_fraction, options.seed)
    record_run(work, record, resume)
    torch.manual_seed(options.seed)
    net = PetMultiTaskNet(network_spec(options))
    log.info("Training the PET %s network on %d cases, validating on %d; device %s", options.variant,
             len(train_cases), len(val_cases), describe_device(select_device(options.device)))
    metrics = {"network": fit(net, options, train_cases, val_cases, work, callbacks, budget, resume)}
    threshold = segmentation_threshold(net.eval(), ds, val_cases, options, metrics["network"])
    bundle = write_bundle(net, out, options, ds, str(dataset), metrics, len(train_cases), len(val_cases),
                          command, overwrite, threshold)
    shutil.rmtree(work, ignore_errors=True)
    return bundle


def segmentation_threshold(net: PetMultiTaskNet, ds: RawDataset, val: list[PetCase], options: PetTrainOptions,
                           metrics: dict[str, Any]) -> float:
    """The tumour threshold with the best whole-volume Dice on the validation cases (0.5 without them)."""
    from engine.tasks.pet.predictor import whole_volume_probability
    from engine.tasks.pet.threshold import choose_threshold, threshold_scores

    if not val:
        return 0.5
    device = select_device(options.device)
    net.to(device)
    ids = {c.case_id for c in val}
    scores = threshold_scores(lambda suv: whole_volume_probability(net, suv, device),
                              [c for c in ds.training if c.case_id in ids])
    metrics["val_whole_volume_dice"] = {f"{t:g}": round(v, 4) for t, v in scores.items()}
    chosen = choose_threshold(scores)
    log.info("Tumour threshold %g (whole-volume validation Dice %.3f).", chosen, scores[chosen])
    return chosen


def write_bundle(net: PetMultiTaskNet, out: Path, options: PetTrainOptions, ds: RawDataset, dataset_path: str,
                 metrics: dict[str, Any], n_train: int, n_val: int, command: str | None,
                 overwrite: bool, threshold: float = 0.5) -> ModelBundle:
    """The bundle: the plan the predictor needs, the network's architecture, the training record, card."""
    plan = {"orientation": ORIENTATION, "target_spacing": list(TARGET_SPACING), "crop_size": [options.crop_size] * 3,
            "labels": dict(TASK.label_map), "pathologies": list(PATHOLOGIES), "outcomes": list(OUTCOMES),
            "suv_scale": net.spec.suv_scale, "units": "SUV (body weight)", "segmentation_threshold": threshold}
    architecture = {"name": ARCHITECTURE, "variant": options.variant, "network": net.spec.to_dict(),
                    "loss_weights": {"alpha_reconstruction": options.recon_weight, "beta_segmentation": options.seg_weight,
                                     "omega_pathology": options.class_weight, "lambda_outcome": options.outcome_weight},
                    "segmentation_loss": "Dice over the batch"}
    training = {"dataset": ds.description.name, "dataset_path": dataset_path, "cases_train": n_train,
                "cases_validation": n_val, "command": command_line(command), "options": _jsonable(options),
                "machine": platform.machine(), "torch": torch.__version__}
    card = model_card(options, ds.description, metrics, training, plan)
    return save_bundle(out, id=options.model_id, name=options.model_name, version=options.version, task=TASK.name,
                       architecture=architecture, plan=plan, labels=list(TASK.labels), stages=None,
                       modality=TASK.modality, training=training, metrics=metrics, intended_use=options.intended_use,
                       weights={NETWORK: net.state_dict()}, overwrite=overwrite, model_card=card,
                       weights_dtype=HALF_PRECISION_STORAGE if options.weights_float16 else None)


def _jsonable(options: PetTrainOptions) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(options)
