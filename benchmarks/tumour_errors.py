"""Where an EsophagusStaging model loses tumour (EC) Dice, by true T-stage, and how much the image says.

For every labelled case of a dataset (optionally a listed subset) it scores the model's tumour
segmentation against the reference and splits the error:

- Dice, Dice with every false positive removed, Dice with every false negative recovered;
- the share of wrong voxels on the reference tumour's surface or one face-neighbour step from it (a
  boundary disagreement) as opposed to whole regions;
- false positives by the reference label they cover (e.g. esophageal wall), as multiples of the
  reference tumour's volume.

It also measures a **located-intensity bound**, independent of any model. Inside the region R where a
model's confusion lies — the reference tumour dilated ``--region-voxels`` times by the 3×3×3 cube, within
the esophagus labels (tumour, wall and lumen) — the soft-tissue HU, Gaussian-smoothed within soft tissue
at each ``--sigma-mm`` (so lumen air does not bleed in), is cut at the threshold best for that case. It
says how well the tumour's extent can be read from intensity alone once its location is known. It is
not a strict ceiling (a model also has shape and context, and no location given), but where a model is
well below it the image holds information the model does not use yet, and where it is low intensity
cannot make up the difference.

    python benchmarks/tumour_errors.py DATASET --model MODEL --out DIR [--cases FILE] [--tta all]
    python benchmarks/tumour_errors.py DATASET --out DIR --no-model        # the bound alone (fast)

Writes ``DIR/tumour_errors.json`` (per case and per stage) and ``DIR/tumour_errors.md`` (the tables).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing the engine
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402

from engine.tasks.base import TTA_MODES  # noqa: E402

log = logging.getLogger("tumour_errors")

TUMOUR, ESOPHAGUS = "EC", "esophagus"
#: HU below which a voxel is not soft tissue (lumen air, lung) and is left out of the bound's smoothing.
SOFT_TISSUE_MIN_HU = -300.0


def dice_from_counts(tp: int, fp: int, fn: int) -> float:
    """Dice from counts; an empty prediction of an empty reference counts as perfect."""
    return 1.0 if tp + fp + fn == 0 else 2.0 * tp / (2.0 * tp + fp + fn)


def tumour_error_scores(pred: np.ndarray, ref: np.ndarray, labels: dict[str, int]) -> dict[str, Any]:
    """The split of one case's tumour error (label maps on one grid, ``labels`` name → value)."""
    t = labels[TUMOUR]
    ref_t, pred_t = ref == t, pred == t
    tp = int(np.sum(ref_t & pred_t))
    fp_mask, fn_mask = pred_t & ~ref_t, ref_t & ~pred_t
    fp, fn = int(fp_mask.sum()), int(fn_mask.sum())
    n_ref = max(int(ref_t.sum()), 1)
    surface = ref_t ^ ndi.binary_erosion(ref_t)
    near_surface = ndi.binary_dilation(surface)  # one face-neighbour step from the surface
    wrong = fp_mask | fn_mask
    return {
        "dice": dice_from_counts(tp, fp, fn),
        "dice_without_fp": dice_from_counts(tp, 0, fn),
        "dice_without_fn": dice_from_counts(tp + fn, fp, 0),
        "errors_near_surface": float((wrong & near_surface).sum() / wrong.sum()) if wrong.any() else 0.0,
        "pred_voxels": int(pred_t.sum()), "ref_voxels": int(ref_t.sum()),
        # false positives by the reference label under them, false negatives by the predicted label
        "fp_by_reference": {n: float((fp_mask & (ref == v)).sum() / n_ref)
                            for n, v in labels.items() if v != t},
        "fn_by_prediction": {n: float((fn_mask & (pred == v)).sum() / n_ref)
                             for n, v in labels.items() if v != t},
    }


def best_threshold_dice(values: np.ndarray, truth: np.ndarray, n_ref: int) -> float:
    """The best Dice of ``values > t`` over every threshold t, against ``n_ref`` reference voxels of which
    ``truth`` marks those among ``values`` (ties are cut as a threshold would: all or none)."""
    if n_ref == 0 or values.size == 0:
        return 0.0
    order = np.argsort(-values, kind="stable")
    v, hits = values[order], truth[order]
    tp = np.cumsum(hits)
    k = np.arange(1, v.size + 1)
    cut = np.r_[v[1:] < v[:-1], True]  # a threshold can only fall between distinct values
    return float(np.max(2.0 * tp[cut] / (k[cut] + n_ref)))


def located_intensity_bound(image: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                            labels: dict[str, int], sigmas_mm: Sequence[float],
                            region_voxels: int = 2) -> dict[str, float]:
    """Per smoothing σ (mm), the best per-case threshold Dice of the soft-tissue HU inside the located
    region R (see the module docstring). ``image`` in HU on the label grid, ``spacing`` per array axis."""
    ref_t = ref == labels[TUMOUR]
    n_ref = int(ref_t.sum())
    esophagus = np.isin(ref, [labels[TUMOUR], labels[ESOPHAGUS]])
    region = ndi.binary_dilation(ref_t, np.ones((3, 3, 3), bool), iterations=region_voxels) & esophagus
    soft = esophagus & (image > SOFT_TISSUE_MIN_HU)
    inside = region & soft
    out = {}
    for sigma in sigmas_mm:
        if sigma > 0:
            sig = [sigma / s for s in spacing]
            weight = ndi.gaussian_filter(soft.astype(np.float64), sig)
            tissue = ndi.gaussian_filter(np.where(soft, image, 0.0).astype(np.float64), sig)
            smooth = tissue / np.maximum(weight, 1e-6)
        else:
            smooth = image
        out[f"{sigma:g}"] = best_threshold_dice(smooth[inside], ref_t[inside], n_ref)
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Means per true stage and over all cases (case-weighted, as Dice is reported elsewhere)."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[r["stage"] or "?"].append(r)
    groups["all"] = list(rows)
    summary = {}
    for stage, rs in sorted(groups.items()):
        s: dict[str, Any] = {"n": len(rs)}
        if "scores" in rs[0]:
            sc = [r["scores"] for r in rs]
            for key in ("dice", "dice_without_fp", "dice_without_fn", "errors_near_surface", "pred_voxels",
                        "ref_voxels"):
                s[key] = float(np.mean([c[key] for c in sc]))
            s["fp_wall_per_ref"] = float(np.mean([c["fp_by_reference"].get(ESOPHAGUS, 0.0) for c in sc]))
        for sigma in rs[0]["intensity_bound"]:
            s[f"bound_{sigma}"] = float(np.mean([r["intensity_bound"][sigma] for r in rs]))
        summary[stage] = s
    return summary


