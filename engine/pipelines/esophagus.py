"""EsophagusStaging: nn-TransEC end to end (SPEC §3.1, seed ``ec_nnTransEC_esophageal_T-stage_CT``).

Training runs the paper's three phases — cascade segmentation (low resolution, then full resolution
fed with the one-hot low-resolution prediction), KRT crops around the tumour, and stage
classification with transfer from the segmentation encoder and cross-task attention — and writes one
model bundle. :class:`EsophagusPredictor` loads a bundle once and runs Segment & Stage on any number
of CT volumes; everything it returns is in the input's original geometry.

Only what is specific to this task lives here; blocks, losses, KRT, Grad-CAM, sliding windows,
volumes and result writing are shared with the other pipelines.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from engine.data.dataset import RawDataset
from engine.data.patches import PatchDataset, TrainingCase, nnunet_augmentation, one_hot
from engine.errors import Cancelled, EngineError, ImageError, TrainingError
from engine.explain.gradcam import grad_cam, paste_into_volume
from engine.inference.krt import KrtBox, box_around, crop_box, krt_box
from engine.inference.postprocess import keep_largest_component
from engine.inference.sliding_window import SlidingWindowPredictor
from engine.inference.tta import mirrored_class_probabilities
from engine.inference.volumes import structure_volumes_cm3
from engine.io.image import Image
from engine.losses import DeepSupervisionLoss, segmentation_loss, stage_focal_loss
from engine.metrics._common import format_number
from engine.models.nn_mtnet import ClassifierOptions, NetworkSpec, NnMTNet, SegmentationNet
from engine.planning.planner import Plan
from engine.preprocessing.pipeline import (PreprocessedCase, Preprocessor, PreprocessRecord,
                                          preprocess_configurations)
from engine.registry.bundle import (DEMO_INTENDED_USE, HALF_PRECISION_STORAGE, Label, ModelBundle,
                                    save_bundle)
from engine.training.config import OptimizerConfig, SchedulerConfig, TrainerConfig
from engine.training.tasks import ClassificationTask, SegmentationTask
from engine.training.callbacks import read_history
from engine.training.checkpoint import load_model_weights
from engine.training.trainer import Callback, Trainer, TrainingResult
from engine.utils.device import describe_device, select_device

log = logging.getLogger(__name__)

TASK = "esophagus"
ARCHITECTURE = "nn-MTNet"
LOWRES, FULLRES, CLASSIFIER = "segmentation_lowres", "segmentation_fullres", "classifier"
STAGES = ("T1", "T2", "T3", "T4")
CLASSIFIER_CHECKPOINTS = ("final", "best")
TUMOUR, ORGAN_OF_ORIGIN = "EC", "esophagus"
#: Structures that are one object in every patient (paper §3.3 post-processing); lymph nodes are many.
SINGLE_OBJECT = ("EC", "aorta", "esophagus", "pericardium")
#: Spatial axes (z, y, x → 0, 1, 2) the stage classifier sees mirrored in training and averages over at
#: inference: in-plane only, the cranio-caudal order carries anatomy (tumour above/below the carina).
CLASSIFIER_MIRROR_AXES = (1, 2)
#: The segmentation networks see every axis mirrored in training (nnU-Net's augmentation).
SEGMENTATION_MIRROR_AXES = (0, 1, 2)
#: Test-time augmentation levels: "all" mirrors the segmentation (each axis once: 4 passes per window)
#: and the stage classifier (4 in-plane mirrorings); "stage" only the classifier; "none" neither.
TTA_MODES = ("all", "stage", "none")
#: ``architecture`` key of a bundle that stages with several classifiers: their weights names, in order.
CLASSIFIER_MEMBERS = "classifier_members"


def _code(scheme: str, code: str, meaning: str) -> dict[str, str]:
    return {"coding_scheme": scheme, "code": code, "meaning": meaning}


#: Display colour (0–255) and SNOMED CT terminology of each structure, as Slicer's segment editor shows them.
STRUCTURE_STYLE: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {
    "EC": ((230, 41, 41), {"category": _code("SCT", "49755003", "Morphologically Altered Structure"),
                           "type": _code("SCT", "108369006", "Neoplasm")}),
    "aorta": ((224, 122, 40), {"category": _code("SCT", "123037004", "Anatomical Structure"),
                               "type": _code("SCT", "15825003", "Aorta")}),
    "esophagus": ((214, 184, 128), {"category": _code("SCT", "123037004", "Anatomical Structure"),
                                    "type": _code("SCT", "32849002", "Esophagus")}),
    "lymph node": ((80, 190, 80), {"category": _code("SCT", "123037004", "Anatomical Structure"),
                                   "type": _code("SCT", "59441001", "Lymph node")}),
    "pericardium": ((90, 130, 230), {"category": _code("SCT", "123037004", "Anatomical Structure"),
                                     "type": _code("SCT", "76848001", "Pericardium")}),
}

ProgressFn = Callable[[str, float], None]
CancelFn = Callable[[], bool]


def bundle_labels(labels: dict[str, int]) -> list[Label]:
    out = []
    for name, value in sorted(labels.items(), key=lambda kv: kv[1]):
        if value == 0:
            continue
        colour, term = STRUCTURE_STYLE.get(name, ((200, 200, 200), None))
        out.append(Label(name, int(value), colour, term))
    return out


# ============================================================================ training


@dataclass
class TrainOptions:
    """Everything ``engine train --task esophagus`` decides; recorded in the bundle.

    Epoch counts are per phase. ``base_features``/``max_features`` narrow the plan's network width
    (nnU-Net default 32→320), e.g. for CPU training or small demo weights. Ablation switches
    (nn-TransEC Tables 12–13): ``krt=False`` classifies the whole volume with the same network;
    ``attention=False`` drops the cross-task gates; ``transfer=False`` starts the classification
    encoder from random weights; ``direct_3d=True`` is a plain 3D classifier of the whole volume
    (no KRT, no attention, no transfer: segmentation does not inform staging at all).
    ``segmentation_from`` (a bundle path or installed id) starts from that bundle's plan and cascade
    segmentation networks: a segmentation phase with 0 epochs keeps its network as it is, more epochs
    continue training it (fine-tuning on new data, or adding budget across sessions). When both
    phases train further, the intensity normalisation and stage weights are re-planned on the new
    dataset (:func:`~engine.planning.planner.transfer_plan`); otherwise the source's stay. The classifier
    is always trained anew. With both segmentation phases at 0 the ablation variants differ in the
    staging phase alone, and staging can be retrained on new stage labels without re-segmenting.
    """

    lowres_epochs: int = 50
    fullres_epochs: int = 50
    classifier_epochs: int = 50
    steps_per_epoch: int = 50
    batch_size: int | None = None
    classifier_batch_size: int = 12
    lr: float = 1e-3
    classifier_lr: float = 3e-4
    seg_loss: str = "focal+dice"
    #: Train the full-resolution stage on randomly perturbed low-resolution priors (nnU-Net's cascade
    #: augmentation), so it learns to correct the prior instead of copying its extent. Off by default:
    #: a fine-tune of the demo model with it measured no gain in tumour Dice (docs/results.md, session 23).
    perturb_prior: bool = False
    base_features: int | None = None
    max_features: int | None = None
    fold: int | None = 0
    folds: int = 5
    seed: int = 0
    device: str = "auto"
    val_every: int = 5
    num_workers: int = 0
    krt: bool = True
    attention: bool = True
    transfer: bool = True
    direct_3d: bool = False
    krt_jitter: float = 0.125
    #: Which classifier goes into the bundle: the last epoch's, or the one with the best validation
    #: macro AUC (needs a validation fold; small staging datasets overfit late).
    classifier_checkpoint: str = "final"
    segmentation_from: str | None = None
    model_id: str = "esophagus-nntransec"
    model_name: str = "nn-TransEC esophageal cancer segmentation and T-staging"
    version: str = "1.0.0"
    intended_use: str = "research use only; not a medical device"

    def __post_init__(self) -> None:
        if self.classifier_checkpoint not in CLASSIFIER_CHECKPOINTS:
            raise TrainingError(f"classifier_checkpoint must be one of {CLASSIFIER_CHECKPOINTS}, "
                                f"got {self.classifier_checkpoint!r}.")
        if self.classifier_checkpoint == "best" and self.fold is None:
            raise TrainingError("Keeping the best classifier needs a validation fold to judge it by; "
                                "choose --fold N instead of 'all', or keep the final classifier.")
        if self.direct_3d:
            self.krt = self.attention = self.transfer = False
        for name in ("lowres_epochs", "fullres_epochs", "classifier_epochs", "steps_per_epoch",
                     "classifier_batch_size", "val_every"):
            least = 0 if self.segmentation_from and name in ("lowres_epochs", "fullres_epochs") else 1
            if getattr(self, name) < least:
                raise TrainingError(f"{name} must be ≥ {least}, got {getattr(self, name)}"
                                    + (" (0 keeps a phase's network, which needs --segmentation-from)."
                                       if getattr(self, name) == 0 else "."))

    @property
    def variant(self) -> str:
        if self.direct_3d:
            return "direct-3d"
        off = [n for n, on in (("krt", self.krt), ("attention", self.attention), ("transfer", self.transfer))
               if not on]
        return "full" if not off else "no-" + "-no-".join(off)


@dataclass
class PreparedCase:
    case_id: str
    stage: int | None
    full: PreprocessedCase
    low: PreprocessedCase
    prior: np.ndarray | None = None  # one-hot low-resolution prediction on the full-resolution grid


def lowres_to_fullres(low_probs: torch.Tensor, low: PreprocessRecord, full: PreprocessRecord,
                      num_classes: int) -> np.ndarray:
    """One-hot of the low-resolution prediction on the full-resolution grid (same crop box: both
    configurations crop the same foreground box, so only resize and padding differ)."""
    from engine.preprocessing.crop import pad, unpad

    probs = unpad(low_probs.numpy(), low.pads)
    resized = F.interpolate(torch.from_numpy(np.ascontiguousarray(probs))[None], size=full.resampled_shape,
                            mode="trilinear", align_corners=False)[0]
    labels = resized.argmax(0).numpy().astype(np.uint8)
    return pad(one_hot(labels, num_classes), full.pads, value=0.0)


def keep_largest_object(pred: np.ndarray, labels: dict[str, int]) -> np.ndarray:
    """The paper's post-processing: the largest connected component of each single-object structure."""
    return keep_largest_component(pred, [labels[n] for n in SINGLE_OBJECT if n in labels])


