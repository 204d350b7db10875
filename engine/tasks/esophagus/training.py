"""Training nn-TransEC: the paper's three phases into one model bundle.

Phase 1 is the cascade segmentation (low resolution, then full resolution fed with the one-hot
low-resolution prediction); phase 2 places the KRT crops around the tumour; phase 3 trains the stage
classifier with transfer from the segmentation encoder and cross-task attention.
"""

from __future__ import annotations

import logging
import platform
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from engine.data.dataset import RawDataset
from engine.data.patches import PatchDataset, TrainingCase, nnunet_augmentation
from engine.domain.profile import MANIFEST_KEY, dataset_profile
from engine.errors import Cancelled, TrainingError
from engine.inference.krt import KrtBox, krt_box
from engine.inference.sliding_window import SlidingWindowPredictor
from engine.losses import DeepSupervisionLoss, segmentation_loss, stage_focal_loss
from engine.models.nn_mtnet import ClassifierOptions, NetworkSpec, NnMTNet, SegmentationNet
from engine.pipelines.case import load_model
from engine.pipelines.training_run import (CANCELLED_MESSAGE, PhaseTaggedCallbacks, check_cancel,
                                           check_resume, command_line, epoch_metrics, final_metrics,
                                           record_run, run_record, work_dir)
from engine.planning.planner import Plan
from engine.preprocessing.pipeline import Preprocessor, preprocess_configurations
from engine.registry import ModelBundle, save_bundle
from engine.registry.bundle import check_bundle_target
from engine.tasks.esophagus import ORGAN_OF_ORIGIN, STAGES, TASK, TUMOUR
from engine.tasks.esophagus.model_card import model_card
from engine.tasks.esophagus.networks import (PreparedCase, StageCrops, classify_batch, fullres_input,
                                             keep_largest_object, lowres_to_fullres, network_specs,
                                             whole_volume_size)
from engine.tasks.esophagus.options import (ARCHITECTURE, CLASSIFIER, CLASSIFIER_MIRROR_AXES, FULLRES, LOWRES,
                                            SEGMENTATION_MIRROR_AXES, TrainOptions)
from engine.training.checkpoint import load_model_weights
from engine.training.config import OptimizerConfig, SchedulerConfig, TrainerConfig
from engine.training.tasks import ClassificationTask, SegmentationTask
from engine.training.trainer import Callback, Trainer
from engine.utils.device import describe_device, select_device

log = logging.getLogger(__name__)


def trainer_config(options: TrainOptions, out_dir: Path, epochs: int, batch: int, lr: float,
                   monitor: str, mode: str, steps: int | None) -> TrainerConfig:
    """The trainer settings of every phase: Adam, cosine schedule, gradient clipping."""
    return TrainerConfig(epochs=epochs, steps_per_epoch=steps, batch_size=batch, val_batch_size=1,
                         num_workers=options.num_workers, val_every=options.val_every, monitor=monitor,
                         mode=mode, seed=options.seed, device=options.device, out_dir=str(out_dir),
                         grad_clip=12.0,
                         optimizer=OptimizerConfig(name="adam", lr=lr, weight_decay=3e-5),
                         scheduler=SchedulerConfig(name="cosine"))


class ValidationCases(torch.utils.data.Dataset):
    """Whole held-out volumes for the sliding-window validation of a segmentation phase."""

    def __init__(self, images: list[np.ndarray], labels: list[np.ndarray]):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {"image": self.images[i], "label": self.labels[i]}


def stage_index(stage: str | None, names: Sequence[str], case_id: str) -> int:
    if stage not in names:
        raise TrainingError(f"Case '{case_id}' has no valid T-stage ({stage!r}); stages.csv must give one of "
                            f"{', '.join(names)} for every training case.")
    return list(names).index(stage)


def load_training_dataset(dataset: str | Path) -> RawDataset:
    """The dataset, refused unless it is valid, staged, CT and labels the tumour."""
    from engine.data.validate import validate_dataset

    report = validate_dataset(dataset, require_stages=True)
    if not report.ok:
        raise TrainingError(f"The dataset at {dataset} has problems; fix them first:\n{report.summary()}")
    ds = RawDataset.load(dataset)
    if ds.description.modality.upper() != "CT":
        raise TrainingError(f"EsophagusStaging trains on CT; this dataset's channel is "
                            f"'{ds.description.modality}'.")
    if TUMOUR not in ds.description.labels:
        raise TrainingError(f"The dataset has no '{TUMOUR}' label (labels: {ds.description.labels}); "
                            "EsophagusStaging needs the tumour label to place its KRT crops.")
    return ds


