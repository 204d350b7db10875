"""A radiomics baseline for the PET outcome: IBSI features of the labelled tumour + logistic regression,
side by side with the multi-task network on the same phantoms.

Features are computed on the reference tumour label (the contour a physician would draw), on the SUV
volume as it is. With the optional ``mirp`` package (``pip install 'oncostaging-engine[radiomics]'``) they
are MIRP's IBSI-compliant morphology, statistics, intensity-histogram, GLCM and GLSZM features (fixed
bin width 0.5 SUV); without it, or with ``--features numpy``, a small IBSI first-order and shape set
computed here with NumPy (:func:`numpy_features`). A standardised L2-regularised logistic regression
(scikit-learn) predicts the poor outcome: 5-fold stratified cross-validation on the training phantoms
(out-of-fold AUC), then a fit on all of them scored on the test phantoms. With the network's
``evaluate`` cases (``--network-cases cases.csv``) the two outcome AUCs on the test phantoms are
compared with DeLong's test.

    python benchmarks/pet_radiomics.py --train TRAIN_DATASET --test TEST_DATASET --out DIR
        [--max-train 120] [--features mirp|numpy] [--network-cases EVAL_DIR/cases.csv] [--reuse-features]

Writes ``DIR/features_{train,test}.csv``, ``DIR/pet_radiomics.json`` and ``DIR/pet_radiomics.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing the engine
    sys.path.insert(0, str(REPO))

from engine.data.dataset import Case, RawDataset
from engine.metrics.classification import delong_ci
from engine.metrics.statistics import delong_roc_variance, delong_test

log = logging.getLogger("pet_radiomics")
MIRP_FAMILIES = ["morphology", "statistics", "intensity_histogram", "glcm", "glszm"]
BIN_WIDTH_SUV = 0.5
FOLDS = 5


def have_mirp() -> bool:
    try:
        import mirp  # noqa: F401
    except ImportError:
        return False
    return True


def numpy_features(suv: np.ndarray, mask: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """IBSI first-order statistics and voxel-based shape features of one tumour (IBSI 1, sections 3.1-3.4)."""
    x = suv[mask].astype(np.float64)
    mean, sd = float(x.mean()), float(x.std())
    centred = x - mean
    volume = float(mask.sum()) * float(np.prod(spacing))
    faces = sum(float(np.count_nonzero(np.diff(np.pad(mask, 1), axis=a))) * float(np.prod(spacing)) / spacing[a]
                for a in range(3))  # area of the voxel faces between tumour and background
    counts, _ = np.histogram(x, bins=np.arange(x.min(), x.max() + BIN_WIDTH_SUV, BIN_WIDTH_SUV))
    p = counts[counts > 0] / counts.sum()
    return {"stat_mean": mean, "stat_sd": sd, "stat_cov": sd / mean if mean else 0.0,
            "stat_skew": float((centred ** 3).mean() / sd ** 3) if sd else 0.0,
            "stat_kurt": float((centred ** 4).mean() / sd ** 4 - 3.0) if sd else 0.0,
            "stat_max": float(x.max()), "stat_min": float(x.min()), "stat_p10": float(np.percentile(x, 10)),
            "stat_p90": float(np.percentile(x, 90)), "stat_median": float(np.median(x)),
            "stat_energy": float((x ** 2).sum()), "ih_entropy": float(-(p * np.log2(p)).sum()),
            "morph_log_volume": math.log(volume), "morph_area": faces,
            "morph_sphericity": (36.0 * math.pi * volume ** 2) ** (1.0 / 3.0) / faces}


def mirp_features(suv: np.ndarray, mask: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """MIRP's IBSI features of one tumour, on the tumour's bounding box (plus a margin) for speed."""
    from mirp import extract_features

    idx = np.argwhere(mask)
    lo, hi = np.maximum(idx.min(0) - 3, 0), idx.max(0) + 4
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = extract_features(image=suv[box], mask=mask[box].astype(np.uint8), image_modality="pet",
                                 image_voxel_spacing=tuple(float(s) for s in spacing),
                                 base_feature_families=MIRP_FAMILIES, base_discretisation_method="fixed_bin_size",
                                 base_discretisation_bin_width=BIN_WIDTH_SUV, ibsi_compliant=True)[0]
    row = table.iloc[0]
    return {str(k): float(row[k]) for k in table.columns
            if k.split("_")[0] in ("morph", "stat", "ih", "cm", "szm") and np.isfinite(float(row[k]))}


def case_features(case: Case, kind: str) -> dict[str, float]:
    image = case.load_image()
    mask = case.load_label(reference=image).array > 0
    compute = mirp_features if kind == "mirp" else numpy_features
    return compute(image.array, mask, image.spacing)


def feature_table(cases: Sequence[Case], kind: str,
                  names: Sequence[str] | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Feature names (``names``, else those every case has), the feature matrix and the outcomes."""
    rows, ids, outcomes = [], [], []
    for i, case in enumerate(cases):
        rows.append(case_features(case, kind))
        ids.append(case.case_id)
        outcomes.append(int(case.targets.outcome))
        if (i + 1) % 20 == 0:
            log.info("features of %d / %d cases", i + 1, len(cases))
    names = list(names) if names is not None else sorted(set.intersection(*(set(r) for r in rows)))
    matrix = np.array([[r.get(n, np.nan) for n in names] for r in rows], dtype=np.float64)
    missing = ~np.isfinite(matrix)
    if missing.any():  # a feature a case lacks (e.g. undefined for a tiny tumour): the others' mean
        column_means = np.nanmean(np.where(missing, np.nan, matrix), axis=0)
        matrix[missing] = np.take(np.nan_to_num(column_means), np.nonzero(missing)[1])
    return names, matrix, np.array(outcomes)


