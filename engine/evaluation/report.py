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

import json
import os
from pathlib import Path

from engine.errors import EngineError
from engine.evaluation.cases import SEGMENTATION_METRICS, CaseEvaluation, evaluate_case
from engine.evaluation.markdown import render_markdown
from engine.evaluation.plots import render_bland_altman_png, render_roc_png
from engine.evaluation.summary import (MIN_CASES_VOLUME_AGREEMENT, EvaluationReport, MetricSummary,
                                       StageStratum, StructureSummary, VolumeAgreement, summarize)
from engine.utils.atomic import atomic_write_bytes

__all__ = [
    "REPORT_FILES", "MIN_CASES_VOLUME_AGREEMENT", "SEGMENTATION_METRICS", "CaseEvaluation", "MetricSummary",
    "StructureSummary", "StageStratum", "VolumeAgreement", "EvaluationReport", "evaluate_case", "summarize",
    "write_report", "render_markdown", "render_roc_png", "render_bland_altman_png", "read_cases",
]

#: Files :func:`write_report` may write, by key of its returned dict.
REPORT_FILES: dict[str, str] = {
    "json": "metrics.json",
    "markdown": "metrics.md",
    "roc": "roc.png",
    "bland_altman": "bland_altman.png",
}


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
                          "pass --overwrite to replace it.")

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