def segmentation_source(options: TrainOptions, plan: Plan | str | Path | None,
                        dataset_labels: dict[str, int]) -> ModelBundle | None:
    """The bundle whose segmentation networks ``options.segmentation_from`` names, checked for use."""
    if not options.segmentation_from:
        return None
    if plan is not None:
        raise TrainingError("--segmentation-from reuses that model's plan; do not also give --plan.")
    source = load_model(TASK.name, options.segmentation_from)
    if dict(source.plan.get("labels", {})) != dict(dataset_labels):
        raise TrainingError(f"Model '{source.id}' segments labels {source.plan.get('labels')}, but this dataset "
                            f"has {dataset_labels}; reuse segmentation only on a dataset with the same labels.")
    return source


def training_plan(ds: RawDataset, plan: Plan | str | Path | None, source: ModelBundle | None,
                  options: TrainOptions) -> Plan:
    """The plan to train with: the source model's (re-normalised when every network trains further),
    the one given, or a new one for this dataset."""
    from engine.planning import extract_fingerprint, make_plan, transfer_plan

    if source is not None:
        plan = Plan.from_dict(source.plan)
        if options.lowres_epochs > 0 and options.fullres_epochs > 0:
            # every network is trained further: normalise as this dataset needs (a kept network
            # must see the intensities it was trained on, so then the source's normalisation stays)
            plan = transfer_plan(plan, extract_fingerprint(ds))
            log.info("Fine-tuning: intensity normalisation re-planned on this dataset (clip %s HU).",
                     [round(c, 1) for c in plan.normalization.clip or []])
        return plan
    if plan is None:
        return make_plan(extract_fingerprint(ds), TASK.name)
    return plan if isinstance(plan, Plan) else Plan.load(plan)