def markdown(summary: dict[str, dict[str, Any]], sigmas: Sequence[str]) -> str:
    with_model = "dice" in summary["all"]
    head = ["stage (n)"]
    if with_model:
        head += ["EC Dice", "without FP", "without FN", "errors ≤ 1 voxel from the surface",
                 "predicted / true voxels", "FP in the wall (× true volume)"]
    head += [f"intensity bound, σ {s} mm" for s in sigmas]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for stage, s in summary.items():
        cells = [f"{'**all**' if stage == 'all' else stage} ({s['n']})"]
        if with_model:
            cells += [f"{s['dice']:.3f}", f"{s['dice_without_fp']:.3f}", f"{s['dice_without_fn']:.3f}",
                      f"{s['errors_near_surface']:.2f}", f"{s['pred_voxels']:,.0f} / {s['ref_voxels']:,.0f}",
                      f"{s['fp_wall_per_ref']:.2f}"]
        cells += [f"{s[f'bound_{x}']:.3f}" for x in sigmas]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="labelled dataset (nnU-Net raw layout with stages.csv)")
    p.add_argument("--out", required=True, help="folder for tumour_errors.json and tumour_errors.md")
    p.add_argument("--model", help="EsophagusStaging bundle folder/zip or installed id")
    p.add_argument("--no-model", action="store_true", help="only the located-intensity bound, no predictions")
    p.add_argument("--cases", help="text file of case ids to use (whitespace-separated; default: all)")
    p.add_argument("--tta", choices=TTA_MODES, default="all", help="as for engine run")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    p.add_argument("--sigma-mm", type=float, nargs="+", default=[0.0, 2.0, 4.0],
                   help="smoothing widths of the intensity bound (0: raw voxels)")
    p.add_argument("--region-voxels", type=int, default=2,
                   help="how far around the reference tumour the bound may place the tumour")
    args = p.parse_args(argv)
    if args.no_model == bool(args.model):
        p.error("give --model MODEL, or --no-model for the intensity bound alone")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from engine.data.dataset import RawDataset
    from engine.errors import EngineError
    from engine.tasks import get_task

    dataset = RawDataset.load(args.data)
    labels = {n: int(v) for n, v in dataset.description.labels.items()}
    missing_labels = {TUMOUR, ESOPHAGUS} - set(labels)
    if missing_labels:
        raise SystemExit(f"error: {args.data} has no label(s) {sorted(missing_labels)}; this analysis is for "
                         "EsophagusStaging datasets (labels EC and esophagus)")
    cases = [c for c in dataset.training if c.label_file is not None]
    if args.cases:
        wanted = Path(args.cases).read_text(encoding="utf-8").split()
        unknown = sorted(set(wanted) - {c.case_id for c in cases})
        if unknown:
            raise SystemExit(f"error: {args.cases} lists case(s) with no labelled case in {args.data}: "
                             f"{', '.join(unknown[:5])}")
        keep = set(wanted)
        cases = [c for c in cases if c.case_id in keep]
    if not cases:
        raise SystemExit(f"error: no labelled case to analyse in {args.data}")
    predictor = (None if args.no_model
                 else get_task("esophagus").load_predictor(args.model, args.device))
    rows = []
    for i, case in enumerate(cases):
        start = time.time()
        image = case.load_image()
        try:  # the bound and the scores compare voxel by voxel: the label must lie on the image's grid
            ref = case.load_label(reference=image).array
        except EngineError as e:
            raise SystemExit(f"error: {e} Resample the labels onto their image first.") from None
        row: dict[str, Any] = {"case_id": case.case_id, "stage": case.stage}
        if predictor is not None:
            pred = predictor.predict(image, gradcam=False, tta=args.tta).labels.array.astype(np.uint8)
            row["scores"] = tumour_error_scores(pred, ref, labels)
        row["intensity_bound"] = located_intensity_bound(image.array, ref, image.spacing, labels,
                                                         args.sigma_mm, args.region_voxels)
        rows.append(row)
        dice = f"Dice {row['scores']['dice']:.3f}, " if "scores" in row else ""
        log.info("[%d/%d] %s %s: %sbound %s (%.1f s)", i + 1, len(cases), case.case_id, case.stage, dice,
                 {k: round(v, 3) for k, v in row["intensity_bound"].items()}, time.time() - start)
    summary = summarise(rows)
    sigmas = [f"{s:g}" for s in args.sigma_mm]
    settings = {"data": str(args.data), "model": args.model, "tta": None if args.no_model else args.tta,
                "sigma_mm": args.sigma_mm, "region_voxels": args.region_voxels}
    result = {"settings": settings, "summary": summary, "cases": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tumour_errors.json").write_text(json.dumps(result, indent=1))
    table = markdown(summary, sigmas)
    (out / "tumour_errors.md").write_text(table)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