def classifier() -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))


def auc_with_ci(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    auc, var = delong_roc_variance(y, p)
    return {"auc": auc, "ci95": list(delong_ci(auc, var)), "n": len(y), "n_poor": int(y.sum())}


def cross_validated(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Out-of-fold probabilities of a poor outcome (stratified folds)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    folds = StratifiedKFold(min(FOLDS, int(min(y.sum(), len(y) - y.sum()))), shuffle=True, random_state=seed)
    return cross_val_predict(classifier(), x, y, cv=folds, method="predict_proba")[:, 1]


def network_probabilities(path: Path, ids: Sequence[str]) -> np.ndarray:
    """The network's outcome probabilities (``engine evaluate`` cases.csv) in the order of ``ids``."""
    with open(path, newline="", encoding="utf-8") as f:
        by_id = {r["case"]: float(r["outcome_probability"]) for r in csv.DictReader(f)}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise SystemExit(f"{path} has no prediction for {len(missing)} test case(s), e.g. {missing[0]}; evaluate the "
                         "network on the same test dataset.")
    return np.array([by_id[i] for i in ids])


def read_features(path: Path) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """Case ids, feature names, matrix and outcomes of a features CSV this script wrote."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    names = rows[0][2:]
    return ([r[0] for r in rows[1:]], names, np.array([[float(v) for v in r[2:]] for r in rows[1:]]),
            np.array([int(r[1]) for r in rows[1:]]))


def write_features(path: Path, ids: Sequence[str], names: Sequence[str], x: np.ndarray, y: np.ndarray) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["case", "outcome", *names])
        writer.writerows([[i, int(o), *(f"{v:.6g}" for v in row)] for i, o, row in zip(ids, y, x)])


def markdown(result: dict[str, Any]) -> str:
    def cell(entry: dict[str, Any]) -> str:
        return f"{entry['auc']:.3f} ({entry['ci95'][0]:.3f}–{entry['ci95'][1]:.3f})"

    lines = ["| method | features | outcome AUC (95 % CI) |", "|---|---|---|",
             (f"| radiomics + logistic regression, {FOLDS}-fold CV on the training phantoms "
             f"(n = {result['cross_validation']['n']}) | {result['n_features']} {result['features']} | "
             f"{cell(result['cross_validation'])} |"),
             (f"| radiomics + logistic regression, test phantoms (n = {result['test']['n']}) | "
             f"{result['n_features']} {result['features']} | {cell(result['test'])} |")]
    if "network" in result:
        net, d = result["network"], result["delong"]
        lines.append(f"| multi-task network, test phantoms (n = {net['n']}) | learned | {cell(net)} |")
        lines += ["", (f"Network − radiomics on the test phantoms: {d['auc_difference']:+.3f} "
                      f"(DeLong z = {d['z']:.2f}, p = {d['p_value']:.3g}).")]
    return "\n".join(lines) + "\n"


def features(train: Path, test: Path, out: Path, kind: str, max_train: int | None,
             reuse: bool) -> tuple[list[str], np.ndarray, np.ndarray, list[str], np.ndarray, np.ndarray]:
    """Feature names, training matrix and outcomes, test ids, matrix and outcomes (computed, or read back)."""
    if reuse and (out / "features_train.csv").is_file() and (out / "features_test.csv").is_file():
        _, names, x_train, y_train = read_features(out / "features_train.csv")
        test_ids, _, x_test, y_test = read_features(out / "features_test.csv")
        return names, x_train, y_train, test_ids, x_test, y_test
    train_cases = [c for c in RawDataset.load(train).training if c.targets.outcome in (0, 1)][:max_train]
    test_cases = [c for c in RawDataset.load(test).training if c.targets.outcome in (0, 1)]
    names, x_train, y_train = feature_table(train_cases, kind)
    _, x_test, y_test = feature_table(test_cases, kind, names)
    out.mkdir(parents=True, exist_ok=True)
    write_features(out / "features_train.csv", [c.case_id for c in train_cases], names, x_train, y_train)
    test_ids = [c.case_id for c in test_cases]
    write_features(out / "features_test.csv", test_ids, names, x_test, y_test)
    return names, x_train, y_train, test_ids, x_test, y_test


def run(train: Path, test: Path, out: Path, kind: str, max_train: int | None, seed: int,
        network_cases: Path | None, reuse: bool = False) -> dict[str, Any]:
    names, x_train, y_train, test_ids, x_test, y_test = features(train, test, out, kind, max_train, reuse)
    model = classifier().fit(x_train, y_train)
    p_test = model.predict_proba(x_test)[:, 1]
    result: dict[str, Any] = {"features": "MIRP IBSI" if kind == "mirp" else "NumPy IBSI first-order + shape",
                              "n_features": len(names), "train_dataset": str(train), "test_dataset": str(test),
                              "cross_validation": auc_with_ci(y_train, cross_validated(x_train, y_train, seed)),
                              "test": auc_with_ci(y_test, p_test)}
    if network_cases is not None:
        p_net = network_probabilities(network_cases, test_ids)
        result["network"] = auc_with_ci(y_test, p_net)
        result["delong"] = {k: v for k, v in vars(delong_test(y_test, p_net, p_test)).items()}
    (out / "pet_radiomics.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / "pet_radiomics.md").write_text(markdown(result), encoding="utf-8")
    return result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", required=True, type=Path, help="PET dataset the logistic regression learns from")
    p.add_argument("--test", required=True, type=Path, help="PET dataset it is scored on (the network's test set)")
    p.add_argument("--out", required=True, type=Path, help="folder for the features and the tables")
    p.add_argument("--features", choices=("mirp", "numpy"), default="mirp" if have_mirp() else "numpy",
                   help="MIRP's IBSI features (default when mirp is installed) or the NumPy first-order + shape set")
    p.add_argument("--max-train", type=int, help="use only the first N training cases (feature extraction is slow)")
    p.add_argument("--network-cases", type=Path, help="cases.csv of 'engine evaluate --task pet' on the test set")
    p.add_argument("--reuse-features", action="store_true",
                   help="read the features an earlier run wrote into --out instead of computing them again")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.features == "mirp" and not have_mirp():
        p.error("mirp is not installed: pip install 'oncostaging-engine[radiomics]', or use --features numpy")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    result = run(args.train, args.test, args.out, args.features, args.max_train, args.seed, args.network_cases,
                 args.reuse_features)
    print(markdown(result), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
