"""Evaluating NPC models: the engine's report plus the paper's tables (DSC, ASD; AUC, ACC, SEN, SPE with
95 % CIs) and, against a second model on the same cases, DeLong (AUC), McNemar (accuracy) and
Wilcoxon (DSC) tests — what the paper uses to compare its ablations."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.data.dataset import RawDataset
from engine.errors import Cancelled, EngineError
from engine.evaluation.cases import CaseEvaluation
from engine.metrics.classification import clopper_pearson
from engine.metrics.common import format_number
from engine.metrics.statistics import delong_test, mcnemar_test, wilcoxon_test
from engine.registry import ModelBundle
from engine.tasks.base import CancelFn
from engine.tasks.npc import TASK, TUMOUR
from engine.tasks.npc.predictor import NpcPredictor
from engine.utils.atomic import atomic_write_text
from engine.utils.device import describe_device

COMPARISON_JSON, COMPARISON_MD, COMPARED_DIR = "comparison.json", "comparison.md", "compared_model"


def evaluate_cases(predictor: NpcPredictor, dataset: RawDataset, cases: Sequence[str] | None = None,
                   progress: Callable[[int, int], None] | None = None,
                   cancel: CancelFn | None = None) -> list[CaseEvaluation]:
    """Every labelled (selected) case of ``dataset`` segmented and staged by ``predictor`` and scored."""
    from engine.evaluation import evaluate_case

    if TUMOUR not in dataset.description.labels:
        raise EngineError(f"The dataset has no '{TUMOUR}' label to compare with (labels: "
                          f"{dataset.description.labels}).")
    value = dataset.description.labels[TUMOUR]
    selected = [c for c in dataset.training if cases is None or c.case_id in set(cases)]
    if not selected:
        raise EngineError(f"No labelled cases to evaluate in {dataset.root}.")
    out = []
    for i, case in enumerate(selected):
        if cancel is not None and cancel():
            raise Cancelled("evaluation cancelled; nothing was written")
        image = case.load_image()
        ref = (case.load_label(reference=image).array == value).astype(np.uint8)
        pred = predictor.predict(image, gradcam=False, cancel=cancel)
        out.append(evaluate_case(case.case_id, pred.labels.array, ref, image.spacing, {TUMOUR: 1},
                                 stage_true=case.stage, stage_probabilities=pred.stage_probabilities))
        if progress is not None:
            progress(i + 1, len(selected))
    return out


def paper_table(cases: Sequence[CaseEvaluation], stage_names: Sequence[str]) -> dict[str, Any]:
    """The paper's measures: DSC (median, IQR), ASD (mean), and per stage SEN/SPE with Clopper–Pearson CIs."""
    dsc = np.array([c.structures[TUMOUR].dice for c in cases], dtype=np.float64)
    asd = np.array([c.structures[TUMOUR].assd_mm for c in cases], dtype=np.float64)
    staged = [c for c in cases if c.stage_true in stage_names and c.stage_probabilities]
    per_stage = {}
    for stage in stage_names:
        truth = np.array([c.stage_true == stage for c in staged])
        said = np.array([c.stage_predicted == stage for c in staged])
        per_stage[stage] = {"sensitivity": _proportion(int((truth & said).sum()), int(truth.sum())),
                            "specificity": _proportion(int((~truth & ~said).sum()), int((~truth).sum()))}
    return {"dsc_median": float(np.median(dsc)), "dsc_iqr": [float(np.percentile(dsc, 25)),
                                                            float(np.percentile(dsc, 75))],
            "asd_mm_mean": float(np.nanmean(asd)) if np.isfinite(asd).any() else None,
            "per_stage": per_stage}


def _proportion(successes: int, n: int) -> dict[str, Any]:
    if n == 0:
        return {"value": None, "ci95": None, "n": 0}
    return {"value": successes / n, "ci95": list(clopper_pearson(successes, n)), "n": n}


def _fmt_proportion(p: dict[str, Any]) -> str:
    if p["value"] is None:
        return "n/a"
    return f"{p['value']:.3f} ({p['ci95'][0]:.3f}–{p['ci95'][1]:.3f}; n = {p['n']})"


def paper_table_markdown(table: dict[str, Any]) -> str:
    summary = (f"GTV DSC median {table['dsc_median']:.3f} (IQR {table['dsc_iqr'][0]:.3f}–{table['dsc_iqr'][1]:.3f}); "
               f"ASD mean {format_number(table['asd_mm_mean'], '.2f')} mm. AUC and accuracy with their 95 % CIs are "
               "in the stage classification section above.")
    lines = ["## The paper's measures", "", summary, "",
             "| stage | sensitivity (95 % CI) | specificity (95 % CI) |", "|---|---|---|"]
    lines += [f"| {s} | {_fmt_proportion(v['sensitivity'])} | {_fmt_proportion(v['specificity'])} |"
              for s, v in table["per_stage"].items()]
    return "\n".join(lines) + "\n"


