"""Compare staging results of several models evaluated on the same cases (e.g. the ablation variants).

Reads the ``metrics.json`` that ``python -m engine evaluate`` wrote for each model and prints one
Markdown table: macro one-vs-rest AUC with its CI and accuracy as reported, and, against the first
model, the paired difference in macro AUC with a case-resampling bootstrap CI and McNemar's test on
per-case correctness. Pairing matters: with 40 cases the unpaired CIs overlap for almost any pair.
When the evaluations hold per-case segmentation scores, a second table gives each structure's mean Dice
and its paired difference to the first model (same bootstrap resamples), with the cases scoring higher
and lower.

    python benchmarks/compare_evaluations.py full=EVAL_DIR no-transfer=EVAL_DIR2 ... [--bootstrap 2000]

``NAME=EVAL_DIR#K`` takes member K (1-based) of an evaluated ensemble on its own: ``evaluate`` records
each member's probabilities on the same cases and segmentation, so a member need not be evaluated again.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.metrics.classification import one_vs_rest_auc
from engine.metrics.statistics import mcnemar_test


@dataclass
class Evaluation:
    """One model's ``engine evaluate`` output: per-case results by id and the staging summary."""

    name: str
    stages: list[str]
    cases: dict[str, dict]
    summary: dict


def load_evaluation(name: str, folder: Path, member: int | None = None) -> Evaluation:
    """``member`` (1-based) selects one classifier of an evaluated ensemble instead of the ensemble."""
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    if not metrics.get("classification"):
        raise SystemExit(f"error: {folder} has no stage classification results")
    cases = {c["case_id"]: c for c in metrics["cases"]}
    if member is None:
        return Evaluation(name, list(metrics["stage_names"]), cases, metrics["classification"])
    summaries = metrics.get("member_classification") or []
    if not 1 <= member <= len(summaries):
        raise SystemExit(f"error: {folder} holds {len(summaries)} ensemble member(s); member {member} "
                         "does not exist (members are numbered from 1)")
    cases = {i: {**c, "stage_probabilities": c["member_stage_probabilities"][member - 1]}
             for i, c in cases.items()}
    return Evaluation(name, list(metrics["stage_names"]), cases, summaries[member - 1])


def macro_auc(y: np.ndarray, probs: np.ndarray) -> float:
    """Unweighted mean of the defined one-vs-rest AUCs, as ``engine evaluate`` reports it."""
    _, macro, _ = one_vs_rest_auc(y, probs)
    return float(macro.auc)


def dice_by_structure(run: Evaluation, ids: list[str]) -> dict[str, np.ndarray] | None:
    """Per-case Dice of each structure (cases in ``ids`` order), or None without segmentation scores.
    A case whose Dice is undefined (both masks empty) is NaN and left out of means and differences."""
    if not all(run.cases[i].get("structures") for i in ids):
        return None
    names = list(run.cases[ids[0]]["structures"])
    return {n: np.array([np.nan if (d := run.cases[i]["structures"][n].get("dice")) is None else d
                         for i in ids], dtype=float) for n in names}


def print_dice_table(runs: list[Evaluation], ids: list[str], samples: list[np.ndarray]) -> None:
    """Mean Dice per structure and over structures; for every run after the first, the paired
    difference to the first with its bootstrap CI and how many cases score higher / lower."""
    dice = {run.name: dice_by_structure(run, ids) for run in runs}
    if any(d is None for d in dice.values()):
        return
    ref = runs[0].name
    structures = list(dice[ref])  # type: ignore[arg-type]
    for d in dice.values():
        per_case = np.stack([d[n] for n in structures])  # type: ignore[index]
        d["mean over structures"] = np.nanmean(per_case, axis=0)  # type: ignore[index]
    columns = structures + ["mean over structures"]
    print()
    print(f"| variant | {' | '.join(f'Dice {c}' for c in columns)} |")
    print("|---|" + "---|" * len(columns))
    for run in runs:
        cells = []
        for c in columns:
            x, r = dice[run.name][c], dice[ref][c]  # type: ignore[index]
            cell = f"{np.nanmean(x):.3f}"
            if run.name != ref:
                d = x - r
                lo, hi = np.nanpercentile([np.nanmean(d[b]) for b in samples], [2.5, 97.5])
                cell += (f" (Δ {np.nanmean(d):+.3f}, {lo:+.3f} to {hi:+.3f}; "
                         f"{int(np.sum(d > 0))} higher / {int(np.sum(d < 0))} lower)")
            cells.append(cell)
        print(f"| {run.name} | {' | '.join(cells)} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="NAME=EVAL_DIR[#K]",
                   help="the first one is the reference; #K: member K of an evaluated ensemble")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of the cases")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    runs = []
    for item in args.runs:
        name, _, target = item.partition("=")
        folder, _, member = target.partition("#")
        if not folder or (member and not member.isdigit()):
            p.error(f"'{item}' must be NAME=EVAL_DIR or NAME=EVAL_DIR#K")
        runs.append(load_evaluation(name, Path(folder), int(member) if member else None))
    first = runs[0]
    names, ids = first.stages, sorted(first.cases)
    for run in runs[1:]:
        if run.stages != names or sorted(run.cases) != ids:
            raise SystemExit(f"error: '{run.name}' was not evaluated on the same cases and stages as '{first.name}'")

    y = np.array([names.index(first.cases[i]["stage_true"]) for i in ids])
    probs = {run.name: np.array([[run.cases[i]["stage_probabilities"][s] for s in names] for i in ids])
             for run in runs}
    correct = {name: probs[name].argmax(1) == y for name in probs}
    rng = np.random.default_rng(args.seed)
    samples = [rng.integers(0, len(ids), len(ids)) for _ in range(args.bootstrap)]
    ref = first.name

    print(f"| variant | macro AUC (95 % CI) | accuracy (95 % CI) | Δ macro AUC vs {ref} (95 % paired bootstrap CI) "
          f"| McNemar p vs {ref} |")
    print("|---|---|---|---|---|")
    for run in runs:
        name, s = run.name, run.summary
        m = s["macro"]
        row = (f"| {name} | {m['auc']:.3f} ({m['auc_ci_low']:.3f}–{m['auc_ci_high']:.3f}) | {s['accuracy']:.3f} "
               f"({s['accuracy_ci_low']:.3f}–{s['accuracy_ci_high']:.3f}) | ")
        if name == ref:
            print(row + "— | — |")
            continue
        diff = macro_auc(y, probs[name]) - macro_auc(y, probs[ref])
        boot = [macro_auc(y[b], probs[name][b]) - macro_auc(y[b], probs[ref][b])
                for b in samples]
        lo, hi = np.nanpercentile(boot, [2.5, 97.5])
        p_value = mcnemar_test(correct[ref], correct[name]).p_value
        print(row + f"{diff:+.3f} ({lo:+.3f} to {hi:+.3f}) | {p_value:.3f} |")
    print_dice_table(runs, ids, samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