def outside_values(seg_input: np.ndarray) -> list[float]:
    """What a crop reaching outside the volume is padded with, per channel of the full-resolution
    input: the CT's minimum (air after normalisation) and a one-hot prior saying "background"."""
    return [float(seg_input[0].min()), 1.0] + [0.0] * (seg_input.shape[0] - 2)


def _fullres_input(case: PreparedCase) -> np.ndarray:
    assert case.prior is not None
    return np.concatenate([case.full.image, case.prior], axis=0)


def network_specs(plan: Plan, options: TrainOptions) -> tuple[NetworkSpec, NetworkSpec]:
    num_classes = len(plan.labels)
    low = NetworkSpec.from_topology(plan.configuration("3d_lowres").network, 1, num_classes,
                                    options.base_features, options.max_features)
    full = NetworkSpec.from_topology(plan.configuration("3d_fullres").network, 1 + num_classes, num_classes,
                                     options.base_features, options.max_features)
    return low, full


class _PhaseTaggedCallbacks:
    """Tags trainer events with the phase, so one GUI progress bar can follow all three phases."""

    def __init__(self, phase: str, callbacks: Sequence[Callback]):
        self.phase = phase
        self.callbacks = list(callbacks)

    def __call__(self, event: Any) -> None:
        event.message = f"{self.phase}: {event.message}" if event.message else self.phase
        for cb in self.callbacks:
            cb(event)


def _trainer_config(options: TrainOptions, out_dir: Path, epochs: int, batch: int, lr: float,
                    monitor: str, mode: str, steps: int | None) -> TrainerConfig:
    return TrainerConfig(epochs=epochs, steps_per_epoch=steps, batch_size=batch, val_batch_size=1,
                         num_workers=options.num_workers, val_every=options.val_every, monitor=monitor,
                         mode=mode, seed=options.seed, device=options.device, out_dir=str(out_dir),
                         grad_clip=12.0,
                         optimizer=OptimizerConfig(name="adam", lr=lr, weight_decay=3e-5),
                         scheduler=SchedulerConfig(name="cosine"))


def _segmentation_infer(patch_size: Sequence[int], device: torch.device) -> Callable:
    window = SlidingWindowPredictor(patch_size, device, overlap=0.5, sw_batch_size=2)
    return lambda model, image: window(model, image)


class _ValidationCases(torch.utils.data.Dataset):
    def __init__(self, images: list[np.ndarray], labels: list[np.ndarray]):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {"image": self.images[i], "label": self.labels[i]}


def _no_collate(items: list[Any]) -> Any:
    return items[0]


class StageCrops(torch.utils.data.Dataset):
    """Classifier inputs: the KRT crop (or the whole volume) of the CT and of the segmentation input.

    Training boxes are centred on the reference tumour with a random shift of up to ``jitter`` of the
    box (robustness to imperfect predicted centres); validation boxes are centred on the predicted
    tumour, exactly as at inference.
    """

    def __init__(self, cases: list[PreparedCase], boxes: list[KrtBox] | None, size: Sequence[int] | None,
                 train: bool, jitter: float):
        self.cases, self.boxes, self.size, self.train, self.jitter = cases, boxes, size, train, jitter

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        case = self.cases[i]
        seg_input = _fullres_input(case)
        if self.boxes is not None:
            box = self.boxes[i]
            if self.train and self.jitter > 0:
                shift = [np.random.uniform(-self.jitter, self.jitter) * n for n in box.size]
                box = box_around([c + s for c, s in zip(box.centre, shift)], box.size, box.source)
            seg_input = crop_box(seg_input, box, pad_value=outside_values(seg_input))
        elif self.size is not None:
            seg_input = crop_box(seg_input, box_around([(n - 1) / 2 for n in seg_input.shape[1:]], self.size,
                                                       "volume"), pad_value=outside_values(seg_input))
        if self.train:
            for axis in (0, 1, 2):  # one draw per axis, mirrored or not (keeps seeded runs reproducible)
                if np.random.rand() < 0.5 and axis in CLASSIFIER_MIRROR_AXES:
                    seg_input = np.flip(seg_input, axis=axis + 1)
            seg_input = seg_input.copy()
            seg_input[0] = seg_input[0] * np.random.uniform(0.9, 1.1) + np.random.normal(0, 0.05)
        x = torch.from_numpy(np.ascontiguousarray(seg_input, dtype=np.float32))
        return {"ct": x[:1], "seg_input": x, "target": torch.tensor(case.stage, dtype=torch.long)}


