"""The evaluation report as Markdown tables (what ``metrics.md`` holds); undefined numbers read "n/a"."""

from __future__ import annotations

import math
from typing import Any, Sequence

from engine.evaluation.summary import EvaluationReport, MetricSummary
from engine.metrics.common import format_number

_CLASS_METRICS = ("precision", "sensitivity", "specificity", "npv", "f1")


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
    out += _segmentation_section(report)
    out += _strata_section(report)
    out += _classification_section(report)
    out += _volume_section(report)
    if report.notes:
        out += ["## Notes", ""] + [f"- {n}" for n in report.notes] + [""]
    return "\n".join(out)


def _segmentation_section(report: EvaluationReport) -> list[str]:
    out = ["## Segmentation", "",
           "Mean ± SD over cases; HD95 and ASSD are over the cases where both masks are non-empty.", ""]
    out += _table(["Structure", "n", "Dice", "IoU", "HD95 (mm)", "ASSD (mm)"],
                  [[s.name, s.n_cases, _mean_sd(s.dice, 3), _mean_sd(s.iou, 3), _mean_sd(s.hd95_mm, 2),
                    _mean_sd(s.assd_mm, 2)] for s in report.structures]) + [""]
    out += ["Median (min–max):", ""]
    out += _table(["Structure", "Dice", "IoU", "HD95 (mm)", "ASSD (mm)"],
                  [[s.name] + [f"{_fmt(m.median, d)} ({_fmt(m.min, d)}–{_fmt(m.max, d)})"
                               for m, d in ((s.dice, 3), (s.iou, 3), (s.hd95_mm, 2), (s.assd_mm, 2))]
                   for s in report.structures]) + [""]
    return out


def _strata_section(report: EvaluationReport) -> list[str]:
    strata = report.segmentation_by_stage
    if not strata:
        return []
    structure_names = [s.name for s in report.structures]
    out = ["## Segmentation by reference stage", "",
           "Dice, mean ± SD over the cases of each reference stage:", ""]
    out += _table(["Stage", "n"] + structure_names,
                  [[st.stage, st.n_cases] + [_mean_sd(s.dice, 3) for s in st.structures]
                   for st in strata]) + [""]
    out += ["Mean predicted / reference volume (cm³):", ""]
    out += _table(["Stage", "n"] + structure_names,
                  [[st.stage, st.n_cases]
                   + [f"{_fmt(s.pred_volume_cm3.mean, 2)} / {_fmt(s.ref_volume_cm3.mean, 2)}"
                      for s in st.structures] for st in strata]) + [""]
    return out


def _classification_section(report: EvaluationReport) -> list[str]:
    cls = report.classification
    if cls is None:
        return []
    level = f"{cls.ci_level * 100:g} %"
    out = [f"## Stage classification (n = {cls.n})", "",
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
    return out


def _volume_section(report: EvaluationReport) -> list[str]:
    out = ["## Volume agreement", "",
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
    return out + _table(["Structure", "n", "r (p)", "Mean diff (cm³)", "95 % limits (cm³)"], rows) + [""]
