"""Evaluating a PET outcome model on a labelled dataset: outcome AUC with its DeLong 95 % CI, accuracy,
sensitivity and specificity (Clopper–Pearson CIs), pathology accuracy, tumour Dice, a calibration
table and plot, a ROC plot, and — with a second model — DeLong's test between the two outcome AUCs
on the same cases.

Writes ``metrics.json``, ``metrics.md``, ``cases.csv``, ``roc.png`` and ``calibration.png``, all or none.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.data.dataset import RawDataset
from engine.errors import Cancelled, EngineError
from engine.metrics.classification import clopper_pearson, delong_ci
from engine.metrics.segmentation import dice
from engine.metrics.statistics import delong_roc_variance, delong_test
from engine.pipelines import outputs
from engine.tasks.base import CancelFn
from engine.tasks.pet import TASK
from engine.tasks.pet.data import pathology_index
from engine.tasks.pet.options import OUTCOMES, PATHOLOGIES
from engine.tasks.pet.predictor import PetPredictor

CALIBRATION_BINS = 5
REPORT_FILES = ("metrics.json", "metrics.md", "cases.csv", "roc.png", "calibration.png")


@dataclass
class CaseResult:
    """One case's reference and prediction."""

    case_id: str
    outcome: int
    outcome_probability: float
    pathology: int
    pathology_predicted: int
    dice: float
    model_b_probability: float | None = None


def proportion(successes: int, n: int) -> dict[str, Any]:
    """A proportion with its Clopper–Pearson 95 % CI (None when n is 0)."""
    if n == 0:
        return {"value": None, "ci95": None, "n": 0}
    return {"value": successes / n, "ci95": list(clopper_pearson(successes, n)), "n": n}


def outcome_metrics(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """AUC (DeLong CI), accuracy, sensitivity (poor outcome found) and specificity at ``threshold``."""
    pred = p >= threshold
    out: dict[str, Any] = {"n": len(y), "n_poor": int(y.sum()), "threshold": threshold,
                           "accuracy": proportion(int((pred == y.astype(bool)).sum()), len(y)),
                           "sensitivity": proportion(int((pred & (y == 1)).sum()), int((y == 1).sum())),
                           "specificity": proportion(int((~pred & (y == 0)).sum()), int((y == 0).sum()))}
    if 0 < y.sum() < len(y):
        auc, var = delong_roc_variance(y, p)
        out["auc"] = {"value": auc, "ci95": list(delong_ci(auc, var))}
    else:
        out["auc"] = {"value": None, "ci95": None, "note": "both outcomes are needed for an AUC"}
    return out


def calibration(y: np.ndarray, p: np.ndarray, bins: int = CALIBRATION_BINS) -> list[dict[str, float]]:
    """Observed poor-outcome rate against the mean predicted probability in equal-width bins."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    return [{"bin": f"{edges[b]:.1f}-{edges[b + 1]:.1f}", "n": int((index == b).sum()),
             "mean_predicted": float(p[index == b].mean()), "observed": float(y[index == b].mean())}
            for b in range(bins) if (index == b).any()]


def render_plots(y: np.ndarray, p: np.ndarray, table: list[dict[str, float]], p_b: np.ndarray | None) -> dict[str, bytes]:
    """ROC and calibration plots as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    pngs: dict[str, bytes] = {}
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    if 0 < y.sum() < len(y):
        for scores, name in ((p, "model"), (p_b, "compared model")):
            if scores is not None:
                fpr, tpr, _ = roc_curve(y, scores)
                ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="Outcome ROC (poor outcome)")
    ax.legend(loc="lower right")
    pngs["roc.png"] = _png(fig)
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.plot([r["mean_predicted"] for r in table], [r["observed"] for r in table], "o-")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability of a poor outcome",
           ylabel="observed rate of poor outcome", title="Calibration")
    pngs["calibration.png"] = _png(fig)
    return pngs


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def run_cases(ds: RawDataset, predictor: PetPredictor, other: PetPredictor | None,
              progress: Callable[[int, int], None] | None, cancel: CancelFn | None) -> list[CaseResult]:
    cases = [c for c in ds.training if c.targets.outcome in (0, 1)]
    if not cases:
        raise EngineError(f"No case of {ds.root} has an outcome (stages.csv column 'outcome', 0 or 1) to compare with.")
    results = []
    for i, case in enumerate(cases):
        if cancel is not None and cancel():
            raise Cancelled("evaluation cancelled; nothing was written")
        image = case.load_image()
        pred = predictor.predict(image, gradcam=False, cancel=cancel)
        ref = case.load_label(reference=image).array > 0 if case.label_file is not None else None
        b = other.predict(image, gradcam=False, cancel=cancel) if other is not None else None
        results.append(CaseResult(
            case.case_id, int(case.targets.outcome), pred.outcome_probabilities[OUTCOMES[1]],
            pathology_index(case.targets.pathology),
            pathology_index(pred.predicted_pathology), dice(pred.labels.array > 0, ref) if ref is not None else float("nan"),
            b.outcome_probabilities[OUTCOMES[1]] if b is not None else None))
        if progress is not None:
            progress(i + 1, len(cases))
    return results