class EsophagusTraining:
    """One training run: the cases, the plan and the networks as the phases make them."""

    def __init__(self, ds: RawDataset, plan: Plan, options: TrainOptions, source: ModelBundle | None,
                 work: Path, callbacks: Sequence[Callback], cancel: Callable[[], bool] | None, resume: bool):
        self.ds, self.plan, self.options, self.source, self.work = ds, plan, options, source, work
        self.callbacks, self.cancel, self.resume = list(callbacks), cancel, resume
        self.stage_names = list(plan.stage_names or STAGES)
        self.device = select_device(options.device)
        torch.manual_seed(options.seed)
        np.random.seed(options.seed % 2**32)
        self.loss = DeepSupervisionLoss(segmentation_loss(options.seg_loss))
        self.num_classes = len(plan.labels)
        self.cfg_low, self.cfg_full = plan.configuration("3d_lowres"), plan.configuration("3d_fullres")
        self.tumour_value = plan.labels[TUMOUR]
        self.box_size = plan.krt_box_size or self.cfg_full.patch_size
        self.metrics: dict[str, Any] = {}
        self.train_ids: set[str] = set()
        self.val_ids: set[str] = set()
        self.prepared: list[PreparedCase] = []

    @property
    def train_cases(self) -> list[PreparedCase]:
        return [c for c in self.prepared if c.case_id in self.train_ids]

    @property
    def val_cases(self) -> list[PreparedCase]:
        return [c for c in self.prepared if c.case_id in self.val_ids]

    def prepare(self) -> None:
        """Split the cases and preprocess each at both cascade resolutions."""
        from engine.data.splits import dataset_splits

        options, ds = self.options, self.ds
        if options.fold is not None:
            split = dataset_splits(ds, folds=options.folds, seed=options.seed)[options.fold]
            self.train_ids, self.val_ids = set(split["train"]), set(split["val"])
        else:
            self.train_ids = {c.case_id for c in ds.training}
        log.info("Training %s on %d case(s), validating on %d (fold %s), device %s", options.variant,
                 len(self.train_ids), len(self.val_ids), options.fold, describe_device(self.device))
        pre_low, pre_full = Preprocessor(self.plan, "3d_lowres"), Preprocessor(self.plan, "3d_fullres")
        for case in ds.training:
            check_cancel(self.cancel)
            image, label = case.load_image(), case.load_label()
            full, low = preprocess_configurations((pre_full, pre_low), image, label)
            stage = stage_index(case.stage, self.stage_names, case.case_id)
            self.prepared.append(PreparedCase(case.case_id, stage, full, low))

    def network_specs(self) -> tuple[NetworkSpec, NetworkSpec]:
        if self.source is not None:
            arch = self.source.architecture
            return NetworkSpec.from_dict(arch["lowres"]), NetworkSpec.from_dict(arch["fullres"])
        return network_specs(self.plan, self.options)

    def fit_segmentation(self, phase: str, net: SegmentationNet, cases: list[TrainingCase],
                         vcases: list[TrainingCase], patch: list[int], batch: int, epochs: int) -> dict:
        """Train one segmentation phase; its validation Dice (none without a validation fold)."""
        options, anisotropic = self.options, max(self.cfg_full.spacing) / min(self.cfg_full.spacing) >= 2.0
        class_weights = [0.0] + [3.0 if i == self.tumour_value else 1.0 for i in range(1, self.num_classes)]
        data = PatchDataset(cases, patch, samples=options.steps_per_epoch * batch,
                            augment=nnunet_augmentation(anisotropic=anisotropic,
                                                        prior_channels=cases[0].image.shape[0] - 1,
                                                        perturb_prior=options.perturb_prior),
                            class_weights=class_weights)
        val = ValidationCases([c.image for c in vcases], [c.label for c in vcases]) if vcases else None
        window = SlidingWindowPredictor(patch, self.device, overlap=0.5, sw_batch_size=2)
        class_names = [self.plan.label_names[i] for i in range(1, self.num_classes)]
        task = SegmentationTask(self.loss, self.num_classes, lambda model, image: window(model, image),
                                class_names)
        cfg = trainer_config(options, self.work / phase, epochs, batch, options.lr,
                             "val_dice" if val else "train_loss", "max" if val else "min", options.steps_per_epoch)
        result = Trainer(net, task, data, val, cfg, callbacks=[PhaseTaggedCallbacks(phase, self.callbacks)],
                         cancel=self.cancel, collate_fn=None, resume=self.resume).fit()
        if result.cancelled:
            raise Cancelled(CANCELLED_MESSAGE)
        if val is None:
            return {}
        return {k[len("val_"):]: v for k, v in final_metrics(result).items() if k.startswith("val_dice")}

    def start_or_fit(self, phase: str, net: SegmentationNet, weights: str, epochs: int,
                     fit: Callable[[], dict]) -> None:
        """Start ``net`` from the source model if there is one; 0 epochs keep it (and its metrics)."""
        if self.source is not None:
            net.load_state_dict(self.source.load_state_dict(weights))
            if epochs == 0:
                self.metrics[phase] = self.source.metrics.get(phase, {})
                return
        self.metrics[phase] = fit()

    def segmentation_phases(self, spec_low: NetworkSpec, spec_full: NetworkSpec
                            ) -> tuple[SegmentationNet, SegmentationNet]:
        """Phase 1: the low-resolution network, the cascade priors, the full-resolution network."""
        options, cfg_low, cfg_full = self.options, self.cfg_low, self.cfg_full
        train_cases, val_cases = self.train_cases, self.val_cases
        if self.source is not None:
            log.info("Segmentation networks start from model '%s' %s (epochs: low-res %d, full-res %d).",
                     self.source.id, self.source.version, options.lowres_epochs, options.fullres_epochs)
        low_net = SegmentationNet(spec_low)

        def low(cases: list[PreparedCase]) -> list[TrainingCase]:
            return [TrainingCase(c.case_id, c.low.image, c.low.label, c.stage) for c in cases]

        self.start_or_fit("lowres", low_net, LOWRES, options.lowres_epochs, lambda: self.fit_segmentation(
            "lowres", low_net, low(train_cases), low(val_cases), cfg_low.patch_size,
            options.batch_size or cfg_low.batch_size, options.lowres_epochs))
        low_net.eval()
        # nnU-Net feeds the full-resolution stage with cross-validated low-resolution predictions; here the
        # one low-resolution network predicts every case (training cases included), which is cheaper but a
        # little optimistic on the training cases. Held-out cases need this prior only to validate a
        # full-resolution phase that trains; the classifier is validated on the mirrored prior made for
        # them in :meth:`krt_boxes`.
        fullres_trains = self.source is None or options.fullres_epochs > 0
        self.add_priors(low_net, self.prepared if fullres_trains else train_cases, SlidingWindowPredictor(
            cfg_low.patch_size, self.device))
        full_net = SegmentationNet(spec_full)

        def full(cases: list[PreparedCase]) -> list[TrainingCase]:  # needs the priors: built only to train
            return [TrainingCase(c.case_id, fullres_input(c), c.full.label, c.stage) for c in cases]

        self.start_or_fit("fullres", full_net, FULLRES, options.fullres_epochs, lambda: self.fit_segmentation(
            "fullres", full_net, full(train_cases), full(val_cases), cfg_full.patch_size,
            options.batch_size or cfg_full.batch_size, options.fullres_epochs))
        full_net.eval()
        return low_net, full_net

    def add_priors(self, low_net: SegmentationNet, cases: list[PreparedCase],
                   window: SlidingWindowPredictor) -> None:
        """Give each case its cascade prior: the low-resolution prediction on the full-resolution grid."""
        for c in cases:
            check_cancel(self.cancel)
            c.prior = lowres_to_fullres(window(low_net, c.low.image, self.cancel), c.low.record, c.full.record,
                                        self.num_classes)

    def krt_boxes(self, low_net: SegmentationNet, full_net: SegmentationNet
                  ) -> tuple[list[KrtBox] | None, list[KrtBox] | None]:
        """Phase 2: training boxes on the reference tumour; validation boxes (and priors) as Segment &
        Stage makes them by default (``--tta all``), from the mirrored sliding windows."""
        organ = self.plan.labels.get(ORGAN_OF_ORIGIN)
        use_box, val_cases = self.options.uses_krt, self.val_cases
        train_boxes = [krt_box(c.full.label, self.box_size, self.tumour_value, organ)
                       for c in self.train_cases] if use_box else None
        mirrored_low = SlidingWindowPredictor(self.cfg_low.patch_size, self.device,
                                              mirror_axes=SEGMENTATION_MIRROR_AXES)
        mirrored_full = SlidingWindowPredictor(self.cfg_full.patch_size, self.device,
                                               mirror_axes=SEGMENTATION_MIRROR_AXES)
        self.add_priors(low_net, val_cases, mirrored_low)
        if not (use_box and val_cases):
            return train_boxes, None
        val_boxes = []
        for c in val_cases:
            check_cancel(self.cancel)
            pred = mirrored_full(full_net, fullres_input(c), self.cancel).argmax(0).numpy().astype(np.uint8)
            pred = keep_largest_object(pred, self.plan.labels)  # as Segment & Stage does before its KRT crop
            val_boxes.append(krt_box(pred, self.box_size, self.tumour_value, organ))
        return train_boxes, val_boxes

    def classifier_phase(self, spec_full: NetworkSpec, full_net: SegmentationNet,
                         boxes: tuple[list[KrtBox] | None, list[KrtBox] | None], whole: list[int] | None
                         ) -> tuple[NnMTNet, ClassifierOptions]:
        """Phase 3: the stage classifier on the frozen segmentation network's crops."""
        options, train_cases, val_cases = self.options, self.train_cases, self.val_cases
        cls_options = ClassifierOptions(num_stages=len(self.stage_names), attention=options.attention)
        net = NnMTNet(spec_full, cls_options)
        net.segmentation.load_state_dict(full_net.state_dict())
        if options.transfer:
            copied = net.transfer_encoder()
            log.info("Transferred %d encoder tensors from the segmentation encoder to the classifier.", copied)
        for p in net.segmentation.parameters():
            p.requires_grad_(False)
        cls_task = ClassificationTask(stage_focal_loss(self.plan.stage_loss_weights), classify_batch,
                                      len(self.stage_names), mirror_axes=CLASSIFIER_MIRROR_AXES)
        cls_train = StageCrops(train_cases, boxes[0], whole, train=True, jitter=options.krt_jitter)
        cls_val = StageCrops(val_cases, boxes[1], whole, train=False, jitter=0) if val_cases else None
        cfg = trainer_config(options, self.work / "classifier", options.classifier_epochs,
                             min(options.classifier_batch_size, len(train_cases)), options.classifier_lr,
                             "val_auc" if cls_val else "train_loss", "max" if cls_val else "min", None)
        result = Trainer(net, cls_task, cls_train, cls_val, cfg, cancel=self.cancel, resume=self.resume,
                         callbacks=[PhaseTaggedCallbacks("classifier", self.callbacks)]).fit()
        if result.cancelled:
            raise Cancelled(CANCELLED_MESSAGE)
        chosen, kept_epoch = final_metrics(result), result.epochs_run
        if options.classifier_checkpoint == "best" and result.best_checkpoint_path is not None:
            net.load_state_dict(load_model_weights(result.best_checkpoint_path))
            chosen, kept_epoch = epoch_metrics(result, result.best_epoch), result.best_epoch
            log.info("Classifier: kept epoch %s (best validation macro AUC %.3f) of %d.", kept_epoch,
                     result.best_metric, result.epochs_run)
        self.metrics["classifier"] = {k: v for k, v in chosen.items() if k.startswith("val_")}
        if options.classifier_checkpoint == "best":
            self.metrics["classifier"]["epoch"] = kept_epoch
        return net, cls_options

    def run(self) -> dict[str, Any]:
        """All three phases: the architecture record and the weights of the bundle."""
        spec_low, spec_full = self.network_specs()
        low_net, full_net = self.segmentation_phases(spec_low, spec_full)
        boxes = self.krt_boxes(low_net, full_net)
        whole = None if self.options.uses_krt else whole_volume_size(self.prepared, spec_full.total_stride)
        net, cls_options = self.classifier_phase(spec_full, full_net, boxes, whole)
        options = self.options
        return {"architecture": {"name": ARCHITECTURE, "lowres": spec_low.to_dict(),
                                 "fullres": spec_full.to_dict(), "classifier": asdict(cls_options),
                                 "krt": options.uses_krt, "direct_3d": options.direct_3d,
                                 "whole_volume_size": whole, "variant": options.variant},
                "weights": {LOWRES: low_net.state_dict(), FULLRES: net.segmentation.state_dict(),
                            CLASSIFIER: net.classifier.state_dict()}}

    def training_record(self, dataset: str | Path, command: str | None, duration_s: float) -> dict[str, Any]:
        """The bundle's ``training`` section: data, command, options, source model, hardware, duration."""
        ds, source = self.ds.description, self.source
        return {
            "data": {"dataset": ds.name, "path": str(Path(dataset).absolute()),
                     "cases": len(self.prepared), "train_cases": sorted(self.train_ids),
                     "val_cases": sorted(self.val_ids), "description": ds.description or ""},
            "command": command_line(command),
            "options": asdict(self.options), "seed": self.options.seed,
            "segmentation_from": None if source is None else {
                "id": source.id, "version": source.version,
                "sha256": {w.name: w.sha256 for w in source.weights if w.name in (LOWRES, FULLRES)}},
            "hardware": {"device": describe_device(self.device), "platform": platform.platform(),
                         "torch": torch.__version__},
            "duration_s": round(duration_s, 1),
            MANIFEST_KEY: dataset_profile(self.ds, self.train_ids).to_dict(),
        }


