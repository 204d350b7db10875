"""From a data fingerprint to a training plan: every hyper-parameter the data decides, in one JSON.

The heuristics follow nnU-Net v2's rule-based configuration (Isensee et al., 2021) with the
nn-TransEC additions (KRT box size, stage loss weights α2). What a task's method fixes (2D slices,
a cascade, a prescribed spacing or crop) comes from its :class:`engine.tasks.PlanDefaults`. Each
rule is documented where it is coded, so a user can see why the plan says what it says.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

import engine
from engine.errors import PlanError
from engine.planning.fingerprint import Fingerprint

PLAN_FORMAT_VERSION = 1

#: Voxel budget of one 3D patch: the paper's 128×64×64 (nn-TransEC Table 6) fits a 12 GB GPU at batch 2.
PATCH_VOXEL_BUDGET_3D = 128 * 64 * 64
#: 2D budget: one 512×512 slice, as HCF/SANet use.
PATCH_PIXEL_BUDGET_2D = 512 * 512
#: nnU-Net: stop pooling an axis once its feature map would fall below this many voxels.
MIN_FEATURE_MAP = 4
#: nn-TransEC Table 6: depth 5 (4 poolings). nnU-Net allows more; the paper's network has 5 stages.
MAX_STAGES = 5
#: nnU-Net: an axis counts as anisotropic when its spacing is ≥ 2× the finest spacing.
ANISOTROPY_RATIO = 2.0
#: nnU-Net: with spacing ratio above 3 the coarse axis takes the 10th percentile rather than the median.
ANISOTROPIC_TARGET_RATIO = 3.0
#: nnU-Net: a batch may cover at most 5 % of the dataset's voxels (guards against tiny datasets).
MAX_DATASET_FRACTION_PER_BATCH = 0.05
#: nnU-Net: base channel count, doubled per stage up to the cap.
BASE_FEATURES = 32
MAX_FEATURES_3D = 320
MAX_FEATURES_2D = 512
#: The voxel orientation networks see (a DICOM-style code, see :mod:`engine.preprocessing.orientation`):
#: ITK's identity direction, the convention the shipped models were trained in. A plan written before
#: the field existed means the same, so its model keeps giving the same outputs.
CANONICAL_ORIENTATION = "LPS"
#: The cascade's low-resolution stage halves the resolution (nn-TransEC Table 6: 118×128×128 vs 237×256×256).
LOWRES_FACTOR = 2.0


@dataclass
class NetworkTopology:
    """Encoder layout; the decoder mirrors it. ``strides[0]`` is the input stage (all ones)."""

    num_stages: int
    strides: list[list[int]]
    kernel_sizes: list[list[int]]
    features_per_stage: list[int]

    @property
    def total_stride(self) -> list[int]:
        return [int(np.prod([s[a] for s in self.strides])) for a in range(len(self.strides[0]))]

    @property
    def poolings_per_axis(self) -> list[int]:
        return [sum(1 for s in self.strides if s[a] == 2) for a in range(len(self.strides[0]))]


@dataclass
class Configuration:
    name: str
    dims: int
    spacing: list[float]
    median_shape: list[int]
    patch_size: list[int]
    batch_size: int
    network: NetworkTopology


@dataclass
class Normalization:
    """How intensities are normalised. ``ct``: clip to foreground 0.5–99.5 percentiles, then z-score
    with the foreground mean/std; ``zscore``: per-volume z-score (MR, arbitrary units); ``suv``: PET,
    clip to [0, foreground 99.5 percentile], then z-score with the dataset's foreground statistics
    (SUV is quantitative, so dataset-level statistics are meaningful, as for CT)."""

    scheme: str
    clip: list[float] | None
    mean: float | None
    std: float | None


@dataclass
class Plan:
    task: str
    dataset_name: str
    modality: str
    labels: dict[str, int]
    configurations: dict[str, Configuration]
    normalization: Normalization
    tumour_label: str | None = None
    krt_box_size: list[int] | None = None
    stage_names: list[str] | None = None
    stage_counts: dict[str, int] | None = None
    stage_loss_weights: list[float] | None = None
    fingerprint: dict | None = None
    #: a cascade's full-resolution region: the low-resolution foreground box grown by this (z, y, x mm);
    #: None in plans written before it existed (:func:`roi_margin_mm` then derives it)
    roi_margin_mm: list[float] | None = None
    #: every input is reordered to this orientation before preprocessing, and outputs back
    orientation: str = CANONICAL_ORIENTATION
    format_version: int = PLAN_FORMAT_VERSION
    engine_version: str = engine.__version__
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def label_names(self) -> dict[int, str]:
        return {v: k for k, v in self.labels.items()}

    def configuration(self, name: str | None = None) -> Configuration:
        if name is None:
            name = "2d" if "2d" in self.configurations and len(self.configurations) == 1 else "3d_fullres"
        if name not in self.configurations:
            raise PlanError(f"The plan has no configuration '{name}'; it has {sorted(self.configurations)}.")
        return self.configurations[name]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        try:
            if d.get("format_version") != PLAN_FORMAT_VERSION:
                raise PlanError(f"Plan format version {d.get('format_version')} is not supported "
                                f"(expected {PLAN_FORMAT_VERSION}); re-run `python -m engine plan`.")
            d = dict(d)
            d["configurations"] = {
                k: Configuration(**{**c, "network": NetworkTopology(**c["network"])})
                for k, c in d["configurations"].items()
            }
            d["normalization"] = Normalization(**d["normalization"])
            d["orientation"] = _checked_orientation(d.get("orientation", CANONICAL_ORIENTATION))
            return cls(**d)
        except (KeyError, TypeError) as exc:
            raise PlanError(f"Invalid plan: {exc}. Re-create it with `python -m engine plan`.") from None

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plan":
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise PlanError(f"Plan file '{path}' not found.") from None
        except json.JSONDecodeError as exc:
            raise PlanError(f"Plan file '{path}' is not valid JSON ({exc}).") from None


def _checked_orientation(code: object) -> str:
    from engine.preprocessing.orientation import check_orientation  # preprocessing imports this module

    try:
        return check_orientation(str(code))
    except ValueError as exc:
        raise PlanError(f"Invalid plan: {exc}. Re-create it with `python -m engine plan`.") from None


# --- heuristics ---------------------------------------------------------------------------------

def target_spacing(spacings: np.ndarray) -> list[float]:
    """Median spacing per axis; for strongly anisotropic data the coarse axis takes the 10th
    percentile instead (nnU-Net: the median would throw away resolution most cases have)."""
    target = np.median(spacings, axis=0)
    coarse = int(np.argmax(target))
    others = [a for a in range(len(target)) if a != coarse]
    if target[coarse] > ANISOTROPIC_TARGET_RATIO * max(target[others]):
        target[coarse] = max(np.percentile(spacings[:, coarse], 10), max(target[others]))
    return [float(round(t, 6)) for t in target]


def network_topology(patch_size: list[int], spacing: list[float], max_features: int,
                     max_stages: int = MAX_STAGES) -> tuple[NetworkTopology, list[int]]:
    """nnU-Net's topology rule: pool an axis (stride 2) while its feature map stays ≥ MIN_FEATURE_MAP
    and its current spacing is within ANISOTROPY_RATIO of the finest axis. An axis that is coarse by
    acquisition (thick slices, not yet pooled) gets kernel 1: a 3-voxel kernel across 6 mm slices
    mixes unrelated anatomy. Returns the topology and the patch size rounded down to a multiple of
    the total stride (down, so the patch stays inside the memory budget)."""
    dims = len(patch_size)
    size = np.array(patch_size, dtype=np.float64)
    cur_spacing = np.array(spacing, dtype=np.float64)
    pooled = np.zeros(dims, dtype=int)

    def kernel() -> list[int]:
        coarse = (cur_spacing / cur_spacing.min() >= ANISOTROPY_RATIO) & (pooled == 0)
        return [1 if c else 3 for c in coarse]

    strides, kernels = [[1] * dims], [kernel()]
    while len(strides) < max_stages:
        stride = [2 if size[a] / 2 >= MIN_FEATURE_MAP and cur_spacing[a] / cur_spacing.min() < ANISOTROPY_RATIO
                  else 1 for a in range(dims)]
        if max(stride) == 1:
            break
        size = size / np.array(stride)
        cur_spacing = cur_spacing * np.array(stride)
        pooled += np.array(stride) == 2
        strides.append(stride)
        kernels.append(kernel())
    features = [min(BASE_FEATURES * 2**i, max_features) for i in range(len(strides))]
    topo = NetworkTopology(len(strides), strides, kernels, features)
    rounded = [int(max(1, math.floor(p / t)) * t) for p, t in zip(patch_size, topo.total_stride)]
    return topo, rounded


def patch_size_for(median_shape: list[float], spacing: list[float], budget: int) -> list[int]:
    """Start from the median shape (the whole image when it fits) and shrink the axis that is
    largest in millimetres until the patch fits the voxel budget (nnU-Net v2: keep the patch
    as isotropic in physical space as the budget allows)."""
    patch = np.array(median_shape, dtype=np.float64)
    sp = np.array(spacing, dtype=np.float64)
    while np.prod(patch) > budget:
        axis = int(np.argmax(patch * sp))
        patch[axis] = max(MIN_FEATURE_MAP, patch[axis] * 0.9)
    return [max(MIN_FEATURE_MAP, int(round(p))) for p in patch]


def batch_size_for(patch_size: list[int], budget: int, dataset_voxels: float, minimum: int = 2) -> int:
    """nnU-Net: batch 2 at the full voxel budget, larger when the patch is smaller, but never a
    batch that covers more than 5 % of the whole dataset (tiny datasets would overfit)."""
    bs = max(minimum, int(2 * budget / float(np.prod(patch_size))))
    cap = max(minimum, int(MAX_DATASET_FRACTION_PER_BATCH * dataset_voxels / float(np.prod(patch_size))))
    return int(min(bs, cap, 64))


def krt_box_size(extents_vox: np.ndarray, depth: int) -> list[int]:
    """nn-TransEC §3.3 "maximum bounding box size": the box must cover every training tumour, so
    take the largest extent per axis and round up to a multiple of 2**depth (the classification
    encoder has the segmentation encoder's structure and must divide the box evenly; the paper's
    128×64×64 satisfies this for depth 5). Never smaller than one 2**depth block per axis."""
    unit = 2 ** depth
    box = np.ceil(extents_vox.max(axis=0) / unit) * unit
    return [int(max(unit, b)) for b in box]


def stage_loss_weights(counts: dict[str, int], names: list[str]) -> list[float]:
    """α2 of the stage focal loss (nn-TransEC Eq. 4): inversely related to stage frequency,
    normalised to sum 1. The paper reports [0.20, 0.16, 0.10, 0.54] for its 17/19/54/10 % mix; inverse
    frequency gives [0.26, 0.23, 0.08, 0.44] there (same ordering; the paper does not give its formula).
    A stage with no case gets the weight of a stage with one case."""
    n = np.array([max(1, counts.get(s, 0)) for s in names], dtype=np.float64)
    inv = 1.0 / n
    return [float(round(w, 6)) for w in inv / inv.sum()]


def normalization_for(modality: str, stats: dict[str, float]) -> Normalization:
    m = modality.upper()
    if m == "CT":
        return Normalization("ct", [stats["percentile_00_5"], stats["percentile_99_5"]],
                             stats["mean"], max(stats["std"], 1e-8))
    if m in ("PT", "PET", "SUV"):
        return Normalization("suv", [0.0, stats["percentile_99_5"]], stats["mean"], max(stats["std"], 1e-8))
    return Normalization("zscore", None, None, None)


def _configuration(name: str, fp: Fingerprint, spacing: list[float], dims: int,
                   fixed_patch: tuple[int, ...] | None = None) -> Configuration:
    sp_cases = fp.spacings[:, -dims:] if dims == 2 else fp.spacings
    shapes = fp.shapes[:, -dims:] if dims == 2 else fp.shapes
    resampled = shapes * sp_cases / np.array(spacing)
    median_shape = [int(round(s)) for s in np.median(resampled, axis=0)]
    budget = PATCH_PIXEL_BUDGET_2D if dims == 2 else PATCH_VOXEL_BUDGET_3D
    if fixed_patch is not None:
        patch = list(fixed_patch)
    else:
        patch = patch_size_for(median_shape, spacing, budget)
    topo, patch = network_topology(patch, spacing, MAX_FEATURES_2D if dims == 2 else MAX_FEATURES_3D)
    slices_per_case = fp.shapes[:, 0] if dims == 2 else 1.0
    dataset_voxels = float(np.sum(np.prod(resampled, axis=1) * slices_per_case))
    batch = batch_size_for(patch, budget, dataset_voxels)
    return Configuration(name, dims, [float(s) for s in spacing], median_shape, patch, batch, topo)


def modality_family(modality: str) -> str:
    """``CT``, ``PT`` or ``MR``: channel names such as ``T1C`` or ``FLAIR`` are MR sequences."""
    m = modality.upper()
    if m in ("PT", "PET", "SUV"):
        return "PT"
    return "CT" if m == "CT" else "MR"


def infer_task(modality: str, labels: dict[str, int]) -> str:
    """The task a dataset most likely belongs to, when the user does not say: among the tasks of the
    dataset's modality, the one sharing most label names with it (a task that trains models first,
    then the table's order)."""
    from engine.tasks import all_tasks

    family = modality_family(modality)
    names = {k.lower() for k in labels}
    candidates = [t for t in all_tasks() if modality_family(t.modality) == family]
    if not candidates:
        raise PlanError(f"No task handles {modality} images; pass --task.")
    best = max(candidates, key=lambda t: (len(names & {lab.name.lower() for lab in t.labels}), t.has_pipeline))
    return best.name


