"""Check a dataset before anyone trains on it, and report every problem at once.

Training that fails after an hour on case 97 of 120 is the failure this module prevents: the
whole folder is read once and all problems are listed, so the user fixes them in one pass.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from engine.data.dataset import RawDataset, read_stages_csv
from engine.errors import DatasetError, EngineError
from engine.io.image import read_image, read_label

log = logging.getLogger(__name__)


@dataclass
class Problem:
    case: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.case}: {self.message}" if self.case else self.message


@dataclass
class ValidationReport:
    root: str
    num_training: int = 0
    num_test: int = 0
    problems: list[Problem] = field(default_factory=list)
    stage_counts: dict[str, int] = field(default_factory=dict)
    label_voxel_counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, case: str | None, message: str) -> None:
        self.problems.append(Problem(case, message))

    def to_dict(self) -> dict:
        return {
            "root": self.root,
            "ok": self.ok,
            "num_training": self.num_training,
            "num_test": self.num_test,
            "stage_counts": self.stage_counts,
            "label_voxel_counts": self.label_voxel_counts,
            "problems": [{"case": p.case, "message": p.message} for p in self.problems],
        }

    def summary(self) -> str:
        lines = [f"Dataset {self.root}: {self.num_training} training case(s), {self.num_test} test case(s)."]
        if self.stage_counts:
            lines.append("Stages: " + ", ".join(f"{k} {v}" for k, v in sorted(self.stage_counts.items())))
        if self.ok:
            lines.append("No problems found.")
        else:
            lines.append(f"{len(self.problems)} problem(s):")
            lines.extend(f"  - {p}" for p in self.problems)
        return "\n".join(lines)


def validate_dataset(root: str | os.PathLike, require_stages: bool | None = None,
                     progress: Callable[[int, int], None] | None = None,
                     task: str | None = None) -> ValidationReport:
    """Validate a raw dataset; ``require_stages`` defaults to True when ``stages.csv`` exists and
    dataset.json declares stages or ``stages.csv`` gives a T-stage for some case, or when ``task``
    stages. With ``task``, the dataset is also checked against what that task trains on."""
    root = Path(root)
    report = ValidationReport(root=str(root))
    try:
        ds = RawDataset.load(root)
    except DatasetError as exc:
        report.add(None, str(exc))
        return report
    desc = ds.description
    report.num_training, report.num_test = len(ds.training), len(ds.test)
    if not ds.training:
        report.add(None, f"No training images found in {root / 'imagesTr'} (expected "
                         f"<case>_0000{desc.file_ending}).")
    if desc.num_training and desc.num_training != len(ds.training):
        report.add(None, f"dataset.json says numTraining={desc.num_training} but imagesTr holds "
                         f"{len(ds.training)} case(s).")
    stages_file = (root / "stages.csv").is_file()
    if task is not None:
        declared = _check_against_task(desc, task, report)
        if require_stages is None and declared.stage_names:
            require_stages = True
    if require_stages is None:
        # a stages.csv holding only outcome/pathology (PET) has an empty t_stage column: no stages needed then
        require_stages = stages_file and (bool(desc.stages) or any(c.stage for c in ds.training + ds.test))
    known_stages = set(desc.stages) if desc.stages else None
    allowed_values = set(desc.labels.values())
    name_of = {v: k for k, v in desc.labels.items()}
    voxel_counts = dict.fromkeys(desc.labels, 0)
    listed = {c.case_id for c in ds.training + ds.test}

    if stages_file:
        try:
            for case_id in sorted(set(read_stages_csv(root / "stages.csv")) - listed):
                report.add(case_id, "listed in stages.csv but has no image.")
        except DatasetError as exc:
            report.add(None, str(exc))

    cases = ds.training + ds.test
    for i, case in enumerate(cases):
        is_training = i < len(ds.training)
        _validate_case(case, is_training, report, allowed_values, name_of, voxel_counts)
        if is_training and require_stages:
            if not case.stage:
                report.add(case.case_id, "has no T-stage in stages.csv.")
            elif known_stages is not None and case.stage not in known_stages:
                report.add(case.case_id, f"stage '{case.stage}' is not one of dataset.json's stages "
                                         f"{sorted(known_stages)}.")
        if is_training and case.stage:
            report.stage_counts[case.stage] = report.stage_counts.get(case.stage, 0) + 1
        if progress:
            progress(i + 1, len(cases))
    report.label_voxel_counts = voxel_counts
    for name, value in desc.foreground_labels.items():
        if sum(voxel_counts.values()) and voxel_counts.get(name, 0) == 0:
            report.add(None, f"label '{name}' ({value}) is declared in dataset.json but never occurs in "
                             "any training label map.")
    return report


def _check_against_task(desc, task: str, report: ValidationReport):
    """Problems that make the dataset unusable for ``task``: another modality, no tumour label, other stages."""
    from engine.planning.planner import modality_family
    from engine.tasks import get_task

    declared = get_task(task)
    if modality_family(desc.modality) != modality_family(declared.modality):
        report.add(None, f"task '{task}' needs {declared.modality} images, but dataset.json's modality is "
                         f"{desc.modality}.")
    if declared.tumour_label and declared.tumour_label not in desc.labels:
        report.add(None, f"task '{task}' needs a '{declared.tumour_label}' label; dataset.json's labels are "
                         f"{sorted(k for k in desc.labels if desc.labels[k] != 0)}.")
    if declared.stage_names and desc.stages and not set(desc.stages) <= set(declared.stage_names):
        report.add(None, f"dataset.json's stages {list(desc.stages)} are not among task '{task}''s "
                         f"{list(declared.stage_names)}.")
    return declared


def _validate_case(case, is_training: bool, report: ValidationReport, allowed: set[int],
                   name_of: dict[int, str], voxel_counts: dict[str, int]) -> None:
    images = []
    for f in case.image_files:
        if not f.is_file():
            report.add(case.case_id, f"image file missing: {f.name}.")
            continue
        try:
            images.append(read_image(f))
        except EngineError as exc:
            report.add(case.case_id, str(exc))
    for k, img in enumerate(images[1:], start=1):
        if not img.same_geometry(images[0]):
            report.add(case.case_id, f"channel {k} does not share channel 0's geometry.")
    if not is_training:
        return
    if case.label_file is None or not case.label_file.is_file():
        report.add(case.case_id, f"label file missing: labelsTr/{case.case_id}"
                                 f"{''.join(case.image_files[0].suffixes)}.")
        return
    try:
        label = read_label(case.label_file)
    except EngineError as exc:
        report.add(case.case_id, str(exc))
        return
    if images and not label.same_geometry(images[0]):
        report.add(case.case_id, "image/label geometry mismatch: image "
                                 f"{images[0].geometry_summary()} vs label {label.geometry_summary()}.")
    values, counts = np.unique(label.array, return_counts=True)
    unknown = sorted(int(v) for v in values if int(v) not in allowed)
    if unknown:
        report.add(case.case_id, f"label values {unknown} are not in dataset.json's labels "
                                 f"{sorted(allowed)}.")
    for v, n in zip(values, counts):
        if int(v) in name_of:
            voxel_counts[name_of[int(v)]] += int(n)