def train(dataset: str | Path, out_dir: str | Path, options: TrainOptions | None = None,
          plan: Plan | str | Path | None = None, callbacks: Sequence[Callback] = (),
          cancel: Callable[[], bool] | None = None, overwrite: bool = False, command: str | None = None,
          resume: bool = False) -> ModelBundle:
    """Train nn-TransEC on a raw dataset with stages and write the model bundle to ``out_dir``.

    Working files (checkpoints, ``history.csv`` per phase) go to a hidden ``.<out_dir>.work`` folder
    beside it, which is kept until the bundle is written; the bundle is written atomically at the end,
    so a cancelled or failed run leaves no half-written model. ``resume=True`` continues such a run
    from the last complete epoch of each phase (same options required; the plan and data are re-read).
    """
    options = options or TrainOptions()
    out = Path(out_dir).expanduser().absolute()
    check_bundle_target(out, overwrite, "training")
    work, record = work_dir(out), run_record(dataset, options)
    check_resume(work, record, resume)
    ds = load_training_dataset(dataset)
    source = segmentation_source(options, plan, ds.description.labels)
    run = EsophagusTraining(ds, training_plan(ds, plan, source, options), options, source, work, callbacks,
                            cancel, resume)
    t0 = time.monotonic()
    record_run(work, record, resume)  # the inputs are valid: from here on the run may be resumed
    run.prepare()
    made = run.run()
    training = run.training_record(dataset, command, time.monotonic() - t0)
    check_cancel(cancel)
    bundle = save_bundle(
        out, id=options.model_id, name=options.model_name, version=options.version, task=TASK.name,
        architecture=made["architecture"], plan=run.plan.to_dict(),
        labels=TASK.styled_labels(run.plan.labels), stages=run.stage_names,
        modality=TASK.modality, training=training, metrics=run.metrics, intended_use=options.intended_use,
        weights=made["weights"], overwrite=overwrite,
        model_card=model_card(options, ds.description.name, run.metrics, len(run.prepared)))
    shutil.rmtree(work, ignore_errors=True)
    return bundle