def make_plan(fp: Fingerprint, task: str, spacing: Sequence[float] | None = None) -> Plan:
    """All configurations a task needs, plus normalisation, KRT box and stage weights.

    ``spacing`` (z, y, x mm) overrides the full-resolution target spacing — coarser for fast CPU
    training or tests; the patch size, topology, KRT box and low-resolution stage follow from it."""
    from engine.tasks import UnknownTaskError, get_task

    try:
        defaults = get_task(task).plan_defaults
    except UnknownTaskError as exc:
        raise PlanError(str(exc)) from exc
    configs: dict[str, Configuration] = {}
    if defaults.dims == 2:
        # slice by slice: in-plane median spacing, slices at the task's fixed in-plane size (if any)
        spacing2d = [float(s) for s in np.median(fp.spacings[:, 1:], axis=0)]
        configs["2d"] = _configuration("2d", fp, spacing2d, 2, fixed_patch=defaults.patch_size)
    else:
        if spacing is not None and (len(spacing) != 3 or min(spacing) <= 0):
            raise PlanError(f"A target spacing needs three positive values (z, y, x mm), got {list(spacing)}.")
        spacing = [float(s) for s in spacing] if spacing is not None else \
            list(defaults.target_spacing or target_spacing(fp.spacings))
        full = _configuration("3d_fullres", fp, spacing, 3, defaults.patch_size)
        configs["3d_fullres"] = full
        if defaults.cascade:
            # coarse-to-fine cascade (nn-TransEC): the low-resolution stage sees the volume at half resolution
            low_spacing = [s * LOWRES_FACTOR for s in spacing]
            configs["3d_lowres"] = _configuration("3d_lowres", fp, low_spacing, 3)
    main = next(iter(configs.values()))
    krt = None
    if fp.tumour_label is not None and fp.tumour_extents_mm is not None and main.dims == 3:
        extents_vox = fp.tumour_extents_mm / np.array(main.spacing)
        krt = krt_box_size(extents_vox, main.network.num_stages)
    weights = None
    if fp.stage_names and fp.stage_counts:
        weights = stage_loss_weights(fp.stage_counts, fp.stage_names)
    margin = None
    if "3d_lowres" in configs:
        margin = cascade_roi_margin(configs["3d_fullres"], configs["3d_lowres"], krt, fp.tumour_extents_mm)
    return Plan(
        task=task,
        dataset_name=fp.dataset_name,
        modality=fp.modality,
        labels=dict(fp.labels),
        configurations=configs,
        normalization=normalization_for(fp.modality, fp.foreground_intensity),
        tumour_label=fp.tumour_label,
        krt_box_size=krt,
        stage_names=fp.stage_names,
        stage_counts=fp.stage_counts or None,
        stage_loss_weights=weights,
        fingerprint=fp.to_dict(),
        roi_margin_mm=margin,
    )


