"""Evaluation reports for any task: per-structure segmentation quality, stage classification with CIs,
volume agreement, as JSON, Markdown and PNG plots (see :mod:`engine.evaluation.report`)."""

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
