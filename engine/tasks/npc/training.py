"""Training the NPC network end to end: one loss L = λseg·(Jaccard + focal) + λcls·CE, λ learned.

The generic :class:`~engine.training.trainer.Trainer` runs the loop (Adam 2e-4, ReduceLROnPlateau on
the validation score, checkpoints for ``--resume``, cancellation, progress, DDP under ``torchrun``);
this module prepares the head crops, defines the multi-task step and writes the bundle.
"""

from __future__ import annotations

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
from engine.errors import Cancelled, TrainingError
from engine.pipelines.training_run import (
    CANCELLED_MESSAGE,
    Deadline,
    PhaseTaggedCallbacks,
    check_cancel,
    check_resume,
    command_line,
    epoch_metrics,
    record_run,
    run_record,
    work_dir,
)
from engine.planning.planner import Plan
from engine.registry import ModelBundle, save_bundle
from engine.registry.bundle import check_bundle_target
from engine.tasks.npc import TASK, TUMOUR
from engine.tasks.npc.blocks import JaccardFocalLoss, LearnedLossWeights
from engine.tasks.npc.data import CONFIGURATION, NpcCases, TrainingVolume, npc_plan, prepare, with_head_patch
from engine.tasks.npc.model_card import model_card
from engine.tasks.npc.networks import NetworkConfig, NpcNetwork, network_config
from engine.tasks.npc.options import ARCHITECTURE, NETWORK, NpcTrainOptions
from engine.training.callbacks import read_history
from engine.training.checkpoint import load_model_weights
from engine.training.config import OptimizerConfig, SchedulerConfig, TrainerConfig
from engine.training.distributed import detect_torchrun
from engine.training.trainer import Callback, Trainer
from engine.utils.device import describe_device, select_device

log = logging.getLogger(__name__)
LOSS_TASKS = ("seg", "cls")


class NpcTrainingModel(nn.Module):
    """The network with its learned loss weights, so both are optimised and checkpointed together."""

    def __init__(self, network: NpcNetwork, learned_weights: bool):
        super().__init__()
        self.network = network
        self.loss_weights = LearnedLossWeights(LOSS_TASKS, learn=learned_weights)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.network(image)


def binary_dice(pred: torch.Tensor, ref: torch.Tensor) -> float:
    inter, total = float((pred & ref).sum()), float(pred.sum() + ref.sum())
    return 2.0 * inter / total if total else 1.0


