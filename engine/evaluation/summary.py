"""Aggregation of evaluated cases into an :class:`EvaluationReport`: per-structure summaries, stage
classification with confidence intervals, segmentation by reference stage, ensemble members and
volume agreement (see :mod:`engine.evaluation.report` for what each section holds)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from engine.evaluation.cases import SEGMENTATION_METRICS, CaseEvaluation
from engine.metrics import (
    BlandAltmanResult,
    ClassificationReport,
    MetricInputError,
    PearsonResult,
    StructureScores,
    bland_altman,
    classification_report,
    pearson,
)
from engine.metrics.common import JsonResult, json_value

#: Fewer cases than this and the volume agreement (correlation, limits of agreement) is not reported.
MIN_CASES_VOLUME_AGREEMENT = 3

#: How far a case's stage probabilities may sum from 1 (same tolerance as the classification metrics).
_PROB_TOLERANCE = 1e-3


@dataclass
class MetricSummary(JsonResult):
    """Mean, sample SD (ddof=1), median, min and max over the ``n`` cases where the value is defined;
    ``n_undefined`` cases (NaN) were left out."""

    mean: float
    std: float
    median: float
    min: float
    max: float
    n: int
    n_undefined: int


@dataclass
class StructureSummary(JsonResult):
    """Segmentation quality of one structure over all cases."""

    name: str
    label: int
    n_cases: int
    dice: MetricSummary
    iou: MetricSummary
    hd95_mm: MetricSummary
    assd_mm: MetricSummary
    pred_volume_cm3: MetricSummary
    ref_volume_cm3: MetricSummary


@dataclass
class StageStratum(JsonResult):
    """Segmentation quality over the cases of one reference stage."""

    stage: str
    n_cases: int
    case_ids: list[str]
    structures: list[StructureSummary]


@dataclass
class VolumeAgreement(JsonResult):
    """Predicted vs reference volume of one structure: Pearson correlation and Bland–Altman
    (differences are predicted − reference, cm³). Both None, with ``note``, when not computable."""

    name: str
    n: int
    pearson: PearsonResult | None = None
    bland_altman: BlandAltmanResult | None = None
    note: str | None = None


@dataclass
class EvaluationReport(JsonResult):
    """Everything reported for one model on one test set."""

    metadata: dict[str, Any]
    n_cases: int
    structures: list[StructureSummary]
    volume_agreement: list[VolumeAgreement]
    classification: ClassificationReport | None
    stage_names: list[str] | None
    cases: list[CaseEvaluation]
    notes: list[str] = field(default_factory=list)
    segmentation_by_stage: list[StageStratum] = field(default_factory=list)
    #: each ensemble member's classification on the same cases (empty unless the cases carry them)
    member_classification: list[ClassificationReport] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = json_value({k: getattr(self, k) for k in ("metadata", "n_cases", "structures",
                                                      "segmentation_by_stage", "volume_agreement",
                                                      "classification", "member_classification",
                                                      "stage_names")})
        d["cases"] = [c.to_dict() for c in self.cases]
        d["notes"] = list(self.notes)
        return d

    def structure(self, name: str) -> StructureSummary:
        """The summary of structure ``name`` (KeyError if absent)."""
        for s in self.structures:
            if s.name == name:
                return s
        raise KeyError(name)

    def stratum(self, stage: str) -> StageStratum:
        """The segmentation summary of the cases of reference stage ``stage`` (KeyError if none)."""
        for st in self.segmentation_by_stage:
            if st.stage == stage:
                return st
        raise KeyError(stage)

    def agreement(self, name: str) -> VolumeAgreement:
        """The volume agreement of structure ``name`` (KeyError if absent)."""
        for v in self.volume_agreement:
            if v.name == name:
                return v
        raise KeyError(name)


def _summary(values: Sequence[float]) -> MetricSummary:
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    n = int(finite.size)
    if n == 0:
        return MetricSummary(math.nan, math.nan, math.nan, math.nan, math.nan, 0, int(arr.size))
    return MetricSummary(
        mean=float(finite.mean()),
        std=float(finite.std(ddof=1)) if n > 1 else math.nan,
        median=float(np.median(finite)),
        min=float(finite.min()),
        max=float(finite.max()),
        n=n,
        n_undefined=int(arr.size - n),
    )


def _check_cases(cases: Sequence[CaseEvaluation]) -> list[str]:
    if not cases:
        raise MetricInputError("No cases to summarize; evaluate at least one case.")
    seen: set[str] = set()
    for c in cases:
        if c.case_id in seen:
            raise MetricInputError(f"Case '{c.case_id}' appears more than once.")
        seen.add(c.case_id)
    names = list(cases[0].structures)
    if not names:
        raise MetricInputError(f"Case '{cases[0].case_id}' has no structures.")
    for c in cases[1:]:
        if set(c.structures) != set(names):
            raise MetricInputError(
                f"Cases were scored on different structures: '{cases[0].case_id}' has {sorted(names)}, "
                f"'{c.case_id}' has {sorted(c.structures)}. Evaluate every case with the same labels.")
        for n in names:
            if c.structures[n].label != cases[0].structures[n].label:
                raise MetricInputError(
                    f"Structure '{n}' has label {cases[0].structures[n].label} in '{cases[0].case_id}' but "
                    f"{c.structures[n].label} in '{c.case_id}'.")
    return names


def _stage_section(cases: Sequence[CaseEvaluation], stage_names: Sequence[str] | None,
                   notes: list[str]) -> tuple[ClassificationReport | None, list[str] | None]:
    staged = [c for c in cases if c.stage_true is not None or c.stage_probabilities is not None]
    if stage_names is None:
        for c in staged:
            if c.stage_probabilities:
                stage_names = list(c.stage_probabilities)
                break
    if stage_names is None:
        if staged:
            notes.append("Stage classification not reported: reference stages are given but no case has "
                         "stage probabilities.")
        return None, None
    names = [str(s) for s in stage_names]
    if len(names) < 2 or len(set(names)) != len(names):
        raise MetricInputError(f"stage_names must be at least 2 unique names, got {names}.")
    y: list[int] = []
    probs: list[list[float]] = []
    used: list[str] = []
    missing_true, missing_probs, missing_both = [], [], []
    for c in cases:
        if c.stage_true is None or c.stage_probabilities is None:
            if c.stage_probabilities is not None:
                missing_true.append(c.case_id)
            elif c.stage_true is not None:
                missing_probs.append(c.case_id)
            else:
                missing_both.append(c.case_id)
            continue
        if c.stage_true not in names:
            raise MetricInputError(f"Case '{c.case_id}': reference stage '{c.stage_true}' is not one of the "
                                   f"stages {names}.")
        if set(c.stage_probabilities) != set(names):
            raise MetricInputError(f"Case '{c.case_id}': stage probabilities are for "
                                   f"{sorted(c.stage_probabilities)}, expected exactly {names}.")
        row = [float(c.stage_probabilities[n]) for n in names]
        if not all(math.isfinite(v) for v in row) or abs(sum(row) - 1.0) > _PROB_TOLERANCE:
            raise MetricInputError(f"Case '{c.case_id}': stage probabilities must be finite and sum to 1 "
                                   f"(got {row}); apply softmax first.")
        y.append(names.index(c.stage_true))
        probs.append(row)
        used.append(c.case_id)
    if missing_true:
        notes.append(f"{len(missing_true)} case(s) have stage probabilities but no reference stage and are "
                     f"left out of the stage classification: {missing_true}.")
    if missing_probs:
        notes.append(f"{len(missing_probs)} case(s) have a reference stage but no stage probabilities and "
                     f"are left out of the stage classification: {missing_probs}.")
    if missing_both and used:
        notes.append(f"{len(missing_both)} case(s) have neither a reference stage nor stage probabilities "
                     f"and are left out of the stage classification: {missing_both}.")
    if not used:
        notes.append("Stage classification not reported: no case has both a reference stage and stage "
                     "probabilities.")
        return None, names
    report = classification_report(np.asarray(y), np.asarray(probs), names)
    return report, names


def _member_classification(cases: Sequence[CaseEvaluation], stage_names: Sequence[str] | None,
                           notes: list[str]) -> list[ClassificationReport]:
    """Each ensemble member's classification over the cases, when every staged case carries the same
    number of members (a pooled report mixing an ensemble with a single model gets none)."""
    staged = [c for c in cases if c.stage_true is not None and c.stage_probabilities is not None]
    counts = {len(c.member_stage_probabilities or []) for c in staged}
    if counts == {0}:
        return []
    if len(counts) != 1:
        notes.append("Ensemble members not reported: the cases carry different numbers of member "
                     f"probabilities ({sorted(counts)}).")
        return []
    reports = []
    for k in range(counts.pop()):
        member_cases = [CaseEvaluation(c.case_id, {}, c.stage_true, c.member_stage_probabilities[k])
                        for c in staged if c.member_stage_probabilities]
        report, _ = _stage_section(member_cases, stage_names, [])
        if report is not None:
            reports.append(report)
    return reports


def _structure_summary(name: str, rows: Sequence[StructureScores]) -> StructureSummary:
    return StructureSummary(
        name=name, label=rows[0].label, n_cases=len(rows),
        **{m: _summary([getattr(r, m) for r in rows]) for m in SEGMENTATION_METRICS},
        pred_volume_cm3=_summary([r.pred_volume_cm3 for r in rows]),
        ref_volume_cm3=_summary([r.ref_volume_cm3 for r in rows]),
    )


def _segmentation_by_stage(cases: Sequence[CaseEvaluation], names: Sequence[str],
                           stage_names: Sequence[str] | None, notes: list[str]) -> list[StageStratum]:
    """Per reference stage (in ``stage_names`` order, then any others in order of appearance)."""
    staged = [c for c in cases if c.stage_true is not None]
    if not staged:
        return []
    if len(staged) < len(cases):
        notes.append(f"Segmentation by stage: {len(cases) - len(staged)} case(s) without a reference stage "
                     "are left out of it.")
    order = [s for s in (stage_names or []) if any(c.stage_true == s for c in staged)]
    order += [s for s in dict.fromkeys(c.stage_true for c in staged) if s not in order]
    strata = []
    for stage in order:
        group = [c for c in staged if c.stage_true == stage]
        strata.append(StageStratum(stage=stage, n_cases=len(group), case_ids=[c.case_id for c in group],
                                   structures=[_structure_summary(n, [c.structures[n] for c in group])
                                               for n in names]))
    return strata


def _volume_agreement(name: str, pred: list[float], ref: list[float]) -> VolumeAgreement:
    n = len(pred)
    if n < MIN_CASES_VOLUME_AGREEMENT:
        return VolumeAgreement(name=name, n=n, note=f"Volume agreement of '{name}' not computed: needs at "
                                                    f"least {MIN_CASES_VOLUME_AGREEMENT} cases, got {n}.")
    note = None
    r = pearson(pred, ref)
    if not math.isfinite(r.r):
        note = f"Pearson r of '{name}' is undefined: the predicted or the reference volume is constant."
    return VolumeAgreement(name=name, n=n, pearson=r, bland_altman=bland_altman(pred, ref), note=note)


def summarize(cases: Sequence[CaseEvaluation], stage_names: Sequence[str] | None = None,
              metadata: Mapping[str, Any] | None = None) -> EvaluationReport:
    """Aggregate evaluated cases into an :class:`EvaluationReport`.

    ``stage_names`` fixes the stage order (class index order); when None it is taken from the first case
    with stage probabilities. ``metadata`` (e.g. task, model id/version, dataset) is copied into the
    report as is, with ``n_cases`` added.
    """
    names = _check_cases(cases)
    notes: list[str] = []
    structures: list[StructureSummary] = []
    agreement: list[VolumeAgreement] = []
    for name in names:
        rows = [c.structures[name] for c in cases]
        structures.append(_structure_summary(name, rows))
        undefined = [c.case_id for c, r in zip(cases, rows) if not math.isfinite(r.hd95_mm)]
        if undefined:
            notes.append(f"'{name}': HD95/ASSD undefined (exactly one mask empty) in {len(undefined)} of "
                         f"{len(rows)} case(s) {undefined}; their summaries are over the other cases.")
        va = _volume_agreement(name, [r.pred_volume_cm3 for r in rows], [r.ref_volume_cm3 for r in rows])
        if va.note:
            notes.append(va.note)
        agreement.append(va)
    classification, stages = _stage_section(cases, stage_names, notes)
    if classification is not None:
        notes.extend(f"Stage classification: {n}" for n in classification.notes)
    by_stage = _segmentation_by_stage(cases, names, stages, notes)
    members = _member_classification(cases, stages, notes) if classification is not None else []
    meta = dict(metadata or {})
    meta["n_cases"] = len(cases)
    return EvaluationReport(metadata=meta, n_cases=len(cases), structures=structures,
                            volume_agreement=agreement, classification=classification, stage_names=stages,
                            cases=list(cases), notes=notes, segmentation_by_stage=by_stage,
                            member_classification=members)
