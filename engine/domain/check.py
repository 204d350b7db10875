"""Is this run inside the model's domain? Its input and its result against the training profile.

Every finding becomes a warning in report.json, the overview figure and the Slicer panel, and the
stage is marked unreliable (still shown: a user should see what the model said, and that it should
not be believed). The checks are generic; a task adds its own through its declaration (today: a
tumour must touch its organ of origin, :attr:`engine.tasks.Task.organ_of_origin`).

Tolerances are deliberately wide ("far outside"): a real scan a little larger or brighter than the
training cases is not flagged, a whole-body CT given to a model of 19-cm phantoms is.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from engine.domain.profile import PERCENTILES, DomainProfile, bundle_profile, percentile_key
from engine.io.image import Image

if TYPE_CHECKING:  # pragma: no cover - typing only
    from engine.pipelines.case import Prediction
    from engine.registry import ModelBundle
    from engine.tasks.base import Task

log = logging.getLogger(__name__)

#: Spacing and field of view are flagged beyond this factor of the training range.
GEOMETRY_FACTOR = 1.5
#: A structure volume is flagged beyond this factor of the training range.
VOLUME_FACTOR = 1.5
#: Intensity percentiles are flagged this far beyond the training range, in units of the input
#: (HU for CT, SUV for PET); at least this, or half the training spread of that percentile.
INTENSITY_TOLERANCE = {"CT": 150.0, "PT": 2.0}
#: Voxels a scan's intensity percentiles are computed from (a regular subsample of larger scans).
PERCENTILE_SAMPLE = 4_000_000
#: A structure present in at least this share of training cases is expected in a result.
EXPECTED_PRESENCE = 0.95
#: The tumour must come this close (mm) to its organ of origin.
ORGAN_GAP_MM = 5.0


@dataclass
class DomainCheck:
    """What was compared, and every way the run falls outside the training data."""

    profile: DomainProfile | None
    input_findings: list[str] = field(default_factory=list)
    result_findings: list[str] = field(default_factory=list)

    @property
    def within(self) -> bool:
        return not (self.input_findings or self.result_findings)

    def warnings(self) -> list[str]:
        """The findings as the warnings a user reads, the phantom case first and plainly."""
        out = []
        if self.profile is not None and self.profile.trained_on_phantoms and self.input_findings:
            out.append("This model was trained on synthetic phantoms and this scan does not look like one: its "
                       "segmentation and stage say nothing about a real patient.")
        if not self.within:
            out.append("Outside the model's training data — " + "; ".join(self.input_findings + self.result_findings)
                       + ". The stage is unreliable.")
        return out

    def report(self) -> dict[str, Any]:
        """The ``domain`` field of report.json."""
        if self.profile is None:
            return {"checked": False, "reason": "the model records no profile of its training data"}
        return {"checked": True, "within_training_domain": self.within,
                "trained_on_phantoms": self.profile.trained_on_phantoms,
                "input_findings": self.input_findings, "result_findings": self.result_findings}


def _fmt(values: Sequence[float]) -> str:
    return " × ".join(f"{v:.3g}" for v in values)


def canonical_geometry(image: Image) -> tuple[list[float], list[float]]:
    """Spacing and field of view (z, y, x mm) in the canonical voxel order the profile uses."""
    from engine.planning.planner import CANONICAL_ORIENTATION
    from engine.preprocessing.orientation import reorientation

    axes = reorientation(image, CANONICAL_ORIENTATION).axes
    spacing = [float(image.spacing[a]) for a in axes]
    return spacing, [float(image.shape[a]) * s for a, s in zip(axes, spacing)]


def _outside(values: Sequence[float], low: Sequence[float], high: Sequence[float], factor: float) -> bool:
    return any(v > h * factor or v < lo / factor for v, lo, h in zip(values, low, high))


def _sample(array: np.ndarray, most: int = PERCENTILE_SAMPLE) -> np.ndarray:
    """Every n-th voxel along each axis, at most about ``most`` of them: percentiles of a whole CT do
    not change with the sample, their cost does (seconds for a 512×512×300 volume)."""
    step = max(1, int(np.ceil((array.size / most) ** (1 / 3))))
    return array[::step, ::step, ::step]


def input_findings(profile: DomainProfile, image: Image) -> list[str]:
    """How the scan differs from every training scan: geometry and whole-scan intensities."""
    found = []
    spacing, fov = canonical_geometry(image)
    sp, fv = profile.spacing_mm, profile.field_of_view_mm
    if _outside(spacing, sp["min"], sp["max"], GEOMETRY_FACTOR):
        found.append(f"voxel spacing {_fmt(spacing)} mm (training: {_fmt(sp['min'])} to {_fmt(sp['max'])} mm)")
    if _outside(fov, fv["min"], fv["max"], GEOMETRY_FACTOR):
        found.append(f"field of view {_fmt(fov)} mm (training: {_fmt(fv['min'])} to {_fmt(fv['max'])} mm)")
    tolerance = INTENSITY_TOLERANCE.get(profile.modality.upper())
    if tolerance is not None:  # MR intensities have no units to compare
        values = np.percentile(_sample(image.array), PERCENTILES)
        off = []
        for q, v in zip(PERCENTILES, values):
            low, high = profile.intensity_percentiles[percentile_key(q)]
            slack = max(tolerance, 0.5 * (high - low))
            if not low - slack <= v <= high + slack:
                off.append(f"{q}th percentile {v:.0f} (training {low:.0f} to {high:.0f})")
        if off:
            found.append("intensities unlike the training scans: " + ", ".join(off))
    return found


def volume_findings(profile: DomainProfile, volumes_cm3: Mapping[str, float]) -> list[str]:
    """Structures far larger or smaller than in any training case, or missing where all had them."""
    found = []
    for name, volume in volumes_cm3.items():
        known = profile.structure_volumes_cm3.get(name)
        if known is None:
            continue
        low, high = known
        if volume <= 0:
            if profile.structure_presence.get(name, 0.0) >= EXPECTED_PRESENCE:
                found.append(f"no {name} found (every training case had one)")
        elif volume > high * VOLUME_FACTOR or volume < low / VOLUME_FACTOR:
            found.append(f"{name} {volume:.3g} cm³ (training: {low:.3g} to {high:.3g} cm³)")
    return found


def tumour_away_from_organ(labels: np.ndarray, spacing: Sequence[float], tumour: int, organ: int,
                           gap_mm: float = ORGAN_GAP_MM) -> bool:
    """Whether a segmented tumour lies wholly more than ``gap_mm`` from its organ of origin (a tumour
    that grows from an organ touches it). Computed in the tumour's neighbourhood only."""
    found = np.nonzero(labels == tumour)
    if not found[0].size:
        return False
    reach = [int(np.ceil(gap_mm / s)) + 1 for s in spacing]
    box = tuple(slice(max(0, int(ix.min()) - r), int(ix.max()) + 1 + r) for ix, r in zip(found, reach))
    near = labels[box]
    if not (near == organ).any():
        return True
    distance = ndimage.distance_transform_edt(near != organ, sampling=spacing)
    return float(distance[near == tumour].min()) > gap_mm


