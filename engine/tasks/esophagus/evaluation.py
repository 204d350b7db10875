"""Evaluating an nn-TransEC model on a labelled, staged dataset: the paper's tables and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from engine.data.dataset import RawDataset
from engine.errors import Cancelled, EngineError
from engine.registry import ModelBundle
from engine.tasks.base import CancelFn, check_tta
from engine.tasks.esophagus import TASK
from engine.tasks.esophagus.predictor import EsophagusPredictor, describe_tta
from engine.utils.device import describe_device


def evaluate(dataset: str | Path, out_dir: str | Path, model: str | Path | ModelBundle | None = None,
             device: str = "auto", cases: Sequence[str] | None = None, overwrite: bool = False,
             progress: Callable[[int, int], None] | None = None, cancel: CancelFn | None = None,
             tta: str = "all") -> dict[str, Path]:
    """Run the model on every labelled case of ``dataset`` and write the paper's tables and plots."""
    from engine.evaluation import evaluate_case, summarize, write_report

    check_tta(tta)
    ds = RawDataset.load(dataset)
    predictor: EsophagusPredictor = TASK.load_predictor(model, device)
    selected = [c for c in ds.training if cases is None or c.case_id in set(cases)]
    if not selected:
        raise EngineError(f"No labelled cases to evaluate in {dataset}.")
    evaluations = []
    for i, case in enumerate(selected):
        if cancel is not None and cancel():
            raise Cancelled("evaluation cancelled; nothing was written")
        image = case.load_image()
        ref = case.load_label(reference=image)
        pred = predictor.predict(image, gradcam=False, cancel=cancel, tta=tta)
        evaluations.append(evaluate_case(case.case_id, pred.labels.array, ref.array, image.spacing,
                                         {k: v for k, v in predictor.plan.labels.items() if v != 0},
                                         stage_true=case.stage, stage_probabilities=pred.stage_probabilities,
                                         member_stage_probabilities=pred.member_stage_probabilities or None))
        if progress is not None:
            progress(i + 1, len(selected))
    bundle = predictor.bundle
    report = summarize(evaluations, predictor.stage_names if any(c.stage for c in selected) else None,
                       {"task": TASK.name, "model": f"{bundle.id} {bundle.version}", "dataset": str(dataset),
                        "stage classifiers": len(predictor.members),
                        "cases": len(selected), "device": describe_device(predictor.device),
                        "test-time augmentation": ", ".join(f"{k.replace('_', ' ')}: {v}"
                                                            for k, v in describe_tta(tta).items())})
    return write_report(report, out_dir, overwrite=overwrite)
