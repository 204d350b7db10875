"""Task-agnostic evaluation report: the tables and plots of the nn-TransEC paper for one test set.

Flow: :func:`evaluate_case` scores one case (prediction vs reference label map, optionally the stage
probabilities) → :func:`summarize` aggregates the cases into an :class:`EvaluationReport` →
:func:`write_report` writes ``metrics.json``, ``metrics.md``, ``roc.png`` and ``bland_altman.png``.

What is reported:

- **Segmentation**, per structure: mean, SD (sample, ddof=1; NaN for one case), median of Dice, IoU,
  HD95 (mm) and ASSD (mm) over the cases. A distance is undefined (NaN) when exactly one of the two masks
  is empty (:mod:`engine.metrics.segmentation`); the summary is then over the cases where it is defined
  and ``n_undefined`` says how many were left out — they are never silently dropped.
- **Stage classification** (when the cases carry a reference stage and stage probabilities): the full
  :class:`~engine.metrics.classification.ClassificationReport` — confusion matrix, accuracy with
  Clopper–Pearson CI, per-stage and macro precision, sensitivity, specificity, NPV, F1, one-vs-rest AUC
  with DeLong CI and the macro AUC with CI. Cases missing either the reference stage or the probabilities
  are left out of this section (a note says how many).
- **Segmentation by reference stage** (when cases carry a reference stage): the per-structure summary
  again within each stage. Tumour segmentation quality depends strongly on the stage (a thin T1 tumour
  in the inner wall vs a bulky T3/T4 mass), so one mean over a stage mix hides where a model fails and
  makes test sets with different mixes incomparable; the mean predicted and reference volumes per stage
  show whether a stage is over- or under-segmented.
- **Ensemble members** (when the cases carry each member's stage probabilities, as an ensemble of
  stage classifiers gives them): every member's macro AUC and accuracy on the same cases, next to the
  ensemble's — so one sees whether averaging beat its members or one member carried it.
- **Volume agreement**, per structure: Pearson r (p-value, Fisher-z CI) and Bland–Altman bias and 95 %
  limits of predicted − reference volume (cm³). Needs ≥ 3 cases; otherwise it is skipped with a note.

Everything NaN is written as JSON ``null`` and as "n/a" in Markdown. Plots use matplotlib's Agg canvas
directly (no pyplot, so the global backend of a host application such as Slicer is never touched).
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from engine.errors import EngineError
from engine.utils.atomic import atomic_write_bytes
from engine.metrics import (
    BlandAltmanResult,
    ClassificationReport,
    MetricInputError,
    PearsonResult,
    StructureScores,
    bland_altman,
    classification_report,
    pearson,
    segmentation_scores,
)
from engine.metrics._common import JsonResult, format_number, json_value

__all__ = [
    "REPORT_FILES", "MIN_CASES_VOLUME_AGREEMENT", "CaseEvaluation", "MetricSummary", "StructureSummary",
    "StageStratum", "VolumeAgreement", "EvaluationReport", "evaluate_case", "summarize", "write_report",
    "render_markdown", "read_cases",
]

#: Files :func:`write_report` may write, by key of its returned dict.
REPORT_FILES: dict[str, str] = {
    "json": "metrics.json",
    "markdown": "metrics.md",
    "roc": "roc.png",
    "bland_altman": "bland_altman.png",
}

#: Fewer cases than this and the volume agreement (correlation, limits of agreement) is not reported.
MIN_CASES_VOLUME_AGREEMENT = 3

#: How far a case's stage probabilities may sum from 1 (same tolerance as the classification metrics).
_PROB_TOLERANCE = 1e-3

_SEG_METRICS = ("dice", "iou", "hd95_mm", "assd_mm")
_CLASS_METRICS = ("precision", "sensitivity", "specificity", "npv", "f1")


# --- per case ------------------------------------------------------------------------------------

@dataclass
class CaseEvaluation(JsonResult):
    """One evaluated case: per-structure scores and, optionally, its reference stage and the model's
    stage probabilities (``stage name → probability``)."""

    case_id: str
    structures: dict[str, StructureScores]
    stage_true: str | None = None
    stage_probabilities: dict[str, float] | None = None
    #: each ensemble member's own probabilities (``stage_probabilities`` is their mean); None otherwise
    member_stage_probabilities: list[dict[str, float]] | None = None

    @property
    def stage_predicted(self) -> str | None:
        """The stage with the highest probability (first one on an exact tie), or None."""
        if not self.stage_probabilities:
            return None
        names = list(self.stage_probabilities)
        values = [float(self.stage_probabilities[n]) for n in names]
        return names[int(np.argmax(values))]

    def to_dict(self) -> dict[str, Any]:
        d = json_value(self)
        d["stage_predicted"] = self.stage_predicted
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CaseEvaluation":
        """The inverse of :meth:`to_dict` (JSON ``null`` distances back to NaN), so saved evaluations
        can be summarised again, e.g. several test sets pooled."""
        nan = lambda v: math.nan if v is None else float(v)  # noqa: E731
        structures = {name: StructureScores(name=s["name"], label=int(s["label"]),
                                            **{k: nan(s[k]) for k in (*_SEG_METRICS, "pred_volume_cm3",
                                                                      "ref_volume_cm3")})
                      for name, s in d["structures"].items()}
        return cls(case_id=str(d["case_id"]), structures=structures, stage_true=d.get("stage_true"),
                   stage_probabilities=_probabilities(d.get("stage_probabilities")),
                   member_stage_probabilities=_member_probabilities(d.get("member_stage_probabilities")))


def _as_probabilities(probs: Mapping[str, float]) -> dict[str, float]:
    return {str(k): float(v) for k, v in probs.items()}


def _probabilities(probs: Mapping[str, float] | None) -> dict[str, float] | None:
    return None if probs is None else _as_probabilities(probs)


def _member_probabilities(members: Sequence[Mapping[str, float]] | None) -> list[dict[str, float]] | None:
    return None if members is None else [_as_probabilities(m) for m in members]


def evaluate_case(
    case_id: str,
    pred_labels: np.ndarray,
    ref_labels: np.ndarray,
    spacing: Sequence[float] | None,
    labels: Mapping[str, int],
    stage_true: str | None = None,
    stage_probabilities: Mapping[str, float] | None = None,
    member_stage_probabilities: Sequence[Mapping[str, float]] | None = None,
) -> CaseEvaluation:
    """Score one case: Dice, IoU, HD95, ASSD and volumes per structure (``labels``: name → label value).

    ``pred_labels``/``ref_labels`` are label maps on the same grid (arrays, or engine ``Image`` objects);
    ``spacing`` is in mm in the array's axis order (may be None for ``Image`` inputs).
    """
    if not str(case_id):
        raise MetricInputError("case_id must be a non-empty string.")
    scores = segmentation_scores(pred_labels, ref_labels, labels, spacing)
    return CaseEvaluation(case_id=str(case_id), structures=scores,
                          stage_true=None if stage_true is None else str(stage_true),
                          stage_probabilities=_probabilities(stage_probabilities),
                          member_stage_probabilities=_member_probabilities(member_stage_probabilities))


# --- summary dataclasses -------------------------------------------------------------------------

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


# --- summarize -----------------------------------------------------------------------------------

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
        **{m: _summary([getattr(r, m) for r in rows]) for m in _SEG_METRICS},
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


# --- formatting ----------------------------------------------------------------------------------

def _fmt(value: float | None, digits: int = 3) -> str:
    return format_number(value, f".{digits}f")


def _fmt_p(p: float | None) -> str:
    if p is None or not math.isfinite(p):
        return "n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _mean_sd(s: MetricSummary, digits: int) -> str:
    if s.n == 0:
        text = "n/a"
    elif s.n == 1:
        text = _fmt(s.mean, digits)
    else:
        text = f"{_fmt(s.mean, digits)} ± {_fmt(s.std, digits)}"
    if s.n_undefined:
        text += f" ({s.n_undefined} undef.)"
    return text


def _ci(value: float, lo: float, hi: float, digits: int = 3) -> str:
    if not math.isfinite(value):
        return "n/a"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{_fmt(value, digits)} (CI n/a)"
    return f"{_fmt(value, digits)} ({_fmt(lo, digits)}–{_fmt(hi, digits)})"


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines


def render_markdown(report: EvaluationReport) -> str:
    """The report as readable Markdown tables (what ``metrics.md`` holds)."""
    meta = report.metadata
    title = meta.get("task")
    out = [f"# Evaluation report{f' — {title}' if title else ''}", ""]
    meta_rows = [[k, v] for k, v in meta.items() if v is not None and not isinstance(v, (dict, list))]
    if meta_rows:
        out += _table(["Item", "Value"], meta_rows) + [""]

    out += ["## Segmentation", "",
            "Mean ± SD over cases; HD95 and ASSD are over the cases where both masks are non-empty.", ""]
    out += _table(["Structure", "n", "Dice", "IoU", "HD95 (mm)", "ASSD (mm)"],
                  [[s.name, s.n_cases, _mean_sd(s.dice, 3), _mean_sd(s.iou, 3), _mean_sd(s.hd95_mm, 2),
                    _mean_sd(s.assd_mm, 2)] for s in report.structures]) + [""]
    out += ["Median (min–max):", ""]
    out += _table(["Structure", "Dice", "IoU", "HD95 (mm)", "ASSD (mm)"],
                  [[s.name] + [f"{_fmt(m.median, d)} ({_fmt(m.min, d)}–{_fmt(m.max, d)})"
                               for m, d in ((s.dice, 3), (s.iou, 3), (s.hd95_mm, 2), (s.assd_mm, 2))]
                   for s in report.structures]) + [""]

    strata = report.segmentation_by_stage
    if strata:
        structure_names = [s.name for s in report.structures]
        out += ["## Segmentation by reference stage", "",
                "Dice, mean ± SD over the cases of each reference stage:", ""]
        out += _table(["Stage", "n"] + structure_names,
                      [[st.stage, st.n_cases] + [_mean_sd(s.dice, 3) for s in st.structures]
                       for st in strata]) + [""]
        out += ["Mean predicted / reference volume (cm³):", ""]
        out += _table(["Stage", "n"] + structure_names,
                      [[st.stage, st.n_cases]
                       + [f"{_fmt(s.pred_volume_cm3.mean, 2)} / {_fmt(s.ref_volume_cm3.mean, 2)}"
                          for s in st.structures] for st in strata]) + [""]

    cls = report.classification
    if cls is not None:
        level = f"{cls.ci_level * 100:g} %"
        out += [f"## Stage classification (n = {cls.n})", "",
                f"Accuracy: {_fmt(cls.accuracy)} ({level} CI {_fmt(cls.accuracy_ci_low)}–"
                f"{_fmt(cls.accuracy_ci_high)}, Clopper–Pearson). AUC: one-vs-rest with {level} DeLong CI; "
                "macro: unweighted mean over stages.", ""]
        rows = [[c.name, c.support, _ci(c.auc, c.auc_ci_low, c.auc_ci_high)]
                + [_fmt(getattr(c, m)) for m in _CLASS_METRICS] for c in cls.per_class]
        mac = cls.macro
        rows.append(["**Macro**", cls.n, _ci(mac.auc, mac.auc_ci_low, mac.auc_ci_high)]
                    + [_fmt(getattr(mac, m)) for m in _CLASS_METRICS])
        out += _table(["Stage", "n", f"AUC ({level} CI)", "Precision", "Sensitivity", "Specificity", "NPV",
                       "F1"], rows) + [""]
        out += ["### Confusion matrix", "", "Rows: reference stage; columns: predicted stage.", ""]
        out += _table(["Reference \\ Predicted"] + cls.class_names,
                      [[name] + row for name, row in zip(cls.class_names, cls.confusion_matrix)]) + [""]
        if report.member_classification:
            out += ["### Ensemble members", "",
                    "Each stage classifier of the ensemble alone on the same cases; the ensemble stages by "
                    "their mean probabilities.", ""]
            rows = [[f"member {i}", m.n, _ci(m.macro.auc, m.macro.auc_ci_low, m.macro.auc_ci_high),
                     _fmt(m.accuracy)] for i, m in enumerate(report.member_classification, 1)]
            rows.append(["**ensemble**", cls.n, _ci(mac.auc, mac.auc_ci_low, mac.auc_ci_high),
                         _fmt(cls.accuracy)])
            out += _table(["Classifier", "n", f"macro AUC ({level} CI)", "Accuracy"], rows) + [""]

    out += ["## Volume agreement", "",
            "Predicted vs reference volume; differences are predicted − reference. "
            "Limits: mean difference ± 1.96 SD.", ""]
    rows = []
    for v in report.volume_agreement:
        if v.pearson is None or v.bland_altman is None:
            rows.append([v.name, v.n, "n/a", "n/a", "n/a"])
            continue
        ba = v.bland_altman
        r = v.pearson
        r_text = f"{_fmt(r.r)} ({_fmt_p(r.p_value)})" if math.isfinite(r.r) else "n/a"
        rows.append([v.name, v.n, r_text, f"{ba.mean_difference:+.3f}",
                     f"{_fmt(ba.lower_limit)} to {_fmt(ba.upper_limit)}"])
    out += _table(["Structure", "n", "r (p)", "Mean diff (cm³)", "95 % limits (cm³)"], rows) + [""]

    if report.notes:
        out += ["## Notes", ""] + [f"- {n}" for n in report.notes] + [""]
    return "\n".join(out)


# --- plots ---------------------------------------------------------------------------------------

def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _stage_arrays(report: EvaluationReport) -> tuple[np.ndarray, np.ndarray]:
    names = report.stage_names or []
    y, p = [], []
    for c in report.cases:
        if c.stage_true is None or c.stage_probabilities is None:
            continue
        y.append(names.index(c.stage_true))
        p.append([c.stage_probabilities[n] for n in names])
    return np.asarray(y, dtype=np.int64), np.asarray(p, dtype=np.float64).reshape(len(y), len(names))


def render_roc_png(report: EvaluationReport) -> bytes | None:
    """One-vs-rest ROC curve per stage (AUC in the legend), or None without a classification section."""
    cls = report.classification
    if cls is None:
        return None
    from sklearn.metrics import roc_curve

    y, p = _stage_arrays(report)
    fig = _new_figure(5.5, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")
    drawn = 0
    for k, c in enumerate(cls.per_class):
        pos = y == k
        if not pos.any() or pos.all():
            continue
        fpr, tpr, _ = roc_curve(pos.astype(int), p[:, k])
        # Varying line style and width keeps identical curves (e.g. two perfect stages) both visible.
        ax.plot(fpr, tpr, linewidth=3.0 - 0.6 * (drawn % 3), linestyle=("-", "--", "-.", ":")[drawn % 4],
                label=f"{c.name} (AUC {_fmt(c.auc)})")
        drawn += 1
    if drawn == 0:
        ax.text(0.5, 0.5, "no stage has both positive and negative cases", ha="center", va="center")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("1 − specificity")
    ax.set_ylabel("Sensitivity")
    ax.set_title(f"One-vs-rest ROC (macro AUC {_fmt(cls.macro.auc)}, n = {cls.n})")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def render_bland_altman_png(report: EvaluationReport) -> bytes | None:
    """One Bland–Altman panel per structure with computed agreement, or None when there is none."""
    panels = [v for v in report.volume_agreement if v.bland_altman is not None]
    if not panels:
        return None
    from matplotlib.ticker import MaxNLocator

    fig = _new_figure(4.8 * len(panels), 4.2)
    for i, va in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        pred = np.array([c.structures[va.name].pred_volume_cm3 for c in report.cases])
        ref = np.array([c.structures[va.name].ref_volume_cm3 for c in report.cases])
        ba = va.bland_altman
        ax.scatter((pred + ref) / 2.0, pred - ref, s=24, color="tab:blue", zorder=3)
        ax.axhline(ba.mean_difference, color="tab:red", linewidth=1.5,
                   label=f"mean {ba.mean_difference:+.3g}")
        for limit, text in ((ba.upper_limit, "+1.96 SD"), (ba.lower_limit, "−1.96 SD")):
            ax.axhline(limit, color="tab:gray", linestyle="--", linewidth=1.2,
                       label=f"{text} {limit:+.3g}" if math.isfinite(limit) else text)
        ax.axhline(0.0, color="0.8", linewidth=0.8, zorder=1)
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.set_xlabel("Mean of predicted and reference volume (cm³)")
        ax.set_ylabel("Predicted − reference (cm³)")
        ax.set_title(f"{va.name} (n = {va.n})")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return _png(fig)


# --- writing -------------------------------------------------------------------------------------

def read_cases(metrics_json: str | os.PathLike[str]) -> tuple[list[CaseEvaluation], list[str] | None]:
    """The evaluated cases and stage names of a ``metrics.json`` written by :func:`write_report`."""
    path = Path(metrics_json)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        cases = [CaseEvaluation.from_dict(c) for c in data["cases"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EngineError(f"Cannot read evaluated cases from {path} ({exc}); give the metrics.json that "
                          "'python -m engine evaluate' wrote.") from exc
    return cases, data.get("stage_names")


def write_report(report: EvaluationReport, out_dir: str | os.PathLike[str],
                 overwrite: bool = False) -> dict[str, Path]:
    """Write ``metrics.json``, ``metrics.md`` and, when there is something to plot, ``roc.png`` (stage
    classification) and ``bland_altman.png`` (volume agreement) into ``out_dir``.

    Returns ``{key: path}`` of the files written (keys of :data:`REPORT_FILES`). Refuses, touching
    nothing, when any report file already exists in ``out_dir`` unless ``overwrite``; with ``overwrite``,
    a report file this report does not produce (e.g. an old ``roc.png`` when there are no stages now) is
    removed so the folder never mixes two reports. Everything is rendered before the first file is
    written, and each file is written to a temporary file and renamed into place.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise EngineError(f"Report folder {out} exists and is not a folder.")
    existing = [out / name for name in REPORT_FILES.values() if (out / name).exists()]
    if existing and not overwrite:
        raise EngineError(f"An evaluation report already exists in {out} "
                          f"({', '.join(p.name for p in existing)}); choose another output folder or "
                          "pass overwrite=True (--overwrite) to replace it.")

    payload: dict[str, bytes | None] = {
        "json": (json.dumps(report.to_dict(), indent=2, ensure_ascii=False, allow_nan=False, default=str)
                 + "\n").encode("utf-8"),
        "markdown": render_markdown(report).encode("utf-8"),
        "roc": render_roc_png(report),
        "bland_altman": render_bland_altman_png(report),
    }
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EngineError(f"Cannot create report folder {out}: {exc}") from exc
    written: dict[str, Path] = {}
    for key, data in payload.items():
        path = out / REPORT_FILES[key]
        if data is None:
            if overwrite:
                path.unlink(missing_ok=True)
            continue
        try:
            atomic_write_bytes(path, data)
        except OSError as exc:
            raise EngineError(f"Cannot write {path}: {exc}") from exc
        written[key] = path
    return written
