"""Evaluation reports for any task: per-structure segmentation quality, stage classification with CIs,
volume agreement, as JSON, Markdown and PNG plots (see :mod:`engine.evaluation.report`).

Modules: :mod:`~engine.evaluation.cases` (one case scored) → :mod:`~engine.evaluation.summary` (cases
aggregated) → :mod:`~engine.evaluation.markdown` and :mod:`~engine.evaluation.plots` (rendering) →
:mod:`~engine.evaluation.report` (the files written, and what each section means)."""

from engine.evaluation.report import (
    MIN_CASES_VOLUME_AGREEMENT,
    REPORT_FILES,
    CaseEvaluation,
    EvaluationReport,
    MetricSummary,
    StageStratum,
    StructureSummary,
    VolumeAgreement,
    evaluate_case,
    read_cases,
    render_markdown,
    summarize,
    write_report,
)

__all__ = [
    "REPORT_FILES", "MIN_CASES_VOLUME_AGREEMENT", "CaseEvaluation", "MetricSummary", "StructureSummary",
    "StageStratum", "VolumeAgreement", "EvaluationReport", "evaluate_case", "summarize", "write_report",
    "render_markdown", "read_cases",
]
