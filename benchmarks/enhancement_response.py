"""Does an EsophagusStaging model delineate the tumour by its enhancement? Its tumour Dice and volume as
the tumour's contrast is scaled, everything else in the phantoms held fixed.

The esophagus phantom's tumour enhances 10–25 HU over the muscularis. For each scale *k* this writes
the same fresh phantoms (same seeds: same anatomy, tumour, texture and noise) with that enhancement
× *k* — 0 makes the tumour iso-dense, 2 doubles its contrast — and scores the model on the chosen
stages with ``benchmarks/tumour_errors.py`` (Dice, predicted / true voxels, the located-intensity
bound). A model that reads the enhancement gains Dice as the contrast grows and loses it at 0, where
the bound falls; one that segments the wall thickening by its shape scores about the same at every
scale. Small T1/T2 tumours are where this matters: a T3/T4 mass also shows against the fat.

    python benchmarks/enhancement_response.py --model MODEL --out DIR [--scales 0 1 2] [--stages T1 T2]
        [--seed 7000] [--cases 40] [--tta all] [--device cpu]

Writes ``DIR/phantoms_x<k>/`` (the datasets), ``DIR/x<k>/tumour_errors.{json,md}`` and the comparison
``DIR/enhancement_response.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing the engine
    sys.path.insert(0, str(REPO))

from benchmarks import tumour_errors  # noqa: E402

log = logging.getLogger("enhancement_response")


def markdown(scales: Sequence[float], summaries: dict[str, dict[str, dict[str, Any]]], sigma: str) -> str:
    """One row per stage: Dice, predicted / true voxels and the intensity bound at every scale."""
    keys = [f"{k:g}" for k in scales]
    head = ["stage (n)"] + [f"EC Dice ×{k}" for k in keys] + [f"predicted / true voxels ×{k}" for k in keys] \
        + [f"bound σ {sigma} mm ×{k}" for k in keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for stage, first in summaries[keys[0]].items():
        rows = [summaries[k][stage] for k in keys]
        cells = [f"{'**all**' if stage == 'all' else stage} ({first['n']})"]
        cells += [f"{r['dice']:.3f}" for r in rows]
        cells += [f"{r['pred_voxels']:,.0f} / {r['ref_voxels']:,.0f}" for r in rows]
        cells += [f"{r[f'bound_{sigma}']:.3f}" for r in rows]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="EsophagusStaging bundle folder/zip or installed id")
    p.add_argument("--out", required=True, help="new or empty folder for the phantoms and the tables")
    p.add_argument("--scales", type=float, nargs="+", default=[0.0, 1.0, 2.0],
                   help="multiples of the tumour's drawn enhancement (default 0 1 2)")
    p.add_argument("--stages", nargs="+", default=["T1", "T2"], choices=["T1", "T2", "T3", "T4"],
                   help="true stages to score (default T1 T2)")
    p.add_argument("--seed", type=int, default=7000, help="dataset seed of the phantoms (default 7000)")
    p.add_argument("--cases", type=int, default=40, help="phantoms generated per scale (default 40)")
    p.add_argument("--tta", choices=tumour_errors.TTA_MODES, default="all", help="as for engine run")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    p.add_argument("--sigma-mm", type=float, default=2.0, help="smoothing of the intensity bound (default 2)")
    args = p.parse_args(argv)
    if any(k < 0 for k in args.scales) or len(set(args.scales)) != len(args.scales):
        p.error("--scales must be distinct numbers ≥ 0")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        p.error(f"{out} is not empty; choose a new folder")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from engine.synth import generate_dataset

    out = Path(args.out)
    summaries: dict[str, dict[str, dict[str, Any]]] = {}
    chosen: list[str] | None = None
    sigma = f"{args.sigma_mm:g}"
    for k in args.scales:
        key = f"{k:g}"
        data = out / f"phantoms_x{key}"
        log.info("enhancement × %s: %d phantoms (seed %d) in %s", key, args.cases, args.seed, data)
        dataset = generate_dataset("esophagus", data, cases=args.cases, seed=args.seed,
                                   generator_options={"enhancement_scale": k})
        cases = [c.case_id for c in dataset.training if c.stage in args.stages]
        if chosen is None:
            chosen = cases
        elif cases != chosen:  # the scale must not change a phantom's anatomy or stage
            raise SystemExit(f"error: enhancement × {key} changed the phantoms' stages; the generator must "
                             "keep everything but the tumour's HU fixed")
        if not cases:
            raise SystemExit(f"error: none of the {args.cases} phantoms has stage {', '.join(args.stages)}; "
                             "generate more with --cases")
        listed = out / f"cases_x{key}.txt"
        listed.write_text("\n".join(cases) + "\n")
        scored = out / f"x{key}"
        tumour_errors.main([str(data), "--model", args.model, "--cases", str(listed), "--out", str(scored),
                            "--tta", args.tta, "--device", args.device, "--sigma-mm", str(args.sigma_mm)])
        summaries[key] = json.loads((scored / "tumour_errors.json").read_text(encoding="utf-8"))["summary"]
    settings = {"model": args.model, "scales": args.scales, "stages": args.stages, "seed": args.seed,
                "cases": args.cases, "tta": args.tta, "sigma_mm": args.sigma_mm}
    (out / "enhancement_response.json").write_text(json.dumps({"settings": settings, "by_scale": summaries},
                                                              indent=1))
    table = markdown(args.scales, summaries, sigma)
    (out / "enhancement_response.md").write_text(table)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
