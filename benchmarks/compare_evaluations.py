"""Compare staging results of several models evaluated on the same cases (e.g. the ablation variants).

Reads the ``metrics.json`` that ``python -m engine evaluate`` wrote for each model and prints one
Markdown table: macro one-vs-rest AUC with its CI and accuracy as reported, and, against the first
model, the paired difference in macro AUC with a case-resampling bootstrap CI and McNemar's test on
per-case correctness. Pairing matters: with 40 cases the unpaired CIs overlap for almost any pair.

    python benchmarks/compare_evaluations.py full=EVAL_DIR no-transfer=EVAL_DIR2 ... [--bootstrap 2000]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from engine.metrics.classification import one_vs_rest_auc
from engine.metrics.statistics import mcnemar_test


def load_cases(folder: Path) -> tuple[list[str], dict[str, dict]]:
    metrics = json.loads((folder / "metrics.json").read_text())
    if not metrics.get("classification"):
        raise SystemExit(f"error: {folder} has no stage classification results")
    cases = {c["case_id"]: c for c in metrics["cases"]}
    return list(metrics["stage_names"]), cases | {"__summary__": metrics["classification"]}


def macro_auc(y: np.ndarray, probs: np.ndarray) -> float:
    """Unweighted mean of the defined one-vs-rest AUCs, as ``engine evaluate`` reports it."""
    _, macro, _ = one_vs_rest_auc(y, probs)
    return float(macro.auc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="NAME=EVAL_DIR", help="the first one is the reference")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of the cases")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    runs = []
    for item in args.runs:
        name, _, folder = item.partition("=")
        if not folder:
            p.error(f"'{item}' must be NAME=EVAL_DIR")
        runs.append((name, *load_cases(Path(folder))))
    names, ref_cases = runs[0][1], runs[0][2]
    ids = sorted(k for k in ref_cases if k != "__summary__")
    for name, stages, cases in runs[1:]:
        if stages != names or sorted(k for k in cases if k != "__summary__") != ids:
            raise SystemExit(f"error: '{name}' was not evaluated on the same cases and stages as '{runs[0][0]}'")

    y = np.array([names.index(ref_cases[i]["stage_true"]) for i in ids])
    probs = {name: np.array([[cases[i]["stage_probabilities"][s] for s in names] for i in ids])
             for name, _, cases in runs}
    correct = {name: probs[name].argmax(1) == y for name in probs}
    rng = np.random.default_rng(args.seed)
    samples = [rng.integers(0, len(ids), len(ids)) for _ in range(args.bootstrap)]
    ref = runs[0][0]

    print(f"| variant | macro AUC (95 % CI) | accuracy (95 % CI) | Δ macro AUC vs {ref} (95 % paired bootstrap CI) "
          f"| McNemar p vs {ref} |")
    print("|---|---|---|---|---|")
    for name, _, cases in runs:
        s = cases["__summary__"]
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
