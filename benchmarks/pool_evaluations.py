"""Pool several ``engine evaluate`` outputs of one model into one report, as if one test set.

One set of 40 phantoms gives a macro AUC with a CI ±0.07 wide and a stage mix that can flatter or
penalise a model (few T2 cases, many T3); pooling independent sets narrows the CI and evens the mix.
Reads each folder's ``metrics.json``, prefixes the case ids with the set's name (the sets reuse ids)
and writes ``metrics.json``, ``metrics.md``, ``roc.png`` and ``bland_altman.png`` for all cases
together — every table of ``engine evaluate``, the segmentation by reference stage included.

    python benchmarks/pool_evaluations.py seed2000=EVAL_DIR seed3000=EVAL_DIR2 ... --out DIR [--overwrite]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing the engine
    sys.path.insert(0, str(REPO))

from engine.errors import EngineError  # noqa: E402
from engine.evaluation import CaseEvaluation, read_cases, summarize, write_report  # noqa: E402


def pool(sets: list[tuple[str, Path]]) -> tuple[list[CaseEvaluation], list[str] | None]:
    """All cases of the named evaluation folders, ids as ``NAME/ID``; the sets must share stage names."""
    cases: list[CaseEvaluation] = []
    stage_names: list[str] | None = None
    for name, folder in sets:
        set_cases, names = read_cases(folder / "metrics.json")
        if cases and names != stage_names:
            raise EngineError(f"'{name}' ({folder}) has stages {names}, the first set {stage_names}; "
                              "pool only evaluations of one model's stages.")
        stage_names = names
        for c in set_cases:
            c.case_id = f"{name}/{c.case_id}"
        cases += set_cases
    return cases, stage_names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sets", nargs="+", metavar="NAME=EVAL_DIR", help="evaluate output folders to pool")
    p.add_argument("--out", required=True, type=Path, help="folder for the pooled report")
    p.add_argument("--overwrite", action="store_true", help="replace a report already in --out")
    args = p.parse_args(argv)
    sets = []
    for item in args.sets:
        name, _, folder = item.partition("=")
        if not name or not folder:
            p.error(f"'{item}' must be NAME=EVAL_DIR")
        sets.append((name, Path(folder)))
    if len({name for name, _ in sets}) != len(sets):
        p.error("every set needs its own NAME (they prefix the case ids)")
    try:
        cases, stage_names = pool(sets)
        report = summarize(cases, stage_names, {"pooled": ", ".join(f"{n} ({f})" for n, f in sets)})
        paths = write_report(report, args.out, overwrite=args.overwrite)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cls = report.classification
    summary = f"{report.n_cases} cases"
    if cls is not None:
        m = cls.macro
        summary += (f", macro AUC {m.auc:.3f} ({m.auc_ci_low:.3f}–{m.auc_ci_high:.3f}), "
                    f"accuracy {cls.accuracy:.3f}")
    print(f"{summary}; written: {', '.join(str(p) for p in paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