def roi_margin_mm(plan: Plan) -> list[float]:
    """How far (z, y, x mm) a cascade's full-resolution region reaches beyond the low-resolution
    foreground: the plan's own value, else derived from its training data as :func:`make_plan` does."""
    if plan.roi_margin_mm is not None:
        return list(plan.roi_margin_mm)
    full, low = plan.configuration("3d_fullres"), plan.configurations.get("3d_lowres")
    extents = None
    if plan.fingerprint and plan.fingerprint.get("cases"):
        boxes = [c["tumour_bbox_mm"] for c in plan.fingerprint["cases"] if c.get("tumour_bbox_mm")]
        extents = np.array(boxes, dtype=np.float64) if boxes else None
    return cascade_roi_margin(full, low, plan.krt_box_size, extents)


def cascade_roi_margin(full: Configuration, low: Configuration | None, krt_box: Sequence[int] | None,
                       tumour_extents_mm: np.ndarray | None) -> list[float]:
    """The margin that makes a region-restricted full-resolution stage see what the whole volume
    would: half the KRT box (the staging crop around a tumour at the foreground's edge stays inside),
    half the largest training tumour (a tumour the coarse stage caught only part of is still
    covered), and one low-resolution voxel for the coarse stage's boundary error."""
    margin = np.zeros(3)
    if krt_box is not None:
        margin = np.maximum(margin, np.asarray(krt_box, dtype=np.float64) / 2 * np.asarray(full.spacing))
    if tumour_extents_mm is not None and len(tumour_extents_mm):
        margin = np.maximum(margin, np.asarray(tumour_extents_mm).max(axis=0) / 2)
    if not margin.any():  # no tumour statistics: half a full-resolution patch of context
        margin = np.asarray(full.patch_size, dtype=np.float64) / 2 * np.asarray(full.spacing)
    coarse = np.asarray(low.spacing if low is not None else full.spacing, dtype=np.float64)
    return [float(round(m, 3)) for m in margin + coarse]