class MultiTaskStep:
    """The training task the trainer runs: the weighted two-task loss; validation Dice, macro AUC,
    accuracy and the score (mean of Dice and AUC) that picks the kept epoch."""

    def __init__(self, data: NpcCases, stage_weights: Sequence[float] | None):
        self.data = data
        self.seg_loss = JaccardFocalLoss()
        self.stage_weights = None if stage_weights is None else torch.tensor(stage_weights, dtype=torch.float32)

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        self.data.set_epoch(epoch)

    def _losses(self, model: nn.Module, batch: dict[str, torch.Tensor],
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        image, label, target = (batch[k].to(device) for k in ("image", "label", "target"))
        seg_logits, stage_logits = model(image)
        weights = None if self.stage_weights is None else self.stage_weights.to(device)
        cls = nn.functional.cross_entropy(stage_logits.float(), target, weight=weights)
        return self.seg_loss(seg_logits.float(), label), cls, seg_logits, stage_logits

    def training_step(self, model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> Any:
        from engine.training.steps import StepOutput

        seg, cls, _, stage_logits = self._losses(model, batch, device)
        weights = getattr(model, "module", model).loss_weights
        lam = weights.weights
        metrics = {"seg_loss": float(seg.detach()), "cls_loss": float(cls.detach()), "lambda_seg": lam["seg"],
                   "lambda_cls": lam["cls"],
                   "accuracy": float((stage_logits.argmax(1) == batch["target"].to(device)).float().mean())}
        return StepOutput(weights([seg, cls]), metrics, batch_size=int(batch["image"].shape[0]))

    @torch.no_grad()
    def validation_step(self, model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> dict:
        seg, cls, seg_logits, stage_logits = self._losses(model, batch, device)
        pred, ref = seg_logits > 0, batch["label"].to(device) > 0.5
        return {"loss": float(seg + cls), "dice": [binary_dice(p, r) for p, r in zip(pred, ref)],
                "probs": torch.softmax(stage_logits.float(), 1).cpu().numpy().tolist(),
                "target": batch["target"].cpu().numpy().tolist()}

    def validation_epoch_end(self, outputs: list[dict[str, Any]]) -> dict[str, float]:
        from engine.metrics.classification import one_vs_rest_auc

        dice = float(np.mean([d for o in outputs for d in o["dice"]]))
        probs = np.array([p for o in outputs for p in o["probs"]], dtype=np.float64)
        target = np.array([t for o in outputs for t in o["target"]], dtype=np.int64)
        auc = one_vs_rest_auc(target, probs)[1].auc if len(target) else float("nan")
        auc = float(auc) if np.isfinite(auc) else 0.5
        return {"loss": float(np.mean([o["loss"] for o in outputs])), "dice": dice, "auc": auc,
                "accuracy": float((probs.argmax(1) == target).mean()), "score": (dice + auc) / 2.0}


def load_training_dataset(dataset: str | Path) -> RawDataset:
    """The dataset, refused unless it is valid, staged, MR and labels the GTV."""
    from engine.data.validate import validate_dataset

    report = validate_dataset(dataset, require_stages=True)
    if not report.ok:
        raise TrainingError(f"The dataset at {dataset} has problems; fix them first:\n{report.summary()}")
    ds = RawDataset.load(dataset)
    if ds.description.modality.upper() in ("CT", "PT", "PET"):
        raise TrainingError(f"NPCStaging trains on contrast-enhanced T1 MRI; this dataset's channel is "
                            f"'{ds.description.modality}'.")
    if TUMOUR not in ds.description.labels:
        raise TrainingError(f"The dataset has no '{TUMOUR}' label (labels: {ds.description.labels}); name the "
                            "tumour label GTV in dataset.json.")
    return ds


def choose_split(ds: RawDataset, options: NpcTrainOptions) -> tuple[list[str], list[str]]:
    """Training and validation case ids: a stage-stratified cross-validation fold, or every case."""
    from engine.data.splits import dataset_splits

    ids = [c.case_id for c in ds.training]
    if options.fold is None:
        return ids, []
    if len(ids) < options.folds:
        raise TrainingError(f"{len(ids)} case(s) cannot make {options.folds} folds; use --fold all or more cases.")
    split = dataset_splits(ds, folds=options.folds, seed=options.seed)[options.fold]
    return list(split["train"]), list(split["val"])


def given_plan(plan: Plan | str | Path | None, ds: RawDataset, spacing: Sequence[float] | None) -> Plan:
    """The plan to train with: the one given (``--plan``, ``--target-spacing``) or the NPC plan of this
    dataset, with the head field of view as its patch."""
    if plan is None:
        return npc_plan(ds, spacing)
    return with_head_patch(plan if isinstance(plan, Plan) else Plan.load(plan))


class NpcTraining:
    """One training run: the prepared head crops, the network and what the run measured."""

    def __init__(self, ds: RawDataset, plan: Plan, options: NpcTrainOptions, work: Path,
                 callbacks: Sequence[Callback], cancel: Callable[[], bool] | None, resume: bool):
        self.ds, self.plan, self.options, self.work = ds, plan, options, work
        self.callbacks, self.cancel, self.resume = list(callbacks), cancel, resume
        self.stage_names = list(plan.stage_names or TASK.stage_names or ())
        self.device = select_device(options.device)
        self.t0 = time.monotonic()
        self.train_ids, self.val_ids = choose_split(ds, options)
        self.metrics: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        torch.manual_seed(options.seed)

    def network_config(self) -> NetworkConfig:
        cfg, o = self.plan.configuration(CONFIGURATION), self.options
        return network_config(cfg.patch_size, cfg.spacing, o.unet_width, o.unet_max_width, o.stage_width,
                              len(self.stage_names), fusion=o.fusion, bot=o.bot, gating=o.gating)

    def prepare(self) -> tuple[list[TrainingVolume], list[TrainingVolume]]:
        """Every case preprocessed and cropped once (the network sees the same head crop each epoch)."""
        tumour = self.ds.description.labels[TUMOUR]
        train, val = [], []
        for case in self.ds.training:
            if case.case_id not in self.train_ids and case.case_id not in self.val_ids:
                continue
            check_cancel(self.cancel)
            if case.stage not in self.stage_names:
                raise TrainingError(f"Case '{case.case_id}' has no valid T-stage ({case.stage!r}); stages.csv must "
                                    f"give one of {', '.join(self.stage_names)} for every training case.")
            image = case.load_image()
            prepared = prepare(self.plan, image, case.load_label(reference=image))
            volume = TrainingVolume(case.case_id, prepared.image, (prepared.label == tumour).astype(np.uint8),
                                    self.stage_names.index(case.stage))
            (train if case.case_id in self.train_ids else val).append(volume)
        log.info("Training NPC %s on %d case(s), validating on %d (fold %s), device %s", self.options.variant,
                 len(train), len(val), self.options.fold, describe_device(self.device))
        return train, val

    def trainer_config(self, validating: bool) -> TrainerConfig:
        o = self.options
        return TrainerConfig(
            epochs=o.epochs, steps_per_epoch=o.steps_per_epoch, batch_size=o.batch_size, val_batch_size=1,
            num_workers=o.num_workers, val_every=o.val_every,
            monitor="val_score" if validating else "train_loss", mode="max" if validating else "min",
            seed=o.seed, device=o.device, out_dir=str(self.work / NETWORK), grad_clip=12.0,
            optimizer=OptimizerConfig(name="adam", lr=o.lr),
            scheduler=SchedulerConfig(name="plateau", plateau_patience=o.plateau_patience))

    def fit(self, train: list[TrainingVolume], val: list[TrainingVolume]) -> NpcTrainingModel:
        """Train; the best validated epoch's weights (the last ones without validation or at the time limit
        before any validation)."""
        o = self.options
        model = NpcTrainingModel(NpcNetwork(self.network_config()), o.learned_weights)
        data = NpcCases(train, train=True, seed=o.seed)
        step = MultiTaskStep(data, self.plan.stage_loss_weights)
        val_data = NpcCases(val, train=False) if val else None
        limit = None if o.time_limit_min is None else self.t0 + 60.0 * o.time_limit_min
        deadline = Deadline(self.cancel, limit)
        result = Trainer(model, step, data, val_data, self.trainer_config(val_data is not None),
                         callbacks=[PhaseTaggedCallbacks(NETWORK, self.callbacks)], cancel=deadline,
                         resume=self.resume).fit()
        if result.cancelled and not deadline.reached:
            raise Cancelled(CANCELLED_MESSAGE)
        if deadline.reached:
            log.warning("Time limit reached after %d epoch(s); keeping the best weights so far.", result.epochs_run)
        kept = result.epochs_run
        if val_data is not None and result.best_checkpoint_path is not None:
            model.load_state_dict(load_model_weights(result.best_checkpoint_path))
            kept = result.best_epoch
        self.history = read_history(result.history_path) if result.history_path.is_file() else []
        best = epoch_metrics(result, kept) if val_data is not None and kept else {}
        self.metrics = {"validation": {k[len("val_"):]: v for k, v in best.items() if k.startswith("val_")},
                        "epochs": result.epochs_run, "kept_epoch": kept, "time_limit_reached": deadline.reached,
                        "loss_weights": model.loss_weights.weights,
                        "seconds_per_step": round((time.monotonic() - self.t0) / max(result.global_step, 1), 3)}
        return model.eval()

    def loss_weight_trajectory(self) -> list[dict[str, float]]:
        """λseg and λcls per epoch (epoch means), from the run's history."""
        return [{"epoch": int(r["epoch"]), "lambda_seg": round(float(r["train_lambda_seg"]), 5),
                 "lambda_cls": round(float(r["train_lambda_cls"]), 5)}
                for r in self.history if r.get("train_lambda_seg") is not None]

    def training_record(self, dataset: str | Path, command: str | None) -> dict[str, Any]:
        desc = self.ds.description
        return {"data": {"dataset": desc.name, "path": _relative_path(dataset),
                         "cases": len(self.train_ids) + len(self.val_ids), "train_cases": sorted(self.train_ids),
                         "val_cases": sorted(self.val_ids), "description": desc.description or ""},
                "command": command_line(command), "options": asdict(self.options), "seed": self.options.seed,
                "loss_weight_trajectory": self.loss_weight_trajectory(),
                "loss_curve": [round(float(r["train_loss"]), 5) for r in self.history
                               if r.get("train_loss") is not None],
                "hardware": {"device": describe_device(self.device), "platform": platform.platform(),
                             "torch": torch.__version__},
                "duration_s": round(time.monotonic() - self.t0, 1)}


def _relative_path(path: str | Path) -> str:
    """A data folder as the bundle records it: relative to the working directory when inside it."""
    absolute = Path(path).expanduser().absolute()
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def train(dataset: str | Path, out_dir: str | Path, options: NpcTrainOptions | None = None,
          plan: Plan | str | Path | None = None, spacing: Sequence[float] | None = None,
          callbacks: Sequence[Callback] = (), cancel: Callable[[], bool] | None = None, overwrite: bool = False,
          command: str | None = None, resume: bool = False, weights_dtype: str | None = None) -> ModelBundle | None:
    """Train the NPC network on a staged MRI dataset and write the model bundle to ``out_dir`` (atomically).

    Checkpoints wait in the hidden ``.<out_dir>.work`` folder beside it so ``resume=True`` continues a
    stopped run from its last complete epoch (same options required). ``spacing`` (z, y, x mm) replaces
    the paper's 6 × 0.4688 × 0.4688 mm, e.g. the data's own spacing for a CPU training. Under ``torchrun``
    (DDP) every rank trains and the first writes the bundle; the others return None.
    """
    options = options or NpcTrainOptions()
    out = Path(out_dir).expanduser().absolute()
    check_bundle_target(out, overwrite, "training")
    work, record = work_dir(out), run_record(dataset, options)
    check_resume(work, record, resume)
    ds = load_training_dataset(dataset)
    run = NpcTraining(ds, given_plan(plan, ds, spacing), options, work, callbacks, cancel, resume)
    record_run(work, record, resume)
    model = run.fit(*run.prepare())
    check_cancel(cancel)
    torchrun = detect_torchrun()
    if torchrun is not None and torchrun.rank != 0:
        return None  # under torchrun every rank trains; the first one alone writes the bundle
    training = run.training_record(dataset, command)
    architecture = {"name": ARCHITECTURE, "network": model.network.config.to_dict(), "variant": options.variant,
                    "learned_loss_weights": options.learned_weights}
    bundle = save_bundle(
        out, id=options.model_id, name=options.model_name, version=options.version, task=TASK.name,
        architecture=architecture, plan=run.plan.to_dict(), labels=TASK.styled_labels(run.plan.labels),
        stages=run.stage_names, modality=TASK.modality, training=training, metrics=run.metrics,
        intended_use=options.intended_use, weights={NETWORK: model.network.state_dict()}, overwrite=overwrite,
        weights_dtype=weights_dtype,
        model_card=model_card(options, ds.description, run.metrics, training, run.plan))
    shutil.rmtree(work, ignore_errors=True)
    return bundle