def summarize(results: list[CaseResult], header: dict[str, Any]) -> dict[str, Any]:
    y = np.array([r.outcome for r in results])
    p = np.array([r.outcome_probability for r in results])
    known = [r for r in results if r.pathology >= 0]
    dices = np.array([r.dice for r in results], dtype=np.float64)
    metrics: dict[str, Any] = {
        **header, "outcome": outcome_metrics(y, p), "calibration": calibration(y, p),
        "pathology_accuracy": proportion(sum(r.pathology == r.pathology_predicted for r in known), len(known)),
        "dice": {"mean": float(np.nanmean(dices)), "sd": float(np.nanstd(dices)), "median": float(np.nanmedian(dices))}
        if np.isfinite(dices).any() else None}
    if results and results[0].model_b_probability is not None and 0 < y.sum() < len(y):
        p_b = np.array([r.model_b_probability for r in results])
        metrics["comparison"] = {"outcome_b": outcome_metrics(y, p_b), "delong": asdict(delong_test(y, p, p_b))}
    return metrics


def evaluate(dataset: str | Path, out_dir: str | Path, model: Any = None, *, device: str = "auto",
             overwrite: bool = False, progress: Callable[[int, int], None] | None = None,
             cancel: CancelFn | None = None, compare: Any = None) -> dict[str, Path]:
    """Run the model (and ``compare``) on every case of ``dataset`` with an outcome; write the report."""
    out = outputs.check_output_dir(out_dir, overwrite, REPORT_FILES)
    ds = RawDataset.load(dataset)
    predictor: PetPredictor = TASK.load_predictor(model, device)
    other = TASK.load_predictor(compare, device) if compare is not None else None
    results = run_cases(ds, predictor, other, progress, cancel)
    bundle = predictor.bundle
    header = {"task": TASK.name, "model": f"{bundle.id} {bundle.version}", "variant": bundle.architecture.get("variant"),
              "compared_model": f"{other.bundle.id} {other.bundle.version}" if other is not None else None,
              "dataset": str(dataset), "cases": len(results), "pathologies": list(PATHOLOGIES)}
    metrics = summarize(results, header)
    y = np.array([r.outcome for r in results])
    p = np.array([r.outcome_probability for r in results])
    p_b = np.array([r.model_b_probability for r in results]) if other is not None else None
    pngs = render_plots(y, p, metrics["calibration"], p_b)
    writers: dict[str, Callable[[Path], Any]] = {
        "metrics.json": lambda path: path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8"),
        "metrics.md": lambda path: path.write_text(markdown(metrics), encoding="utf-8"),
        "cases.csv": lambda path: path.write_text(cases_csv(results), encoding="utf-8"),
        **{name: (lambda path, data=data: path.write_bytes(data)) for name, data in pngs.items()}}
    files = outputs.write_all(out, writers)
    return {Path(name).stem if name != "metrics.md" else "markdown": path for name, path in files.items()}


def cases_csv(results: list[CaseResult]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["case", "outcome", "outcome_probability", "pathology", "pathology_predicted", "dice",
                     "compared_outcome_probability"])
    for r in results:
        writer.writerow([r.case_id, r.outcome, f"{r.outcome_probability:.5f}",
                         PATHOLOGIES[r.pathology] if r.pathology >= 0 else "",
                         PATHOLOGIES[r.pathology_predicted] if r.pathology_predicted >= 0 else "",
                         f"{r.dice:.4f}", "" if r.model_b_probability is None else f"{r.model_b_probability:.5f}"])
    return buf.getvalue()


def _ci(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("value") is None:
        return "n/a"
    lo, hi = entry["ci95"]
    return f"{entry['value']:.3f} ({lo:.3f}–{hi:.3f})"


def markdown(m: dict[str, Any]) -> str:
    o = m["outcome"]
    lines = [f"# PET outcome evaluation: {m['model']}", "", (f"Dataset `{m['dataset']}`, {m['cases']} cases "
             f"({o['n_poor']} with a poor outcome)."), "", "| measure | value (95 % CI) |", "|---|---|",
             f"| outcome AUC (DeLong) | {_ci(o['auc'])} |", f"| outcome accuracy | {_ci(o['accuracy'])} |",
             f"| sensitivity (poor outcome) | {_ci(o['sensitivity'])} |", f"| specificity | {_ci(o['specificity'])} |",
             f"| pathology accuracy | {_ci(m['pathology_accuracy'])} |"]
    if m.get("dice"):
        d = m["dice"]
        lines.append(f"| tumour Dice, mean ± sd (median) | {d['mean']:.3f} ± {d['sd']:.3f} ({d['median']:.3f}) |")
    if "comparison" in m:
        c = m["comparison"]["delong"]
        lines += ["", f"## Against {m['compared_model']}", "",
                  (f"Outcome AUC {c['auc_a']:.3f} vs {c['auc_b']:.3f} (difference {c['auc_difference']:+.3f}, "
                  f"DeLong z = {c['z']:.2f}, p = {c['p_value']:.3g}).")]
    lines += ["", "## Calibration", "", "| predicted bin | cases | mean predicted | observed |", "|---|---|---|---|"]
    lines += [f"| {r['bin']} | {r['n']} | {r['mean_predicted']:.2f} | {r['observed']:.2f} |" for r in m["calibration"]]
    return "\n".join(lines) + "\n"
