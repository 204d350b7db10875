"""Evaluation metrics: segmentation overlap/distances, classification with CIs, and paired statistics.

Results are dataclasses with ``to_dict()`` for JSON (NaN → ``null``). Bad inputs raise
:class:`MetricInputError` (both a ``ValueError`` and an :class:`engine.errors.EngineError`).
"""

from engine.metrics.common import MetricInputError
from engine.metrics.classification import (
    AucEstimate,
    ClassificationReport,
    ClassMetrics,
    MacroMetrics,
    class_metrics,
    classification_report,
    clopper_pearson,
    confusion_matrix,
    delong_ci,
    one_vs_rest_auc,
)
from engine.metrics.segmentation import StructureScores, assd, dice, hd95, iou, segmentation_scores
from engine.metrics.statistics import (
    BlandAltmanResult,
    DeLongResult,
    McNemarResult,
    PearsonResult,
    WilcoxonResult,
    bland_altman,
    delong_roc_variance,
    delong_test,
    mcnemar_test,
    pearson,
    wilcoxon_test,
)

__all__ = [
    "MetricInputError",
    # segmentation
    "dice", "iou", "hd95", "assd", "StructureScores", "segmentation_scores",
    # classification
    "ClassMetrics", "MacroMetrics", "AucEstimate", "ClassificationReport", "confusion_matrix",
    "class_metrics",
    "clopper_pearson", "delong_ci", "one_vs_rest_auc", "classification_report",
    # statistics
    "delong_roc_variance", "DeLongResult", "delong_test", "McNemarResult", "mcnemar_test", "WilcoxonResult",
    "wilcoxon_test", "PearsonResult", "pearson", "BlandAltmanResult", "bland_altman",
]