def _classify_batch(model: NnMTNet, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model.classify(batch["ct"], batch["seg_input"] if model.classifier.uses_attention else None)


def _whole_volume_size(cases: list[PreparedCase], stride: Sequence[int]) -> list[int]:
    biggest = np.max([c.full.image.shape[1:] for c in cases], axis=0)
    return [int(math.ceil(b / s) * s) for b, s in zip(biggest, stride)]


def _stage_index(stage: str | None, names: Sequence[str], case_id: str) -> int:
    if stage not in names:
        raise TrainingError(f"Case '{case_id}' has no valid T-stage ({stage!r}); stages.csv must give one of "
                            f"{', '.join(names)} for every training case.")
    return list(names).index(stage)


def _check_cancel(cancel: CancelFn | None) -> None:
    if cancel is not None and cancel():
        raise Cancelled("training cancelled by the user; no model was written")


def _segmentation_source(options: TrainOptions, plan: Plan | str | Path | None,
                         dataset_labels: dict[str, int]) -> ModelBundle | None:
    """The bundle whose segmentation networks ``options.segmentation_from`` names, checked for use."""
    if not options.segmentation_from:
        return None
    if plan is not None:
        raise TrainingError("--segmentation-from reuses that model's plan; do not also give --plan.")
    source = load_model(options.segmentation_from)
    if dict(source.plan.get("labels", {})) != dict(dataset_labels):
        raise TrainingError(f"Model '{source.id}' segments labels {source.plan.get('labels')}, but this dataset "
                            f"has {dataset_labels}; reuse segmentation only on a dataset with the same labels.")
    return source


def work_dir(out_dir: str | Path) -> Path:
    """Where a training into ``out_dir`` keeps its checkpoints until the bundle is written (for ``resume``)."""
    out = Path(out_dir)
    return out.parent / f".{out.name}.work"


#: Written into the work folder when a run starts, so ``resume`` can refuse different options.
RUN_OPTIONS_FILE = "train_options.json"


def _final_metrics(result: TrainingResult) -> dict[str, float]:
    """The last epoch's metrics, also when that epoch ran before a resume (then from ``history.csv``)."""
    if result.final_metrics or not result.history_path.is_file():
        return dict(result.final_metrics)
    return _epoch_metrics(result, None)


def _epoch_metrics(result: TrainingResult, epoch: int | None) -> dict[str, float]:
    """One epoch's row of ``history.csv`` (the last row for ``None``)."""
    rows = read_history(result.history_path) if result.history_path.is_file() else []
    if epoch is not None:
        rows = [r for r in rows if r["epoch"] == epoch]
    return {k: v for k, v in rows[-1].items() if v is not None and k not in ("epoch", "lr")} if rows else {}


def _run_record(dataset: str | Path, options: TrainOptions) -> dict[str, Any]:
    """What must not change between a stopped run and its resume: the dataset and every option."""
    return json.loads(json.dumps({"dataset": str(Path(dataset).expanduser().absolute()), **asdict(options)}))


def _check_resume(work: Path, current: dict[str, Any], resume: bool) -> None:
    """On resume, refuse a dataset or options that differ from the stopped run's (read-only: bad input
    writes nothing)."""
    recorded = work / RUN_OPTIONS_FILE
    if resume:
        if not work.is_dir():
            raise TrainingError(f"Nothing to resume: no unfinished training in {work}. Run without resume.")
        if recorded.is_file():
            before = json.loads(recorded.read_text())
            changed = sorted(k for k in set(before) | set(current) if before.get(k) != current.get(k))
            if changed:
                diffs = ", ".join(f"{k} ({before.get(k)!r} → {current.get(k)!r})" for k in changed)
                raise TrainingError(f"resume continues a stopped run with the same options, but these "
                                    f"differ: {diffs}. Repeat the original command with --resume.")
        else:
            log.warning("%s has no %s (written by an older engine): resuming without checking the options.",
                        work, RUN_OPTIONS_FILE)
        log.info("Resuming the training in %s.", work)
    elif work.is_dir():
        log.warning("%s holds an unfinished training; starting over (pass resume to continue it).", work)


def _record_run(work: Path, record: dict[str, Any], resume: bool) -> None:
    """Write the run record; a new run first clears an earlier run's work folder, so a later resume
    cannot pick up that run's checkpoints for a phase this run has not reached."""
    if not resume:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    (work / RUN_OPTIONS_FILE).write_text(json.dumps(record, indent=1))


def _command_line(command: str | None) -> str:
    """What a bundle records as the command that made it: the caller's, else this process's."""
    return command or " ".join(shlex.quote(a) for a in sys.argv)


def train(dataset: str | Path, out_dir: str | Path, options: TrainOptions | None = None,
          plan: Plan | str | Path | None = None, callbacks: Sequence[Callback] = (),
          cancel: CancelFn | None = None, overwrite: bool = False, command: str | None = None,
          resume: bool = False) -> ModelBundle:
    """Train nn-TransEC on a raw dataset with stages and write the model bundle to ``out_dir``.

    Working files (checkpoints, ``history.csv`` per phase) go to a hidden ``.<out_dir>.work`` folder
    beside it, which is kept until the bundle is written; the bundle is written atomically at the end,
    so a cancelled or failed run leaves no half-written model. ``resume=True`` continues such a run
    from the last complete epoch of each phase (same options required; the plan and data are re-read).
    """
    from engine.data.splits import dataset_splits
    from engine.data.validate import validate_dataset
    from engine.planning import extract_fingerprint, make_plan, transfer_plan
    from engine.registry.bundle import _check_target

    options = options or TrainOptions()
    out = Path(out_dir).expanduser().absolute()
    _check_target(out, overwrite, "training")
    work, record = work_dir(out), _run_record(dataset, options)
    _check_resume(work, record, resume)
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
    source = _segmentation_source(options, plan, ds.description.labels)
    if source is not None:
        plan = Plan.from_dict(source.plan)
        if options.lowres_epochs > 0 and options.fullres_epochs > 0:
            # every network is trained further: normalise as this dataset needs (a kept network
            # must see the intensities it was trained on, so then the source's normalisation stays)
            plan = transfer_plan(plan, extract_fingerprint(ds))
            log.info("Fine-tuning: intensity normalisation re-planned on this dataset (clip %s HU).",
                     [round(c, 1) for c in plan.normalization.clip or []])
    elif plan is None:
        plan = make_plan(extract_fingerprint(ds), TASK)
    elif not isinstance(plan, Plan):
        plan = Plan.load(plan)
    stage_names = list(plan.stage_names or STAGES)
    device = select_device(options.device)
    torch.manual_seed(options.seed)
    np.random.seed(options.seed % 2**32)
    t0 = time.monotonic()
    _record_run(work, record, resume)  # the inputs are valid: from here on the run may be resumed

    if options.fold is not None:
        split = dataset_splits(ds, folds=options.folds, seed=options.seed)[options.fold]
        train_ids, val_ids = set(split["train"]), set(split["val"])
    else:
        train_ids, val_ids = {c.case_id for c in ds.training}, set()
    log.info("Training %s on %d case(s), validating on %d (fold %s), device %s", options.variant,
             len(train_ids), len(val_ids), options.fold, describe_device(device))

    # --- preprocessing (both cascade resolutions) -----------------------------------------------
    pre_low, pre_full = Preprocessor(plan, "3d_lowres"), Preprocessor(plan, "3d_fullres")
    prepared: list[PreparedCase] = []
    for case in ds.training:
        _check_cancel(cancel)
        image, label = case.load_image(), case.load_label()
        full, low = preprocess_configurations((pre_full, pre_low), image, label)
        prepared.append(PreparedCase(case.case_id, _stage_index(case.stage, stage_names, case.case_id),
                                     full, low))
    train_cases = [c for c in prepared if c.case_id in train_ids]
    val_cases = [c for c in prepared if c.case_id in val_ids]
    num_classes = len(plan.labels)
    class_names = [plan.label_names[i] for i in range(1, num_classes)]
    tumour_value = plan.labels[TUMOUR]
    class_weights = [0.0] + [3.0 if i == tumour_value else 1.0 for i in range(1, num_classes)]
    if source is not None:
        spec_low = NetworkSpec.from_dict(source.architecture["lowres"])
        spec_full = NetworkSpec.from_dict(source.architecture["fullres"])
    else:
        spec_low, spec_full = network_specs(plan, options)
    metrics: dict[str, Any] = {}
    cfg_low, cfg_full = plan.configuration("3d_lowres"), plan.configuration("3d_fullres")
    anisotropic = max(cfg_full.spacing) / min(cfg_full.spacing) >= 2.0
    loss = DeepSupervisionLoss(segmentation_loss(options.seg_loss))

    def fit_segmentation(phase: str, net: SegmentationNet, cases: list[TrainingCase],
                         vcases: list[TrainingCase], patch: list[int], batch: int, epochs: int) -> dict:
        data = PatchDataset(cases, patch, samples=options.steps_per_epoch * batch,
                            augment=nnunet_augmentation(anisotropic=anisotropic, prior_channels=cases[0].image.shape[0] - 1,
                                                        perturb_prior=options.perturb_prior),
                            class_weights=class_weights)
        val = _ValidationCases([c.image for c in vcases], [c.label for c in vcases]) if vcases else None
        task = SegmentationTask(loss, num_classes, _segmentation_infer(patch, device), class_names)
        cfg = _trainer_config(options, work / phase, epochs, batch, options.lr,
                              "val_dice" if val else "train_loss", "max" if val else "min", options.steps_per_epoch)
        result = Trainer(net, task, data, val, cfg, callbacks=[_PhaseTaggedCallbacks(phase, callbacks)],
                         cancel=cancel, collate_fn=None, resume=resume).fit()
        if result.cancelled:
            raise Cancelled("training cancelled by the user; no model was written")
        if val is None:
            return {}
        return {k[len("val_"):]: v for k, v in _final_metrics(result).items() if k.startswith("val_dice")}

    def start_or_fit(phase: str, net: SegmentationNet, weights: str, epochs: int,
                     fit: Callable[[], dict]) -> dict:
        """Start ``net`` from the source model if there is one; 0 epochs keep it (and its metrics)."""
        if source is not None:
            net.load_state_dict(source.load_state_dict(weights))
            if epochs == 0:
                return source.metrics.get(phase, {})
        return fit()

    if source is not None:
        log.info("Segmentation networks start from model '%s' %s (epochs: low-res %d, full-res %d).",
                 source.id, source.version, options.lowres_epochs, options.fullres_epochs)
    # --- phase 1a: low-resolution segmentation ---------------------------------------------------
    low_net = SegmentationNet(spec_low)
    to_tc = lambda c, pre: TrainingCase(c.case_id, pre.image, pre.label, c.stage)  # noqa: E731
    metrics["lowres"] = start_or_fit("lowres", low_net, LOWRES, options.lowres_epochs, lambda: fit_segmentation(
        "lowres", low_net, [to_tc(c, c.low) for c in train_cases], [to_tc(c, c.low) for c in val_cases],
        cfg_low.patch_size, options.batch_size or cfg_low.batch_size, options.lowres_epochs))
    low_net.eval()
    # --- cascade input: low-resolution predictions on the full-resolution grid ------------------
    # nnU-Net feeds the full-resolution stage with cross-validated low-resolution predictions; here the
    # one low-resolution network predicts every case (training cases included), which is cheaper but a
    # little optimistic on the training cases. The KRT crops below use the reference tumour with jitter.
    # Held-out cases need this prior only to validate a full-resolution phase that trains; the
    # classifier is validated on the mirrored prior made for them below.
    fullres_trains = source is None or options.fullres_epochs > 0
    window_low = SlidingWindowPredictor(cfg_low.patch_size, device)
    for c in prepared if fullres_trains else train_cases:
        _check_cancel(cancel)
        c.prior = lowres_to_fullres(window_low(low_net, c.low.image, cancel), c.low.record, c.full.record,
                                    num_classes)
    # --- phase 1b: full-resolution segmentation --------------------------------------------------
    full_net = SegmentationNet(spec_full)
    full_tc = lambda c: TrainingCase(c.case_id, _fullres_input(c), c.full.label, c.stage)  # noqa: E731
    metrics["fullres"] = start_or_fit("fullres", full_net, FULLRES, options.fullres_epochs, lambda: fit_segmentation(
        "fullres", full_net, [full_tc(c) for c in train_cases], [full_tc(c) for c in val_cases],
        cfg_full.patch_size, options.batch_size or cfg_full.batch_size, options.fullres_epochs))
    full_net.eval()
    # --- phase 2: KRT boxes ----------------------------------------------------------------------
    box_size = plan.krt_box_size or cfg_full.patch_size
    use_box = options.krt and not options.direct_3d
    train_boxes = [krt_box(c.full.label, box_size, tumour_value, plan.labels.get(ORGAN_OF_ORIGIN))
                   for c in train_cases] if use_box else None
    # The classifier is validated on what Segment & Stage gives it by default (--tta all): cascade
    # prior and KRT box from the mirrored sliding windows.
    mirrored_low = SlidingWindowPredictor(cfg_low.patch_size, device, mirror_axes=SEGMENTATION_MIRROR_AXES)
    mirrored_full = SlidingWindowPredictor(cfg_full.patch_size, device, mirror_axes=SEGMENTATION_MIRROR_AXES)
    for c in val_cases:
        _check_cancel(cancel)
        c.prior = lowres_to_fullres(mirrored_low(low_net, c.low.image, cancel), c.low.record, c.full.record,
                                    num_classes)
    val_boxes = None
    if use_box and val_cases:
        val_boxes = []
        for c in val_cases:
            _check_cancel(cancel)
            pred = mirrored_full(full_net, _fullres_input(c), cancel).argmax(0).numpy().astype(np.uint8)
            pred = keep_largest_object(pred, plan.labels)  # as Segment & Stage does before its KRT crop
            val_boxes.append(krt_box(pred, box_size, tumour_value, plan.labels.get(ORGAN_OF_ORIGIN)))
    whole = None if use_box else _whole_volume_size(prepared, spec_full.total_stride)
    # --- phase 3: classification -----------------------------------------------------------------
    cls_options = ClassifierOptions(num_stages=len(stage_names), attention=options.attention)
    net = NnMTNet(spec_full, cls_options)
    net.segmentation.load_state_dict(full_net.state_dict())
    if options.transfer:
        copied = net.transfer_encoder()
        log.info("Transferred %d encoder tensors from the segmentation encoder to the classifier.", copied)
    for p in net.segmentation.parameters():
        p.requires_grad_(False)
    cls_task = ClassificationTask(stage_focal_loss(plan.stage_loss_weights), _classify_batch, len(stage_names),
                                  mirror_axes=CLASSIFIER_MIRROR_AXES)
    cls_train = StageCrops(train_cases, train_boxes, whole, train=True, jitter=options.krt_jitter)
    cls_val = StageCrops(val_cases, val_boxes, whole, train=False, jitter=0) if val_cases else None
    cfg = _trainer_config(options, work / "classifier", options.classifier_epochs,
                          min(options.classifier_batch_size, len(train_cases)), options.classifier_lr,
                          "val_auc" if cls_val else "train_loss", "max" if cls_val else "min", None)
    result = Trainer(net, cls_task, cls_train, cls_val, cfg, cancel=cancel, resume=resume,
                     callbacks=[_PhaseTaggedCallbacks("classifier", callbacks)]).fit()
    if result.cancelled:
        raise Cancelled("training cancelled by the user; no model was written")
    chosen, kept_epoch = _final_metrics(result), result.epochs_run
    if options.classifier_checkpoint == "best" and result.best_checkpoint_path is not None:
        net.load_state_dict(load_model_weights(result.best_checkpoint_path))
        chosen, kept_epoch = _epoch_metrics(result, result.best_epoch), result.best_epoch
        log.info("Classifier: kept epoch %s (best validation macro AUC %.3f) of %d.", kept_epoch,
                 result.best_metric, result.epochs_run)
    metrics["classifier"] = {k: v for k, v in chosen.items() if k.startswith("val_")}
    if options.classifier_checkpoint == "best":
        metrics["classifier"]["epoch"] = kept_epoch

    architecture = {"name": ARCHITECTURE, "lowres": spec_low.to_dict(), "fullres": spec_full.to_dict(),
                    "classifier": asdict(cls_options), "krt": use_box, "direct_3d": options.direct_3d,
                    "whole_volume_size": whole, "variant": options.variant}
    training = {
        "data": {"dataset": ds.description.name, "path": str(Path(dataset).absolute()),
                 "cases": len(prepared), "train_cases": sorted(train_ids), "val_cases": sorted(val_ids),
                 "description": ds.description.description or ""},
        "command": _command_line(command),
        "options": asdict(options), "seed": options.seed,
        "segmentation_from": None if source is None else {
            "id": source.id, "version": source.version,
            "sha256": {w.name: w.sha256 for w in source.weights if w.name in (LOWRES, FULLRES)}},
        "hardware": {"device": describe_device(device), "platform": platform.platform(),
                     "torch": torch.__version__},
        "duration_s": round(time.monotonic() - t0, 1),
    }
    _check_cancel(cancel)
    bundle = save_bundle(
        out, id=options.model_id, name=options.model_name, version=options.version, task=TASK,
        architecture=architecture, plan=plan.to_dict(), labels=bundle_labels(plan.labels), stages=stage_names,
        modality="CT", training=training, metrics=metrics, intended_use=options.intended_use,
        weights={LOWRES: low_net.state_dict(), FULLRES: net.segmentation.state_dict(),
                 CLASSIFIER: net.classifier.state_dict()},
        model_card=model_card(options, ds.description.name, metrics, len(prepared)), overwrite=overwrite)
    shutil.rmtree(work, ignore_errors=True)
    return bundle


METHOD_LINE = ("Method: Segmentation prompts classification: nnU-Net-based 3D transfer learning with ROI "
               "tokenization and cross-task attention for esophageal cancer T-stage diagnosis (nn-TransEC).")


def _card_header(name: str, variant: str, dataset_name: str, cases: int | None, intended_use: str,
                 staging: str = "") -> list[str]:
    demo = intended_use == DEMO_INTENDED_USE
    return [f"# {name}", "",
            f"- Task: esophageal cancer CT — segmentation of EC, aorta, esophagus, lymph nodes, pericardium "
            f"and T1–T4 staging (nn-TransEC, variant `{variant}`){staging}.",
            f"- Training data: `{dataset_name}`" + (f", {cases} cases" if cases else "")
            + (" — **synthetic phantoms** generated by `engine synth`." if demo else "."),
            f"- Intended use: {intended_use}.",
            "- Not a medical device. Do not use for diagnosis or treatment decisions."]


def _dice_table(metrics: dict) -> list[str]:
    """Validation Dice per segmentation phase, one column per structure ("n/a": not in the held-out fold)."""
    seg = {phase: m for phase, m in metrics.items() if phase in ("lowres", "fullres") and m}
    if not seg:
        return []
    names = [k[len("dice_"):] for k in next(iter(seg.values())) if k.startswith("dice_")]
    lines = ["## Validation Dice (held-out fold)", "",
             "| stage | mean | " + " | ".join(n.replace("_", " ") for n in names) + " |",
             "|---|---|" + "---|" * len(names)]
    for phase, m in seg.items():
        lines.append(f"| {phase} | {format_number(m.get('dice'))} | "
                     + " | ".join(format_number(m.get('dice_' + n)) for n in names) + " |")
    return lines + [""]


def model_card(options: TrainOptions, dataset_name: str, metrics: dict, cases: int | None = None) -> str:
    """The bundle's MODEL_CARD.md: what the model is for, what it was trained on, how it scored."""
    lines = _card_header(options.model_name, options.variant, dataset_name, cases, options.intended_use)
    lines += [f"- Budget: low-resolution {options.lowres_epochs}, full-resolution {options.fullres_epochs} "
              f"epochs of {options.steps_per_epoch} iterations; classifier {options.classifier_epochs} epochs; seed "
              f"{options.seed}" + (f"; segmentation started from `{options.segmentation_from}`"
                                   if options.segmentation_from else "") + ".", ""]
    lines += _dice_table(metrics)
    cls = metrics.get("classifier") or {}
    if cls:
        lines += ["## Validation staging (held-out fold)", "",
                  ", ".join(f"{k[len('val_'):] if k.startswith('val_') else k} "
                            + (f"{v}" if isinstance(v, int) else f"{v:.3f}") for k, v in cls.items()
                            if isinstance(v, (int, float))), ""]
    return "\n".join(lines + [METHOD_LINE]) + "\n"


def classifier_weight_names(bundle: ModelBundle) -> list[str]:
    """The bundle's stage-classifier weights: one, or an ensemble's members (averaged at inference)."""
    return list(bundle.architecture.get(CLASSIFIER_MEMBERS) or [CLASSIFIER])


def _member_records(bundle: ModelBundle) -> list[dict[str, Any]]:
    """One record per classifier: an ensemble given as a member contributes its members' own records
    (as its weights are flattened), so every card row keeps its run's fold and validation."""
    nested = (bundle.training or {}).get("classifier_ensemble")
    if nested and len(nested) == len(classifier_weight_names(bundle)):
        return [dict(m) for m in nested]
    training, options = bundle.training or {}, (bundle.training or {}).get("options") or {}
    return [{"id": bundle.id, "version": bundle.version, "path": str(bundle.path),
            "sha256": {n: bundle.weight_file(n).sha256 for n in classifier_weight_names(bundle)},
            "command": training.get("command"), "seed": training.get("seed"), "fold": options.get("fold"),
            "classifier_epochs": options.get("classifier_epochs"),
            "val_cases": (training.get("data") or {}).get("val_cases"),
            "validation": (bundle.metrics or {}).get("classifier") or {}}]


def ensemble_classifiers(models: Sequence[str | Path | ModelBundle], out_dir: str | Path, *,
                         model_id: str | None = None, version: str | None = None, overwrite: bool = False,
                         command: str | None = None, weights_dtype: str | None = None) -> ModelBundle:
    """One bundle that stages with the mean probabilities of several models' classifiers.

    A stage classifier trained on ~140 cases moves by several AUC points between runs (seed, fold);
    averaging runs removes that luck. The models must share plan, labels, stages, architecture and
    segmentation networks (bit for bit: train each with ``--segmentation-from`` the same model), and
    their classifiers must differ. The first model gives the segmentation, id and card defaults.
    ``weights_dtype="float16"`` stores every weight in half precision (half the size, for shipping);
    they are computed in float32 as before.
    """
    if len(models) < 2:
        raise EngineError("An ensemble needs at least two models; pass every model whose classifier "
                          "should be averaged.")
    bundles = [load_model(m) for m in models]
    first = bundles[0]

    def shared(b: ModelBundle) -> dict[str, Any]:
        arch = {k: v for k, v in b.architecture.items() if k != CLASSIFIER_MEMBERS}
        return {"plan": b.plan, "labels": [lab.to_dict() for lab in b.labels], "stages": b.stages,
                "modality": b.modality, "architecture": arch,
                "segmentation": {n: b.weight_file(n).sha256 for n in (LOWRES, FULLRES)}}

    reference, seen = shared(first), {}
    for b in bundles:
        differ = [k for k, v in shared(b).items() if v != reference[k]]
        if differ:
            raise EngineError(f"Model {b.path} differs from {first.path} in its {', '.join(differ)}; an "
                              "ensemble averages classifiers on one segmentation: train each member with "
                              f"--segmentation-from {first.path} and the same switches.")
        for name in classifier_weight_names(b):
            digest = b.weight_file(name).sha256
            if digest in seen:
                raise EngineError(f"The classifier '{name}' of {b.path} is identical to one of "
                                  f"{seen[digest]}; each member must be a different training run "
                                  "(another seed or fold).")
            seen[digest] = b.path
    weights: dict[str, dict[str, torch.Tensor]] = {n: first.load_state_dict(n) for n in (LOWRES, FULLRES)}
    names: list[str] = []
    for b in bundles:
        for name in classifier_weight_names(b):
            names.append(CLASSIFIER if not names else f"{CLASSIFIER}_{len(names) + 1}")
            weights[names[-1]] = b.load_state_dict(name)
    members = [record for b in bundles for record in _member_records(b)]
    validated = [m["validation"] for m in members if m["validation"]]
    cls_metrics: dict[str, Any] = {"members": len(names)}
    for key in ("val_auc", "val_accuracy"):
        values = [v[key] for v in validated if isinstance(v.get(key), (int, float))]
        if values:
            cls_metrics[f"{key}_member_mean"] = float(np.mean(values))
    metrics = {**{k: v for k, v in first.metrics.items() if k in ("lowres", "fullres")},
               "classifier": cls_metrics}
    training = {**{k: v for k, v in first.training.items() if k in ("data", "segmentation_from", "hardware")},
                "command": _command_line(command),
                "seed": first.training.get("seed"), "classifier_ensemble": members}
    model_id, version = model_id or first.id, version or first.version
    card = ensemble_model_card(first, members, len(names), weights_dtype)
    return save_bundle(
        out_dir, id=model_id, name=first.name, version=version, task=TASK,
        architecture={**first.architecture, CLASSIFIER_MEMBERS: names}, plan=first.plan, labels=first.labels,
        stages=first.stages, modality=first.modality, training=training, metrics=metrics,
        intended_use=first.intended_use, weights=weights, model_card=card, overwrite=overwrite,
        weights_dtype=weights_dtype)


def ensemble_model_card(first: ModelBundle, members: list[dict[str, Any]], classifiers: int,
                        weights_dtype: str | None = None) -> str:
    data = (first.training or {}).get("data") or {}
    lines = _card_header(first.name, first.architecture.get("variant", "full"), data.get("dataset", "?"),
                         data.get("cases"), first.intended_use,
                         f"; staging with the mean probabilities of {classifiers} stage classifiers")
    source = (first.training or {}).get("segmentation_from") or {"id": first.id, "version": first.version}
    lines += [f"- Segmentation networks: those of `{source.get('id')} {source.get('version')}`, shared by "
              "every member."]
    if weights_dtype == HALF_PRECISION_STORAGE:
        lines += ["- Weights stored in float16 (rounded from the trained float32; computed in float32)."]
    lines += [""]
    lines += _dice_table(first.metrics)
    lines += ["## Stage classifiers (each validated on its own held-out fold)", "",
              "| member | fold | seed | epochs | val AUC | val accuracy |", "|---|---|---|---|---|---|"]
    for m in members:
        v = m["validation"]
        lines.append(f"| {m['id']} {m['version']} | {m['fold']} | {m['seed']} | {m['classifier_epochs']} | "
                     + " | ".join(f"{v[k]:.3f}" if isinstance(v.get(k), (int, float)) else "–"
                                  for k in ("val_auc", "val_accuracy")) + " |")
    lines += ["", "A member's fold may hold cases its segmentation network was trained on, so its validation "
              "is optimistic there; judge the ensemble with `engine evaluate` on unseen cases.", ""]
    return "\n".join(lines + [METHOD_LINE]) + "\n"


# ============================================================================ inference


@dataclass
class EsophagusPrediction:
    """Segment & Stage output, in the input's original geometry."""

    labels: Image
    stage_probabilities: dict[str, float]
    predicted_stage: str
    gradcam: Image | None
    volumes_cm3: dict[str, float]
    krt_box: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    test_time_augmentation: dict[str, str] = field(default_factory=dict)
    #: an ensemble's members' own probabilities (``stage_probabilities`` is their mean); empty otherwise
    member_stage_probabilities: list[dict[str, float]] = field(default_factory=list)


class _Timer:
    def __init__(self, progress: ProgressFn | None, cancel: CancelFn | None, steps: Sequence[str]):
        self.progress, self.cancel, self.steps = progress, cancel, list(steps)
        self.timings: dict[str, float] = {}

    def step(self, name: str):
        timer = self

        class _Step:
            def __enter__(self_inner):
                if timer.cancel is not None and timer.cancel():
                    raise Cancelled("Segment & Stage cancelled; nothing was written")
                if timer.progress is not None:
                    timer.progress(name, timer.steps.index(name) / len(timer.steps))
                self_inner.t = time.perf_counter()

            def __exit__(self_inner, *exc):
                timer.timings[name] = round(time.perf_counter() - self_inner.t, 3)
                return False

        return _Step()


def check_tta(tta: str) -> None:
    if tta not in TTA_MODES:
        raise EngineError(f"Test-time augmentation must be one of {', '.join(TTA_MODES)}, not {tta!r}.")


def describe_tta(tta: str) -> dict[str, str]:
    """What test-time augmentation a run used, for report.json and the evaluation header."""
    n_cls, n_seg = 2 ** len(CLASSIFIER_MIRROR_AXES), 1 + len(SEGMENTATION_MIRROR_AXES)
    return {"stage_classification": f"mean over {n_cls} in-plane mirrorings" if tta != "none" else "none",
            "segmentation": f"mean over the window and its {n_seg - 1} single-axis mirrorings" if tta == "all"
            else "none"}


INFERENCE_STEPS = ("preprocess", "segmentation_lowres", "segmentation_fullres", "postprocess", "krt",
                   "classification", "gradcam", "restore")


def check_ct_intensities(image: Image) -> None:
    """Refuse volumes that cannot be CT in HU: a thoracic CT holds air/lung (≤ -500 HU) and nothing
    below -1100 or above a few thousand HU. MR and PET (positive, arbitrary units) fail here."""
    if image.modality and image.modality.upper() not in ("CT",):
        raise ImageError(f"This model needs a CT volume, but the input's modality is '{image.modality}'.")
    a = image.array
    lo, hi = float(np.percentile(a, 0.5)), float(a.max())
    air_fraction = float(np.mean(a <= -500))
    if lo < -1100 - 1e-3 and float(np.percentile(a, 5)) < -1100:
        raise ImageError(f"Intensities go down to {lo:.0f}, far below air (-1000 HU): the volume is not in "
                         "Hounsfield units (apply the DICOM rescale slope/intercept, or choose a CT volume).")
    if air_fraction < 0.005 or hi > 40000:
        raise ImageError(f"The input does not look like a CT in Hounsfield units (only {100 * air_fraction:.2f} % "
                         f"of voxels at air/lung values ≤ -500 HU, range {lo:.0f}..{hi:.0f}). EsophagusStaging "
                         "needs a thoracic CT in HU; MR or PET volumes cannot be staged with this model.")


class EsophagusPredictor:
    """Loads an EsophagusStaging bundle once; :meth:`predict` runs Segment & Stage on a CT volume."""

    def __init__(self, bundle: ModelBundle, device: str = "auto"):
        if bundle.task != TASK:
            raise EngineError(f"Model '{bundle.id}' is for task '{bundle.task}', not '{TASK}'; choose an "
                              "EsophagusStaging model.")
        self.bundle = bundle
        self.device = select_device(device)
        arch = bundle.architecture
        self.plan = Plan.from_dict(bundle.plan)
        spec_low, spec_full = NetworkSpec.from_dict(arch["lowres"]), NetworkSpec.from_dict(arch["fullres"])
        self.low_net = SegmentationNet(spec_low)
        self.low_net.load_state_dict(bundle.load_state_dict(LOWRES))
        segmentation = SegmentationNet(spec_full)
        segmentation.load_state_dict(bundle.load_state_dict(FULLRES))
        #: one network per stage classifier, all gated by the same segmentation network
        self.members = []
        for name in classifier_weight_names(bundle):
            member = NnMTNet(spec_full, ClassifierOptions(**arch["classifier"]), segmentation=segmentation)
            member.classifier.load_state_dict(bundle.load_state_dict(name))
            self.members.append(member.eval())
        self.net = self.members[0]
        self.low_net.eval()
        self.stage_names = list(bundle.stages or STAGES)
        self.use_krt = bool(arch.get("krt", True))
        self.whole_size = arch.get("whole_volume_size")
        self.num_classes = len(self.plan.labels)

    def _segmentation_features(self, seg_crop: torch.Tensor) -> list[torch.Tensor] | None:
        """The segmentation encoder's features of the crop, which the attention gates read. Every member
        shares the one segmentation network, so an ensemble computes them once, not once per member."""
        first = self.members[0]
        return first.segmentation.encoder(seg_crop) if first.classifier.uses_attention else None

    def _member_logits(self, ct_crop: torch.Tensor, seg_crop: torch.Tensor) -> torch.Tensor:
        """(members, stages) logits of one crop: row k is ``members[k].classify(ct_crop, seg_crop)``."""
        features = self._segmentation_features(seg_crop)
        return torch.cat([m.classifier(ct_crop, features) for m in self.members])

    def _grad_cam(self, crop: torch.Tensor, stage_index: int) -> np.ndarray:
        """Grad-CAM of the predicted stage on the crop (0–1); for an ensemble, the mean of its members'
        maps renormalised, so regions that all classifiers rely on stay brightest."""
        with torch.no_grad():  # constants for the maps: only the classifier's own layers are explained
            features = self._segmentation_features(crop)
        maps = [grad_cam(m, m.classifier.last_conv_stage, (crop,), class_index=stage_index,
                         forward=lambda x, m=m: m.classifier(x[:, :1], features)).cam for m in self.members]
        cam = np.mean(np.asarray(maps, dtype=np.float32), axis=0)
        peak = float(cam.max())
        return cam / peak if peak > 0 else cam

    def predict(self, image: Image, gradcam: bool = True, progress: ProgressFn | None = None,
                cancel: CancelFn | None = None, tta: str = "all") -> EsophagusPrediction:
        """``tta`` (:data:`TTA_MODES`): "all" averages the segmentation over mirrored windows (4 passes per
        window) and the stage probabilities over the classifier's in-plane mirrorings
        (4 passes of a small crop); "stage" mirrors only the classifier; "none" neither."""
        check_tta(tta)
        check_ct_intensities(image)
        plan, labels = self.plan, self.plan.labels
        timer = _Timer(progress, cancel, INFERENCE_STEPS)
        warnings: list[str] = []
        cfg_low, cfg_full = plan.configuration("3d_lowres"), plan.configuration("3d_fullres")
        with timer.step("preprocess"):
            low, full = preprocess_configurations((Preprocessor(plan, cfg_low), Preprocessor(plan, cfg_full)),
                                                  image)
        seg_mirror = SEGMENTATION_MIRROR_AXES if tta == "all" else ()
        window_low = SlidingWindowPredictor(cfg_low.patch_size, self.device, mirror_axes=seg_mirror)
        window_full = SlidingWindowPredictor(cfg_full.patch_size, self.device, mirror_axes=seg_mirror)
        with timer.step("segmentation_lowres"):
            low_probs = window_low(self.low_net, low.image, cancel)
            prior = lowres_to_fullres(low_probs, low.record, full.record, self.num_classes)
        seg_input = np.concatenate([full.image, prior], axis=0)
        with timer.step("segmentation_fullres"):
            probs = window_full(self.net.segmentation, seg_input, cancel)
            pred = probs.argmax(0).numpy().astype(np.uint8)
        warnings += window_low.warnings + window_full.warnings
        with timer.step("postprocess"):
            pred = keep_largest_object(pred, labels)
        tumour = labels[TUMOUR]
        with timer.step("krt"):
            if self.use_krt:
                box = krt_box(pred, plan.krt_box_size or cfg_full.patch_size, tumour, labels.get(ORGAN_OF_ORIGIN))
            else:
                box = box_around([(n - 1) / 2 for n in pred.shape], self.whole_size or list(pred.shape), "volume")
            if box.source != "tumour" and self.use_krt:
                warnings.append("No tumour (EC) was found in the segmentation; the staging crop was centred on the "
                                f"{box.source} instead, so the T-stage is unreliable.")
            crop = torch.from_numpy(crop_box(seg_input, box, pad_value=outside_values(seg_input)))[None]
        device = window_full.device
        for member in self.members:
            member.to(device)
        with timer.step("classification"):
            with torch.no_grad():
                inputs = (crop[:, :1].to(device), crop.to(device))
                axes = CLASSIFIER_MIRROR_AXES if tta != "none" else ()
                # an ensemble stages by the mean of its classifiers' (mirrored) probabilities
                per_member = mirrored_class_probabilities(self._member_logits, inputs,
                                                          axes).cpu().numpy().astype(np.float64)
            per_member /= per_member.sum(axis=1, keepdims=True)
            p = per_member.mean(axis=0)
        cam_image = None
        if gradcam:
            with timer.step("gradcam"):
                cam = self._grad_cam(crop.to(device), int(np.argmax(p)))
                cam_grid = paste_into_volume(cam, box.start, pred.shape)
        with timer.step("restore"):
            restored = Preprocessor.restore_labels(pred, full.record)
            label_image = Preprocessor.to_image(restored, full.record)
            if gradcam:
                cam = Preprocessor._restore(cam_grid[None], full.record, is_label=False)[0]
                cam = np.clip(cam, 0.0, 1.0)
                peak = float(cam.max())
                cam_image = Preprocessor.to_image((cam / peak if peak > 0 else cam).astype(np.float32), full.record)
        names = plan.label_names
        volumes = structure_volumes_cm3(restored, image.spacing, names)
        return EsophagusPrediction(
            labels=label_image,
            stage_probabilities={s: float(v) for s, v in zip(self.stage_names, p)},
            predicted_stage=self.stage_names[int(np.argmax(p))], gradcam=cam_image, volumes_cm3=volumes,
            krt_box=krt_box_physical(box, full.record), warnings=warnings, timings_s=timer.timings,
            device=describe_device(device), test_time_augmentation=describe_tta(tta),
            member_stage_probabilities=[{s: float(v) for s, v in zip(self.stage_names, row)}
                                        for row in per_member] if len(self.members) > 1 else [])


def krt_box_physical(box: KrtBox, record: PreprocessRecord) -> dict[str, Any]:
    """The KRT box's corners in patient coordinates (LPS, mm) and its size in mm."""
    direction = np.asarray(record.direction).reshape(3, 3)
    origin = np.asarray(record.cropped_origin())
    spacing_xyz = np.asarray(record.target_spacing)[::-1]

    def to_physical(index_zyx: Sequence[float]) -> list[float]:
        ijk = np.asarray([i - p[0] for i, p in zip(index_zyx, record.pads)], dtype=np.float64)[::-1]
        return [round(float(v), 3) for v in origin + direction @ (ijk * spacing_xyz)]

    last = [s + n - 1 for s, n in zip(box.start, box.size)]
    return {"centred_on": box.source, "first_corner_lps_mm": to_physical(box.start),
            "last_corner_lps_mm": to_physical(last),
            "size_mm": [round(float(n * s), 2) for n, s in zip(box.size, record.target_spacing)][::-1],
            "size_voxels": list(box.size)[::-1]}


# ============================================================================ Segment & Stage


@dataclass
class StagingResult:
    """What :func:`segment_and_stage` wrote and found; ``report`` is the content of ``report.json``."""

    out_dir: Path
    files: dict[str, Path]
    report: dict[str, Any]
    prediction: EsophagusPrediction

    @property
    def predicted_stage(self) -> str:
        return self.prediction.predicted_stage


def load_model(model: str | Path | ModelBundle | None = None) -> ModelBundle:
    """A bundle object, a path, an installed model id, or (None) the newest installed/demo model."""
    from engine.registry import find_bundle, load_bundle

    if isinstance(model, ModelBundle):
        if model.task != TASK:
            raise EngineError(f"Model '{model.id}' is for task '{model.task}', not '{TASK}'.")
        return model
    if model is not None and Path(model).expanduser().exists():
        return load_bundle(Path(model).expanduser(), expected_task=TASK, verify=True)
    return find_bundle(TASK, None if model is None else str(model))


def build_report(prediction: EsophagusPrediction, bundle: ModelBundle, image: Image, source: str) -> dict[str, Any]:
    import engine

    return {
        "task": TASK,
        "model": {"id": bundle.id, "name": bundle.name, "version": bundle.version,
                  "sha256": {w.name: w.sha256 for w in bundle.weights}, "intended_use": bundle.intended_use,
                  "stage_classifiers": len(classifier_weight_names(bundle))},
        "input": {"path": source, "shape": list(image.shape)[::-1], "spacing": list(image.spacing_xyz),
                  "origin": list(image.origin), "axis_order": "x, y, z"},
        "stage_probabilities": prediction.stage_probabilities,
        **({"member_stage_probabilities": prediction.member_stage_probabilities}
           if prediction.member_stage_probabilities else {}),
        "predicted_stage": prediction.predicted_stage,
        "volumes_cm3": {k: round(v, 4) for k, v in prediction.volumes_cm3.items()},
        "krt_box": prediction.krt_box,
        "warnings": prediction.warnings,
        "timings_s": prediction.timings_s,
        "device": prediction.device,
        "test_time_augmentation": prediction.test_time_augmentation,
        "engine_version": engine.__version__,
    }


def segment_and_stage(input_path: str | Path | Image, out_dir: str | Path,
                      model: str | Path | ModelBundle | EsophagusPredictor | None = None, device: str = "auto",
                      gradcam: bool = True, overwrite: bool = False, progress: ProgressFn | None = None,
                      cancel: CancelFn | None = None, series_uid: str | None = None,
                      tta: str = "all") -> StagingResult:
    """Segment & Stage one CT and write ``segmentation.nii.gz``, ``segmentation.seg.nrrd``,
    ``gradcam.nii.gz``, ``report.json`` and ``overview.png`` into ``out_dir``, all or nothing.

    Everything is checked before anything is written: the output folder, the input image (CT in HU,
    3D), the model (task, sha256).
    """
    from engine.io.image import read_image, write_image
    from engine.io.segmentation_nrrd import write_segmentation_nrrd
    from engine.pipelines import outputs
    from engine.reporting.overview import render_overview

    t0 = time.perf_counter()
    check_tta(tta)
    out = outputs.check_output_dir(out_dir, overwrite)
    if isinstance(input_path, Image):
        image, source = input_path, "<in-memory image>"
    else:
        image, source = read_image(input_path, series_uid=series_uid), str(Path(input_path).absolute())
    if image.modality is None:
        image.modality = "CT"
    check_ct_intensities(image)
    predictor = model if isinstance(model, EsophagusPredictor) else EsophagusPredictor(load_model(model), device)
    prediction = predictor.predict(image, gradcam=gradcam, progress=progress, cancel=cancel, tta=tta)
    report = build_report(prediction, predictor.bundle, image, source)
    segments = outputs.segments_from_labels(predictor.bundle.labels)
    writers: dict[str, Callable[[Path], Any]] = {
        outputs.SEGMENTATION_FILE: lambda p: write_image(prediction.labels, p),
        outputs.SLICER_SEGMENTATION_FILE: lambda p: write_segmentation_nrrd(prediction.labels, p, segments),
    }
    if prediction.gradcam is not None:
        writers[outputs.GRADCAM_FILE] = lambda p: write_image(prediction.gradcam, p)  # type: ignore[arg-type]
    writers[outputs.OVERVIEW_FILE] = lambda p: render_overview(
        image, prediction.labels, prediction.gradcam.array if prediction.gradcam is not None else None, segments,
        prediction.stage_probabilities, p, focus_label=predictor.plan.labels[TUMOUR],
        title=f"{Path(source).name} — predicted {prediction.predicted_stage} ({predictor.bundle.id} "
              f"{predictor.bundle.version})")
    if cancel is not None and cancel():
        raise Cancelled("Segment & Stage cancelled; nothing was written")
    t_write = time.perf_counter()

    def write_report(path: Path) -> None:  # after the others, so their write time is included
        report["timings_s"] = {**report["timings_s"], "write": round(time.perf_counter() - t_write, 3),
                               "total": round(time.perf_counter() - t0, 3)}
        outputs.write_json(path, report)

    if overwrite and prediction.gradcam is None and (out / outputs.GRADCAM_FILE).exists():
        (out / outputs.GRADCAM_FILE).unlink()  # a stale heat map must not pass for this run's
    files = outputs.write_all(out, writers, last={outputs.REPORT_FILE: write_report})
    log.info("Segment & Stage: %s → %s (%s)", source, prediction.predicted_stage, out)
    return StagingResult(out, files, report, prediction)


def run_batch(source: str | Path, out_dir: str | Path, model: str | Path | ModelBundle | None = None,
              device: str = "auto", gradcam: bool = True, overwrite: bool = False,
              progress: Callable[[int, int, str], None] | None = None,
              cancel: CancelFn | None = None, tta: str = "all") -> Path:
    """Segment & Stage every input of a folder or CSV list into ``out_dir/<case>/`` and write one
    ``summary.csv`` (a failed case is a row with its error; the batch goes on)."""
    from engine.pipelines import outputs

    check_tta(tta)
    inputs = outputs.list_inputs(source)
    out = Path(out_dir).expanduser()
    summary = out / outputs.SUMMARY_FILE
    if summary.exists() and not overwrite:
        raise EngineError(f"'{out}' already holds a batch summary; choose a new folder or pass --overwrite.")
    predictor = EsophagusPredictor(load_model(model), device)
    rows = []
    for i, path in enumerate(inputs):
        if cancel is not None and cancel():
            raise Cancelled(f"batch cancelled after {i} of {len(inputs)} case(s)")
        name = outputs.case_name(path)
        if progress is not None:
            progress(i, len(inputs), name)
        row: dict[str, Any] = {"case": name, "input": str(path)}
        try:
            result = segment_and_stage(path, out / name, predictor, gradcam=gradcam, overwrite=overwrite,
                                       cancel=cancel, tta=tta)
            rep = result.report
            row.update({"status": "ok", "predicted_stage": rep["predicted_stage"],
                        **{f"p_{k}": round(v, 6) for k, v in rep["stage_probabilities"].items()},
                        **{f"volume_cm3_{k.replace(' ', '_')}": v for k, v in rep["volumes_cm3"].items()},
                        "warnings": " | ".join(rep["warnings"])})
        except Cancelled:
            raise
        except EngineError as exc:
            log.error("%s: %s", name, exc)
            row.update({"status": "error", "error": str(exc)})
        rows.append(row)
    if progress is not None:
        progress(len(inputs), len(inputs), "")
    out.mkdir(parents=True, exist_ok=True)
    outputs.write_summary_csv(summary, rows)
    return summary


# ============================================================================ evaluation


def evaluate(dataset: str | Path, out_dir: str | Path, model: str | Path | ModelBundle | None = None,
             device: str = "auto", cases: Sequence[str] | None = None, overwrite: bool = False,
             progress: Callable[[int, int], None] | None = None, cancel: CancelFn | None = None,
             tta: str = "all") -> dict[str, Path]:
    """Run the model on every labelled case of ``dataset`` and write the paper's tables and plots."""
    from engine.evaluation import evaluate_case, summarize, write_report

    check_tta(tta)
    ds = RawDataset.load(dataset)
    predictor = EsophagusPredictor(load_model(model), device)
    selected = [c for c in ds.training if cases is None or c.case_id in set(cases)]
    if not selected:
        raise EngineError(f"No labelled cases to evaluate in {dataset}.")
    evaluations = []
    for i, case in enumerate(selected):
        if cancel is not None and cancel():
            raise Cancelled("evaluation cancelled; nothing was written")
        image = case.load_image()
        ref = case.load_label(reference=image)
        pred = predictor.predict(image, gradcam=False, cancel=cancel, tta=tta)
        evaluations.append(evaluate_case(case.case_id, pred.labels.array, ref.array, image.spacing,
                                         {k: v for k, v in predictor.plan.labels.items() if v != 0},
                                         stage_true=case.stage, stage_probabilities=pred.stage_probabilities,
                                         member_stage_probabilities=pred.member_stage_probabilities or None))
        if progress is not None:
            progress(i + 1, len(selected))
    bundle = predictor.bundle
    report = summarize(evaluations, predictor.stage_names if any(c.stage for c in selected) else None,
                       {"task": TASK, "model": f"{bundle.id} {bundle.version}", "dataset": str(dataset),
                        "stage classifiers": len(predictor.members),
                        "cases": len(selected), "device": describe_device(predictor.device),
                        "test-time augmentation": ", ".join(f"{k.replace('_', ' ')}: {v}"
                                                            for k, v in describe_tta(tta).items())})
    return write_report(report, out_dir, overwrite=overwrite)
