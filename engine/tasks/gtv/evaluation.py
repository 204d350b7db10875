"""Evaluating a GTV model: per-scan DSC, Jaccard and HD95 (the paper's measures) and the slice
classifier's recall and specificity over all slices with exact 95 % confidence intervals.

The report is the engine's (``metrics.json``/``metrics.md`` by :func:`engine.evaluation.write_report`);
the slice classification goes into its metadata and a section appended to ``metrics.md``, since a
cascade's overall quality hinges on the classifier's recall (a missed abnormal slice is lost GTV).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.data.dataset import RawDataset
from engine.errors import Cancelled, EngineError
from engine.metrics.classification import clopper_pearson
from engine.registry import ModelBundle
from engine.tasks.base import CancelFn
from engine.tasks.gtv import TASK, TUMOUR
from engine.tasks.gtv.predictor import GtvPredictor
from engine.utils.atomic import atomic_write_text
from engine.utils.device import describe_device


def proportion(successes: int, n: int) -> dict[str, Any]:
    """A proportion with its Clopper–Pearson 95 % CI (None when n is 0)."""
    if n == 0:
        return {"value": None, "ci95": None, "n": 0}
    lo, hi = clopper_pearson(successes, n)
    return {"value": successes / n, "ci95": [lo, hi], "n": n}


def slice_classification(truth: np.ndarray, kept: np.ndarray) -> dict[str, Any]:
    """Recall (abnormal slices kept) and specificity (normal slices dropped) pooled over all scans."""
    truth, kept = truth.astype(bool), kept.astype(bool)
    return {"recall": proportion(int((kept & truth).sum()), int(truth.sum())),
            "specificity": proportion(int((~kept & ~truth).sum()), int((~truth).sum())),
            "slices": int(truth.size), "abnormal_slices": int(truth.sum())}


def _fmt(entry: dict[str, Any]) -> str:
    if entry["value"] is None:
        return "n/a"
    lo, hi = entry["ci95"]
    return f"{entry['value']:.3f} ({lo:.3f}–{hi:.3f})"


def classification_markdown(cls: dict[str, Any]) -> str:
    return "\n".join(["## Slice classifier", "",
                      "Pooled over every slice of every scan; 95 % Clopper–Pearson intervals.", "",
                      "| measure | value (95 % CI) | slices |", "|---|---|---|",
                      f"| recall (abnormal slices kept) | {_fmt(cls['recall'])} | {cls['recall']['n']} |",
                      (f"| specificity (normal slices dropped) | {_fmt(cls['specificity'])} | "
                       f"{cls['specificity']['n']} |"), ""])


def evaluate(dataset: str | Path, out_dir: str | Path, model: str | Path | ModelBundle | GtvPredictor | None = None,
             device: str = "auto", cases: Sequence[str] | None = None, overwrite: bool = False,
             progress: Callable[[int, int], None] | None = None, cancel: CancelFn | None = None) -> dict[str, Path]:
    """Run the model on every labelled case of ``dataset`` (or ``cases``) and write the report."""
    from engine.evaluation import evaluate_case, summarize, write_report

    ds = RawDataset.load(dataset)
    predictor: GtvPredictor = TASK.load_predictor(model, device)
    if TUMOUR not in ds.description.labels:
        raise EngineError(f"The dataset has no '{TUMOUR}' label to compare with (labels: {ds.description.labels}).")
    value = ds.description.labels[TUMOUR]
    selected = [c for c in ds.training if cases is None or c.case_id in set(cases)]
    if not selected:
        raise EngineError(f"No labelled cases to evaluate in {dataset}.")
    evaluations, truth, kept = [], [], []
    for i, case in enumerate(selected):
        if cancel is not None and cancel():
            raise Cancelled("evaluation cancelled; nothing was written")
        image = case.load_image()
        ref = (case.load_label(reference=image).array == value).astype(np.uint8)
        pred = predictor.predict(image, gradcam=False, cancel=cancel)
        evaluations.append(evaluate_case(case.case_id, pred.labels.array, ref, image.spacing, {TUMOUR: 1}))
        flags = np.zeros(len(pred.slice_probabilities), dtype=bool)
        flags[pred.slices_kept] = True
        truth.append(predictor.reference_slices(image, ref))
        kept.append(flags)
        if progress is not None:
            progress(i + 1, len(selected))
    cls = slice_classification(np.concatenate(truth), np.concatenate(kept))
    bundle = predictor.bundle
    report = summarize(evaluations, None, {
        "task": TASK.name, "model": f"{bundle.id} {bundle.version}", "variant": bundle.architecture.get("variant"),
        "dataset": str(dataset), "cases": len(selected), "device": describe_device(predictor.device),
        "slice threshold": predictor.plan.threshold, "slice_classification": cls})
    files = write_report(report, out_dir, overwrite=overwrite)
    md = files["markdown"]
    atomic_write_text(md, md.read_text(encoding="utf-8").rstrip("\n") + "\n\n" + classification_markdown(cls))
    atomic_write_text(Path(out_dir) / "slice_classification.json", json.dumps(cls, indent=2) + "\n")
    return files
