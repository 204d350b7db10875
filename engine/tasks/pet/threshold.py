"""The segmentation operating point of a PET outcome model, chosen on its validation cases.

The network is trained on crops, and a per-crop Dice loss gives almost no gradient against false
positives in crops without tumour, so on a whole volume the tumour probability stays high over other
hot structures. The tumour itself is near 1, so a higher threshold separates it. The threshold is
chosen where the mean whole-volume Dice of the kept tumour (largest component) on the held-out
validation cases is highest, and stored in the bundle's plan (``segmentation_threshold``).

    python -m engine.tasks.pet.threshold --model BUNDLE --data DATASET --cases ID [ID ...]

rewrites the bundle's plan with the chosen threshold (reseal it with ``python -m engine models seal``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from engine.data.dataset import Case, RawDataset
from engine.metrics.segmentation import dice
from engine.tasks.pet.predictor import PetPredictor, largest_component
from engine.tasks.pet.preprocessing import prepare

ProbabilityFn = Callable[[np.ndarray], np.ndarray]

log = logging.getLogger(__name__)

CANDIDATES = (0.5, 0.7, 0.9, 0.95, 0.99, 0.999)


def threshold_scores(probability_of: ProbabilityFn, cases: Sequence[Case],
                     candidates: Sequence[float] = CANDIDATES) -> dict[float, float]:
    """Mean whole-volume Dice (2 mm grid) of the largest component at each candidate threshold;
    ``probability_of`` maps an SUV volume on the 2 mm grid to the tumour probability."""
    scores: dict[float, list[float]] = {t: [] for t in candidates}
    for case in cases:
        image = case.load_image()
        prepared = prepare(image)
        reference = prepared.label_to_grid((case.load_label(reference=image).array > 0).astype(np.uint8)) > 0
        probability = probability_of(prepared.suv)
        for t in candidates:
            scores[t].append(dice(largest_component(probability >= t), reference))
    return {t: float(np.mean(v)) for t, v in scores.items()}


def choose_threshold(scores: dict[float, float]) -> float:
    """The candidate with the highest mean Dice (the lowest one on a tie)."""
    return max(sorted(scores), key=lambda t: scores[t])


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, type=Path, help="PET outcome bundle folder (rewritten)")
    p.add_argument("--data", required=True, type=Path, help="dataset holding the validation cases")
    p.add_argument("--cases", nargs="+", required=True, help="ids of the validation cases")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    from engine.registry import load_bundle, update_manifest

    by_id = {c.case_id: c for c in RawDataset.load(args.data).training}
    missing = [c for c in args.cases if c not in by_id]
    if missing:
        p.error(f"{len(missing)} case(s) not in {args.data}, e.g. {missing[0]}")
    predictor = PetPredictor(load_bundle(args.model), args.device)
    scores = threshold_scores(predictor.tumour_probability, [by_id[c] for c in args.cases])
    chosen = choose_threshold(scores)

    def record(manifest: dict) -> None:
        manifest["plan"]["segmentation_threshold"] = chosen
        manifest["metrics"]["network"]["val_whole_volume_dice"] = {f"{t:g}": round(s, 4) for t, s in scores.items()}

    update_manifest(args.model, record)  # the bundle stays sealed
    print(f"threshold {chosen:g}: " + ", ".join(f"{t:g} → Dice {s:.3f}" for t, s in scores.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