def transfer_plan(source: Plan, fp: Fingerprint) -> Plan:
    """A pretrained model's plan moved onto a new dataset for fine-tuning (nnU-Net's plan transfer).

    What the trained networks depend on stays the source's: configurations (spacing, patch,
    topology) and the KRT box. What describes the data comes from the new dataset: intensity
    normalisation — a source clip window that cuts off the new data's contrast (an enhanced
    aorta, say) would hide it from the network — and the stage counts and loss weights.
    """
    if fp.modality.upper() != source.modality.upper():
        raise PlanError(f"The model was planned for {source.modality} but the dataset is {fp.modality}; "
                        "fine-tune only on the same modality.")
    weights = source.stage_loss_weights
    if fp.stage_names and fp.stage_counts:
        weights = stage_loss_weights(fp.stage_counts, fp.stage_names)
    return Plan(
        task=source.task, dataset_name=fp.dataset_name, modality=source.modality, labels=dict(source.labels),
        configurations=source.configurations, normalization=normalization_for(fp.modality, fp.foreground_intensity),
        tumour_label=source.tumour_label, krt_box_size=source.krt_box_size, stage_names=source.stage_names,
        stage_counts=fp.stage_counts or source.stage_counts, stage_loss_weights=weights,
        fingerprint=fp.to_dict(), orientation=source.orientation, roi_margin_mm=source.roi_margin_mm)