@dataclass
class ModelComparison:
    """Two models on the same cases: paired tests of the first (A) against the second (B)."""

    model_a: str
    model_b: str
    n_cases: int
    dsc_wilcoxon: dict[str, Any]
    accuracy_mcnemar: dict[str, Any]
    auc_delong: dict[str, dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def compare_models(a: Sequence[CaseEvaluation], b: Sequence[CaseEvaluation], stage_names: Sequence[str],
                   names: tuple[str, str]) -> ModelComparison:
    """Wilcoxon on per-case DSC, McNemar on per-case correctness, DeLong per stage (one vs rest)."""
    by_id = {c.case_id: c for c in b}
    pairs = [(c, by_id[c.case_id]) for c in a if c.case_id in by_id]
    if not pairs:
        raise EngineError("The two models were evaluated on no common case.")
    dsc = wilcoxon_test([x.structures[TUMOUR].dice for x, _ in pairs], [y.structures[TUMOUR].dice for _, y in pairs])
    staged = [(x, y) for x, y in pairs if x.stage_true in stage_names]
    mcnemar = mcnemar_test([x.stage_predicted == x.stage_true for x, _ in staged],
                           [y.stage_predicted == y.stage_true for _, y in staged])
    delong = {}
    for stage in stage_names:
        truth = np.array([x.stage_true == stage for x, _ in staged])
        if truth.all() or not truth.any():
            continue  # an AUC needs cases of the stage and of the others
        delong[stage] = delong_test(truth, [x.stage_probabilities[stage] for x, _ in staged],
                                    [y.stage_probabilities[stage] for _, y in staged]).to_dict()
    return ModelComparison(names[0], names[1], len(pairs), dsc.to_dict(), mcnemar.to_dict(), delong)


def comparison_markdown(c: ModelComparison) -> str:
    w, m = c.dsc_wilcoxon, c.accuracy_mcnemar
    lines = [f"# {c.model_a} against {c.model_b} ({c.n_cases} common cases)", "",
             f"- DSC, Wilcoxon signed-rank: median difference {w['median_difference']:+.4f}, p = {w['p_value']:.4g}.",
             (f"- Accuracy, McNemar ({m['method']}): only A correct {m['b']}, only B correct {m['c']}, "
              f"p = {m['p_value']:.4g}."), "",
             "| stage (one vs rest) | AUC A | AUC B | difference | DeLong p |", "|---|---|---|---|---|"]
    lines += [f"| {s} | {d['auc_a']:.3f} | {d['auc_b']:.3f} | {d['auc_difference']:+.3f} | {d['p_value']:.4g} |"
              for s, d in c.auc_delong.items()]
    return "\n".join(lines) + "\n"


def evaluate(dataset: str | Path, out_dir: str | Path, model: str | Path | ModelBundle | NpcPredictor | None = None,
             device: str = "auto", cases: Sequence[str] | None = None, overwrite: bool = False,
             progress: Callable[[int, int], None] | None = None, cancel: CancelFn | None = None,
             compare_to: str | Path | ModelBundle | None = None) -> dict[str, Path]:
    """Run the model on every labelled case of ``dataset`` and write the report; with ``compare_to`` also
    evaluate that model on the same cases (its report in ``compared_model/``) and write the paired tests."""
    ds = RawDataset.load(dataset)
    predictor: NpcPredictor = TASK.load_predictor(model, device)
    other: NpcPredictor | None = TASK.load_predictor(compare_to, device) if compare_to is not None else None
    files, evaluations = _report(predictor, ds, dataset, out_dir, cases, overwrite, progress, cancel)
    if other is None:
        return files
    _, other_evaluations = _report(other, ds, dataset, Path(out_dir) / COMPARED_DIR, cases, overwrite, progress,
                                   cancel)
    comparison = compare_models(evaluations, other_evaluations, predictor.stage_names,
                                (_name(predictor), _name(other)))
    atomic_write_text(Path(out_dir) / COMPARISON_JSON, json.dumps(comparison.to_dict(), indent=2) + "\n")
    atomic_write_text(Path(out_dir) / COMPARISON_MD, comparison_markdown(comparison))
    return {**files, "comparison": Path(out_dir) / COMPARISON_MD}


def _name(predictor: NpcPredictor) -> str:
    """How reports name a model: id, version, variant and its folder (two copies of one id stay apart)."""
    b = predictor.bundle
    return f"{b.id} {b.version} ({b.architecture.get('variant')}, {b.path.name})"


def _report(predictor: NpcPredictor, ds: RawDataset, dataset: str | Path, out_dir: str | Path,
            cases: Sequence[str] | None, overwrite: bool, progress: Callable[[int, int], None] | None,
            cancel: CancelFn | None) -> tuple[dict[str, Path], list[CaseEvaluation]]:
    from engine.evaluation import summarize, write_report

    evaluations = evaluate_cases(predictor, ds, cases, progress, cancel)
    report = summarize(evaluations, predictor.stage_names, {
        "task": TASK.name, "model": _name(predictor), "dataset": str(dataset), "cases": len(evaluations),
        "device": describe_device(predictor.device)})
    files = write_report(report, out_dir, overwrite=overwrite)
    md = files["markdown"]
    table = paper_table(evaluations, predictor.stage_names)
    atomic_write_text(md, md.read_text(encoding="utf-8").rstrip("\n") + "\n\n" + paper_table_markdown(table))
    atomic_write_text(Path(out_dir) / "paper_table.json", json.dumps(table, indent=2) + "\n")
    return files, evaluations
