"""What a model's training data looked like: its domain profile, recorded in ``model.json``.

A model is only trustworthy on scans like those it learned from. The profile keeps the few facts
that tell such a scan from another: voxel spacing and field of view, the intensity distribution of
whole scans (percentiles per case), each structure's volume, and whether the data were synthetic
phantoms. :mod:`engine.domain.check` compares a run's input and result with it.

Stored as ``training.domain`` in model.json (:data:`MANIFEST_KEY`); all sizes are z, y, x in the
canonical orientation, so a scan stored in another voxel order compares the same.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from engine.io.image import Image

log = logging.getLogger(__name__)

#: Where the profile lives in model.json: ``training[MANIFEST_KEY]``.
MANIFEST_KEY = "domain"
PROFILE_VERSION = 1
#: Whole-scan intensity percentiles kept per case (the spread of each over the cases is recorded).
PERCENTILES = (1, 10, 50, 90, 99)
#: Words in a dataset's name or description that mark it as synthetic.
PHANTOM_WORDS = ("synthetic", "phantom")


@dataclass
class DomainProfile:
    """Ranges (``[low, high]`` over the training cases) of what the model saw in training."""

    modality: str
    cases: int
    trained_on_phantoms: bool
    spacing_mm: dict[str, list[float]]  # "min"/"max" → [z, y, x]
    field_of_view_mm: dict[str, list[float]]  # "min"/"max" → [z, y, x]
    #: "p01" … "p99" → [lowest, highest] value of that whole-scan percentile over the cases
    intensity_percentiles: dict[str, list[float]]
    #: structure → [smallest, largest] volume (cm³) over the cases that have it
    structure_volumes_cm3: dict[str, list[float]]
    #: structure → share of cases that have it
    structure_presence: dict[str, float]
    source: str = ""
    version: int = PROFILE_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DomainProfile:
        known = {f for f in cls.__dataclass_fields__}  # newer profiles may add fields: keep the known ones
        return cls(**{k: v for k, v in data.items() if k in known})


def is_phantom_dataset(name: str, description: str = "") -> bool:
    """Whether a dataset's own name or description says it is synthetic (``engine synth`` says so)."""
    text = f"{name} {description}".lower()
    return any(word in text for word in PHANTOM_WORDS)


def percentile_key(q: float) -> str:
    return f"p{int(q):02d}"


@dataclass
class _Accumulator:
    """Per-case facts, collected one case at a time so no more than one scan is in memory."""

    spacings: list[list[float]] = field(default_factory=list)
    fovs: list[list[float]] = field(default_factory=list)
    percentiles: list[list[float]] = field(default_factory=list)
    volumes: dict[str, list[float]] = field(default_factory=dict)

    def add(self, image: Image, labels: np.ndarray | None, label_values: Mapping[str, int]) -> None:
        spacing = np.asarray(image.spacing, dtype=np.float64)
        self.spacings.append(spacing.tolist())
        self.fovs.append((np.asarray(image.shape) * spacing).tolist())
        self.percentiles.append(np.percentile(image.array, PERCENTILES).astype(np.float64).tolist())
        if labels is None:
            return
        voxel_cm3 = float(np.prod(spacing)) / 1000.0
        counts = np.bincount(labels.ravel().astype(np.int64), minlength=max(label_values.values()) + 1)
        for name, value in label_values.items():
            if value:
                self.volumes.setdefault(name, []).append(float(counts[value]) * voxel_cm3)


def _range(values: Iterable[float], digits: int = 3) -> list[float]:
    v = np.asarray(list(values), dtype=np.float64)
    return [round(float(v.min()), digits), round(float(v.max()), digits)]


