"""One evaluated case: per-structure segmentation scores and, optionally, the reference stage and the
model's stage probabilities (see :mod:`engine.evaluation.report` for what a report makes of them)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from engine.metrics import MetricInputError, StructureScores, segmentation_scores
from engine.metrics.common import JsonResult, json_value

#: The per-structure scores a case carries and a report summarises.
SEGMENTATION_METRICS = ("dice", "iou", "hd95_mm", "assd_mm")


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
                                            **{k: nan(s[k]) for k in (*SEGMENTATION_METRICS, "pred_volume_cm3",
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