def check_run(task: Task, bundle: ModelBundle, image: Image, prediction: Prediction) -> DomainCheck:
    """The domain check of one Segment & Stage run (the prediction is in the input's geometry)."""
    profile = bundle_profile(bundle)
    check = DomainCheck(profile)
    if profile is None:
        return check
    check.input_findings = input_findings(profile, image)
    check.result_findings = volume_findings(profile, prediction.volumes_cm3)
    labels = {lab.name: lab.value for lab in bundle.labels}
    organ, tumour = getattr(task, "organ_of_origin", None), task.tumour_label
    if organ in labels and tumour in labels and tumour_away_from_organ(
            prediction.labels.array, prediction.labels.spacing, labels[tumour], labels[organ]):
        check.result_findings.append(f"the {tumour} lies outside its organ of origin ({organ})")
    if not check.within:
        log.warning("Outside the training domain of %s: %s", bundle.id,
                    "; ".join(check.input_findings + check.result_findings))
    return check


def apply_domain_check(task: Task, bundle: ModelBundle, image: Image, prediction: Prediction) -> DomainCheck:
    """Check the run and put the outcome on the prediction: warnings first, the report field, and the
    stage marked unreliable when anything is outside."""
    check = check_run(task, bundle, image, prediction)
    prediction.warnings[:0] = check.warnings()
    prediction.domain = check.report()
    if prediction.stage_probabilities is not None:
        prediction.stage_reliable = check.within and prediction.stage_reliable is not False
    return check