def build_profile(cases: Iterable[tuple[Image, np.ndarray | None]], label_values: Mapping[str, int],
                  modality: str, trained_on_phantoms: bool, source: str = "") -> DomainProfile:
    """The profile of ``cases`` (each an image in the canonical orientation and its label array or
    None); ``source`` says in words where the cases came from."""
    acc = _Accumulator()
    for image, labels in cases:
        acc.add(image, labels, label_values)
    if not acc.spacings:
        raise ValueError("a domain profile needs at least one case")
    spacings, fovs = np.asarray(acc.spacings), np.asarray(acc.fovs)
    pct = np.asarray(acc.percentiles)
    volumes, presence = {}, {}
    for name, values in acc.volumes.items():
        present = [v for v in values if v > 0]
        presence[name] = round(len(present) / len(values), 4)
        if present:
            volumes[name] = _range(present, 4)
    return DomainProfile(
        modality=modality, cases=len(acc.spacings), trained_on_phantoms=trained_on_phantoms,
        spacing_mm={"min": spacings.min(0).round(4).tolist(), "max": spacings.max(0).round(4).tolist()},
        field_of_view_mm={"min": fovs.min(0).round(1).tolist(), "max": fovs.max(0).round(1).tolist()},
        intensity_percentiles={percentile_key(q): _range(pct[:, i], 2) for i, q in enumerate(PERCENTILES)},
        structure_volumes_cm3=volumes, structure_presence=presence, source=source)


def dataset_profile(dataset: Any, case_ids: Iterable[str] | None = None, source: str = "") -> DomainProfile:
    """The profile of a raw dataset's training cases (all, or ``case_ids``), read one at a time in the
    canonical orientation networks see."""
    from engine.planning.planner import CANONICAL_ORIENTATION
    from engine.preprocessing.orientation import reorientation

    desc = dataset.description
    wanted = None if case_ids is None else set(case_ids)

    def cases() -> Iterable[tuple[Image, np.ndarray | None]]:
        for case in dataset.training:
            if wanted is not None and case.case_id not in wanted:
                continue
            image = case.load_image()
            label = case.load_label(reference=image) if case.label_file and case.label_file.is_file() else None
            turn = reorientation(image, CANONICAL_ORIENTATION)
            yield turn.canonical_image(image), None if label is None else turn.canonical_image(label).array

    phantoms = is_phantom_dataset(desc.name, desc.description or "")
    text = source or f"{'synthetic phantoms' if phantoms else 'scans'} of dataset '{desc.name}'"
    profile = build_profile(cases(), desc.labels, desc.modality, phantoms, text)
    log.info("Domain profile of %d training case(s) of %s.", profile.cases, desc.name)
    return profile


def training_cases_profile(bundle: Any, dataset_path: str, all_cases: bool = False) -> DomainProfile:
    """The profile of a model's training cases (those its ``training.data.train_cases`` names, else
    all) read from ``dataset_path``, a raw dataset holding them (the original or a regeneration)."""
    from engine.data.dataset import RawDataset
    from engine.errors import EngineError

    dataset = RawDataset.load(dataset_path)
    wanted = None if all_cases else (bundle.training.get("data") or {}).get("train_cases")
    if wanted:
        have = {c.case_id for c in dataset.training}
        missing = sorted(set(wanted) - have)
        if len(missing) == len(wanted):
            raise EngineError(f"None of the model's training cases is in {dataset_path}; pass the dataset it was "
                              "trained on, or --all-cases to profile this one as it is.")
        if missing:
            log.warning("%d of the model's training cases are not in %s and are left out.", len(missing),
                        dataset_path)
    return dataset_profile(dataset, wanted)


def bundle_profile(bundle: Any) -> DomainProfile | None:
    """The profile a bundle records, or None for a model saved before profiles existed."""
    data = (bundle.training or {}).get(MANIFEST_KEY)
    if not isinstance(data, Mapping):
        return None
    try:
        return DomainProfile.from_dict(data)
    except TypeError as exc:
        log.warning("Model %s has an unreadable training-data profile (%s); its domain is not checked.",
                    bundle.id, exc)
        return None
