"""Data fingerprint: the dataset facts every planning heuristic is derived from (nnU-Net style).

Extended for staging (nn-TransEC §3.3): per-case tumour bounding boxes (for the KRT box size) and
T-stage counts (for the stage loss weights α2).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from engine.data.dataset import RawDataset
from engine.errors import PlanError

log = logging.getLogger(__name__)

#: Foreground voxels sampled per case for the intensity statistics (nnU-Net uses 10 000).
FOREGROUND_SAMPLES_PER_CASE = 10_000
#: Label names treated as "the tumour" for KRT cropping, in order of preference.
TUMOUR_LABEL_NAMES = ("EC", "GTV", "tumour", "tumor", "lesion")


@dataclass
class CaseFingerprint:
    case_id: str
    shape: list[int]
    spacing: list[float]
    class_voxels: dict[str, int]
    tumour_bbox_mm: list[float] | None = None
    stage: str | None = None


@dataclass
class Fingerprint:
    dataset_name: str
    modality: str
    labels: dict[str, int]
    cases: list[CaseFingerprint]
    foreground_intensity: dict[str, float]
    tumour_label: str | None = None
    stage_names: list[str] | None = None
    stage_counts: dict[str, int] = field(default_factory=dict)

    @property
    def spacings(self) -> np.ndarray:
        return np.array([c.spacing for c in self.cases], dtype=np.float64)

    @property
    def shapes(self) -> np.ndarray:
        return np.array([c.shape for c in self.cases], dtype=np.float64)

    @property
    def class_fractions(self) -> dict[str, float]:
        total = sum(sum(c.class_voxels.values()) for c in self.cases) or 1
        return {name: sum(c.class_voxels.get(name, 0) for c in self.cases) / total for name in self.labels}

    @property
    def tumour_extents_mm(self) -> np.ndarray | None:
        boxes = [c.tumour_bbox_mm for c in self.cases if c.tumour_bbox_mm is not None]
        return np.array(boxes, dtype=np.float64) if boxes else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["class_fractions"] = self.class_fractions
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Fingerprint":
        d = {k: v for k, v in d.items() if k != "class_fractions"}
        d["cases"] = [CaseFingerprint(**c) for c in d["cases"]]
        return cls(**d)


def tumour_label_name(labels: dict[str, int]) -> str | None:
    """The label KRT crops around: a known tumour name, else None (organs-only dataset)."""
    lower = {k.lower(): k for k in labels}
    for candidate in TUMOUR_LABEL_NAMES:
        if candidate.lower() in lower:
            return lower[candidate.lower()]
    return None


def extract_fingerprint(dataset: RawDataset, seed: int = 1234,
                        progress: Callable[[int, int], None] | None = None) -> Fingerprint:
    """Read every training case once and summarise it, in the orientation networks will see it
    (shapes, spacings and tumour extents per axis must not depend on how each file stores its voxels)."""
    from engine.planning.planner import CANONICAL_ORIENTATION  # the planner imports this module
    from engine.preprocessing.orientation import reorientation

    if not dataset.training:
        raise PlanError(f"Dataset {dataset.root} has no training cases to plan from.")
    desc = dataset.description
    rng = np.random.default_rng(seed)
    tumour = tumour_label_name(desc.labels)
    samples: list[np.ndarray] = []
    cases: list[CaseFingerprint] = []
    for i, case in enumerate(dataset.training):
        image = case.load_image()
        label = case.load_label(reference=image) if case.label_file and case.label_file.is_file() else None
        reoriented = reorientation(image, CANONICAL_ORIENTATION)
        image = reoriented.canonical_image(image)
        label = reoriented.canonical_image(label) if label is not None else None
        voxels: dict[str, int] = {}
        bbox_mm = None
        if label is not None:
            counts = np.bincount(label.array.ravel(), minlength=max(desc.labels.values()) + 1)
            voxels = {name: int(counts[v]) for name, v in desc.labels.items() if v < len(counts)}
            fg = image.array[label.array > 0]
            if tumour is not None:
                bbox_mm = _bbox_extent_mm(label.array == desc.labels[tumour], image.spacing)
        else:
            fg = image.array.ravel()
        if fg.size:
            take = min(FOREGROUND_SAMPLES_PER_CASE, fg.size)
            samples.append(rng.choice(fg, size=take, replace=False))
        cases.append(CaseFingerprint(case.case_id, list(image.shape), list(image.spacing), voxels,
                                     bbox_mm, case.stage))
        if progress:
            progress(i + 1, len(dataset.training))
    pooled = np.concatenate(samples) if samples else np.zeros(1, np.float32)
    stats = {
        "mean": float(pooled.mean()),
        "std": float(pooled.std()),
        "median": float(np.median(pooled)),
        "min": float(pooled.min()),
        "max": float(pooled.max()),
        "percentile_00_5": float(np.percentile(pooled, 0.5)),
        "percentile_99_5": float(np.percentile(pooled, 99.5)),
    }
    stage_names = dataset.stages
    stage_counts: dict[str, int] = {}
    if stage_names:
        stage_counts = {s: sum(1 for c in cases if c.stage == s) for s in stage_names}
    return Fingerprint(desc.name, desc.modality, dict(desc.labels), cases, stats, tumour,
                       stage_names, stage_counts)


def _bbox_extent_mm(mask: np.ndarray, spacing: tuple[float, ...]) -> list[float] | None:
    """Physical size (z, y, x mm) of the mask's bounding box, or None when the mask is empty."""
    idx = np.nonzero(mask)
    if not idx[0].size:
        return None
    return [float((ax.max() - ax.min() + 1) * sp) for ax, sp in zip(idx, spacing)]
